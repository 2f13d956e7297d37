use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::{
        ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota,
        Service, ServiceAccount,
    },
    networking::v1::NetworkPolicy,
    rbac::v1::{Role, RoleBinding},
};
use kube::api::ObjectMeta;

/// One Kubernetes object a tenant implies, typed so the controller applies
/// it through the right API and the plan prints it exactly.
#[derive(Clone, Debug)]
#[allow(missing_docs, clippy::large_enum_variant)]
pub enum KubeObject {
    Namespace(Namespace),
    ResourceQuota(ResourceQuota),
    LimitRange(LimitRange),
    NetworkPolicy(NetworkPolicy),
    Role(Role),
    RoleBinding(RoleBinding),
    ServiceAccount(ServiceAccount),
    PersistentVolume(PersistentVolume),
    PersistentVolumeClaim(PersistentVolumeClaim),
    Job(Job),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
    ConfigMap(ConfigMap),
}

macro_rules! each_kind {
    ($self:ident, $o:ident => $e:expr) => {
        match $self {
            KubeObject::Namespace($o) => $e,
            KubeObject::ResourceQuota($o) => $e,
            KubeObject::LimitRange($o) => $e,
            KubeObject::NetworkPolicy($o) => $e,
            KubeObject::Role($o) => $e,
            KubeObject::RoleBinding($o) => $e,
            KubeObject::ServiceAccount($o) => $e,
            KubeObject::PersistentVolume($o) => $e,
            KubeObject::PersistentVolumeClaim($o) => $e,
            KubeObject::Job($o) => $e,
            KubeObject::Service($o) => $e,
            KubeObject::StatefulSet($o) => $e,
            KubeObject::Deployment($o) => $e,
            KubeObject::ConfigMap($o) => $e,
        }
    };
}

impl KubeObject {
    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        each_kind!(self, o => &o.metadata)
    }

    /// The object's kind, e.g. StatefulSet.
    pub fn kind(&self) -> &'static str {
        fn kind_of<K: k8s_openapi::Resource>(_: &K) -> &'static str {
            K::KIND
        }
        each_kind!(self, o => kind_of(o))
    }

    /// The object's API group (`""` for the core group) and resource
    /// (plural), as RBAC rules name them.
    pub fn api_resource(&self) -> (&'static str, &'static str) {
        fn resource_of<K: k8s_openapi::Resource>(_: &K) -> (&'static str, &'static str) {
            (K::GROUP, K::URL_PATH_SEGMENT)
        }
        each_kind!(self, o => resource_of(o))
    }

    /// `namespace/name`, or `name` for cluster-scoped objects.
    pub fn display_name(&self) -> String {
        let meta = self.metadata();
        let name = meta.name.as_deref().unwrap_or_default();
        match &meta.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_owned(),
        }
    }

    /// The object as JSON, with `apiVersion` and `kind`.
    pub fn to_json(&self) -> serde_json::Value {
        each_kind!(self, o => serde_json::to_value(o).unwrap_or(serde_json::Value::Null))
    }
}
