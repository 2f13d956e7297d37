//! Server-side apply of the builders' objects, under one field manager.
//! An object whose live state already holds every desired field is not
//! written at all, so a resync of unchanged tenants makes no writes.

use std::fmt::Debug;

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::builders::KubeObject;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "enclave";

/// Whether `live` holds everything `desired` says (fields the server or
/// other managers added are ignored).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired
            .iter()
            .all(|(k, v)| v.is_null() || live.get(k).is_some_and(|l| contains(l, v))),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len() && live.iter().zip(desired).all(|(l, d)| contains(l, d))
        }
        (live, desired) => live == desired,
    }
}

async fn apply<K>(api: Api<K>, object: &K) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = object.name_any();
    let desired = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    if let Some(live) = api.get_opt(&name).await? {
        let live = serde_json::to_value(&live).map_err(kube::Error::SerdeError)?;
        if contains(&live, &desired) {
            return Ok(false);
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(object)).await?;
    Ok(true)
}

fn cluster<K>(client: &Client) -> Api<K>
where
    K: Resource<Scope = ClusterResourceScope, DynamicType = ()>,
{
    Api::all(client.clone())
}

fn namespaced<K>(client: &Client, object: &K) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    Api::namespaced(client.clone(), &namespace)
}

/// Applies `object`, forcing ownership of the fields Enclave manages;
/// `Ok(false)` when it already was as desired (nothing written).
pub async fn apply_object(client: &Client, object: &KubeObject) -> Result<bool, kube::Error> {
    match object {
        KubeObject::Namespace(o) => apply(cluster(client), o).await,
        KubeObject::PersistentVolume(o) => apply(cluster(client), o).await,
        KubeObject::ResourceQuota(o) => apply(namespaced(client, o), o).await,
        KubeObject::LimitRange(o) => apply(namespaced(client, o), o).await,
        KubeObject::NetworkPolicy(o) => apply(namespaced(client, o), o).await,
        KubeObject::RoleBinding(o) => apply(namespaced(client, o), o).await,
        KubeObject::ServiceAccount(o) => apply(namespaced(client, o), o).await,
        KubeObject::PersistentVolumeClaim(o) => apply(namespaced(client, o), o).await,
        KubeObject::Job(o) => apply(namespaced(client, o), o).await,
        KubeObject::Service(o) => apply(namespaced(client, o), o).await,
        KubeObject::StatefulSet(o) => apply(namespaced(client, o), o).await,
    }
}

/// Writes `status` of `name` with server-side apply, under the field manager.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::contains;

    #[test]
    fn live_state_with_more_fields_holds_the_desired_state() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 80}]}});
        let live = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}, "status": {}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn a_changed_value_a_missing_field_or_another_list_length_does_not() {
        let desired = json!({"spec": {"replicas": 1, "ports": [{"port": 80}]}});
        for live in [
            json!({"spec": {"replicas": 0, "ports": [{"port": 80}]}}),
            json!({"spec": {"ports": [{"port": 80}]}}),
            json!({"spec": {"replicas": 1, "ports": [{"port": 80}, {"port": 81}]}}),
            json!({"spec": {"replicas": 1, "ports": [{"port": 8080}]}}),
        ] {
            assert!(!contains(&live, &desired), "{live}");
        }
    }
}
