//! Server-side apply of the builders' objects, under one field manager.
//!
//! Each applied object carries a hash of the intent it was applied with
//! ([`APPLIED_ANNOTATION`]). An object is written again when that intent
//! changed (the full object is applied, so a field Enclave no longer sets
//! is removed by server-side apply) or when its live state no longer holds
//! a desired value (someone edited it). Quantities are compared by value,
//! as the API server rewrites them (`1024Mi` is stored as `1Gi`): a resync
//! of unchanged tenants writes nothing.

use std::fmt::Debug;

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use kube_quantity::ParsedQuantity;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{
    cache::{self, WatchCache},
    lean::Lean,
    unmanaged::Unmanaged,
};
use crate::builders::KubeObject;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "enclave";

/// Annotation holding the hash of the intent an object was last applied with.
pub const APPLIED_ANNOTATION: &str = "enclave.dev/applied";

/// The path of the first desired value `live` does not hold, if any
/// (fields the server or other managers added are ignored).
fn difference(live: &Value, desired: &Value) -> Option<String> {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => {
            desired
                .iter()
                .filter(|(_, v)| !v.is_null())
                .find_map(|(k, v)| match live.get(k) {
                    Some(l) => difference(l, v).map(|path| format!(".{k}{path}")),
                    // The API server omits zero values (`omitempty`): an absent
                    // `hostIPC` is the `false` Enclave asked for.
                    None if is_zero(v) => None,
                    None => Some(format!(".{k}")),
                })
        }
        (Value::Array(live), Value::Array(desired)) => {
            if live.len() != desired.len() {
                return Some(format!(
                    " (length {} instead of {})",
                    live.len(),
                    desired.len()
                ));
            }
            live.iter()
                .zip(desired)
                .enumerate()
                .find_map(|(i, (l, d))| difference(l, d).map(|path| format!("[{i}]{path}")))
        }
        (Value::String(l), Value::String(d)) if l == d || same_quantity(l, d) => None,
        (l, d) if l == d => None,
        (l, d) => Some(format!(" ({l} instead of {d})")),
    }
}

/// A value the API server stores by leaving the field out.
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Null => true,
    }
}

/// Two strings that are both Kubernetes quantities of the same value.
fn same_quantity(a: &str, b: &str) -> bool {
    match (ParsedQuantity::try_from(a), ParsedQuantity::try_from(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The hash of the intent `desired` that [`APPLIED_ANNOTATION`] records.
fn intent_hash(desired: &Value) -> String {
    crate::names::short_hash(&[&desired.to_string()])
}

/// `desired` with [`APPLIED_ANNOTATION`] set to its intent hash, and
/// that hash.
fn annotated(mut desired: Value) -> (Value, String) {
    let hash = intent_hash(&desired);
    if let Some(metadata) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(APPLIED_ANNOTATION.into(), Value::String(hash.clone()));
        }
    }
    (desired, hash)
}

/// Why `live` must be written to hold `desired`, if it must: the intent
/// changed since the last apply, or a desired value was changed by someone
/// else.
/// `desired` is [`annotated`].
fn why_apply(live: &Value, desired: &Value) -> Option<String> {
    let pointer = format!(
        "/metadata/annotations/{}",
        APPLIED_ANNOTATION.replace('/', "~1")
    );
    if live.pointer(&pointer) != desired.pointer(&pointer) {
        return Some("the desired state changed since it was last applied".into());
    }
    difference(live, desired).map(|path| format!("{path} was changed by someone else"))
}

async fn apply<K>(
    (api, lean): (Api<Unmanaged<K>>, Api<Lean<K>>),
    cache: &WatchCache,
    object: &K,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = object.name_any();
    let namespace = object.namespace().unwrap_or_default();
    let (desired, hash) = annotated(serde_json::to_value(object).map_err(kube::Error::SerdeError)?);
    let kind = kind_of::<K>();
    let intent = cache::intent(&hash);
    // Nobody wrote it since it was last found as desired: no read.
    if cache.unchanged(kind, &namespace, &name, intent) {
        return Ok(false);
    }
    // The watch has listed its kind and never saw it: create, no read.
    let live = if cache.absent(kind, &namespace, &name) {
        None
    } else {
        api.get_opt(&name).await?
    };
    if let Some(live) = live {
        let version = live.resource_version();
        let live = serde_json::to_value(&live.0).map_err(kube::Error::SerdeError)?;
        match why_apply(&live, &desired) {
            None => {
                cache.verified(kind, object.meta(), version.as_deref(), intent);
                return Ok(false);
            }
            Some(why) => tracing::debug!(kind, %name, %why, "applying"),
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    // Only the applied version is read from the answer.
    let applied = lean.patch(&name, &params, &Patch::Apply(&desired)).await?;
    cache.verified(
        kind,
        applied.meta(),
        applied.resource_version().as_deref(),
        intent,
    );
    Ok(true)
}

/// The kind's name, as the watch cache keys it.
fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        // Every kind Enclave applies is a k8s-openapi type with a static name.
        std::borrow::Cow::Owned(_) => "",
    }
}

/// A cluster-scoped kind's API, whole (without field managers) and [`Lean`].
fn cluster<K>(client: &Client) -> (Api<Unmanaged<K>>, Api<Lean<K>>)
where
    K: Resource<Scope = ClusterResourceScope, DynamicType = ()>,
{
    (Api::all(client.clone()), Api::all(client.clone()))
}

/// `object`'s namespace's API of its kind, whole (without field managers)
/// and [`Lean`].
fn namespaced<K>(client: &Client, object: &K) -> (Api<Unmanaged<K>>, Api<Lean<K>>)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    let namespace = object.namespace().unwrap_or_else(|| "default".into());
    (
        Api::namespaced(client.clone(), &namespace),
        Api::namespaced(client.clone(), &namespace),
    )
}

/// Applies `object`, forcing ownership of the fields Enclave manages;
/// `Ok(false)` when it already was as desired (nothing written). `cache`
/// spares the read of an object nobody wrote since it was verified.
pub async fn apply_object(
    client: &Client,
    cache: &WatchCache,
    object: &KubeObject,
) -> Result<bool, kube::Error> {
    match object {
        KubeObject::Namespace(o) => apply(cluster(client), cache, o).await,
        KubeObject::PersistentVolume(o) => apply(cluster(client), cache, o).await,
        KubeObject::ResourceQuota(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::LimitRange(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::NetworkPolicy(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::Role(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::RoleBinding(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::ServiceAccount(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::PersistentVolumeClaim(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::Job(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::Service(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::StatefulSet(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::Deployment(o) => apply(namespaced(client, o), cache, o).await,
        KubeObject::ConfigMap(o) => apply(namespaced(client, o), cache, o).await,
    }
}

/// Writes `status` of `name` with server-side apply, under the field
/// manager (the answer is read [`Lean`]: nothing in it is used).
pub async fn apply_status<K>(
    api: &Api<Lean<K>>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
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

    use serde_json::Value;

    use super::{annotated, difference, why_apply};

    fn contains(live: &Value, desired: &Value) -> bool {
        difference(live, desired).is_none()
    }

    fn needs_apply(live: &Value, desired: &Value) -> bool {
        why_apply(live, desired).is_some()
    }

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

    #[test]
    fn quantities_are_compared_by_value() {
        let desired = json!({"spec": {"hard": {"memory": "1024Mi", "cpu": "0.5"}}});
        let live = json!({"spec": {"hard": {"memory": "1Gi", "cpu": "500m"}}});
        assert!(contains(&live, &desired));
        let changed = json!({"spec": {"hard": {"memory": "1Gi", "cpu": "501m"}}});
        assert!(!contains(&changed, &desired));
        // Zero values the server leaves out.
        assert!(contains(
            &json!({"spec": {}}),
            &json!({"spec": {"hostIPC": false, "storageClassName": ""}})
        ));
        assert!(!contains(
            &json!({"spec": {}}),
            &json!({"spec": {"hostIPC": true}})
        ));
        // Not quantities: compared as text.
        assert!(!contains(&json!({"a": "v1"}), &json!({"a": "v01"})));
    }

    #[test]
    fn a_changed_intent_is_applied_even_when_the_live_state_holds_it() {
        let (old, _) = annotated(
            json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80, "name": "x"}]}}),
        );
        let (new, _) =
            annotated(json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}));
        let mut live = old.clone();
        live["metadata"]["uid"] = json!("u");
        assert!(!needs_apply(&live, &old), "applied and unchanged");
        assert!(
            needs_apply(&live, &new),
            "a removed field is removed by applying the new intent"
        );
        let mut edited = live.clone();
        edited["spec"]["ports"][0]["port"] = json!(81);
        assert!(needs_apply(&edited, &old), "drift is put back");
    }
}
