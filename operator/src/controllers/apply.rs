//! Server-side apply of the builders' objects, under one field manager.

use std::fmt::Debug;

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::builders::KubeObject;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "enclave";

async fn cluster<K>(client: &Client, object: &K, params: &PatchParams) -> Result<(), kube::Error>
where
    K: Resource<Scope = ClusterResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    api.patch(&object.name_any(), params, &Patch::Apply(object))
        .await
        .map(|_| ())
}

async fn namespaced<K>(client: &Client, object: &K, params: &PatchParams) -> Result<(), kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.patch(&object.name_any(), params, &Patch::Apply(object))
        .await
        .map(|_| ())
}

/// Applies `object`, forcing ownership of the fields Enclave manages.
pub async fn apply_object(client: &Client, object: &KubeObject) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match object {
        KubeObject::Namespace(o) => cluster(client, o, &params).await,
        KubeObject::PersistentVolume(o) => cluster(client, o, &params).await,
        KubeObject::ResourceQuota(o) => namespaced(client, o, &params).await,
        KubeObject::LimitRange(o) => namespaced(client, o, &params).await,
        KubeObject::NetworkPolicy(o) => namespaced(client, o, &params).await,
        KubeObject::Role(o) => namespaced(client, o, &params).await,
        KubeObject::RoleBinding(o) => namespaced(client, o, &params).await,
        KubeObject::ServiceAccount(o) => namespaced(client, o, &params).await,
        KubeObject::PersistentVolumeClaim(o) => namespaced(client, o, &params).await,
        KubeObject::Job(o) => namespaced(client, o, &params).await,
        KubeObject::Service(o) => namespaced(client, o, &params).await,
        KubeObject::StatefulSet(o) => namespaced(client, o, &params).await,
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
