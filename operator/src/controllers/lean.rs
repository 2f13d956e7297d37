//! Objects read for their metadata only, without their field managers.
//!
//! The API server sends `metadata.managedFields` with every object it
//! returns: one entry per field manager, each a JSON tree of every field it
//! owns. Parsing those trees (into `serde_json::Value`s the operator never
//! reads) was about a tenth of the operator's CPU while tenants converged.
//! [`Lean`] asks the server for metadata only (like
//! [`kube::core::PartialObjectMeta`]) and skips `managedFields` while
//! parsing, so the watches that only need versions and owners, and the
//! responses to applies, cost a few allocations per object.

use std::{borrow::Cow, collections::BTreeMap, marker::PhantomData};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};

/// The metadata of a `K`, without its field managers.
#[derive(Clone, Debug)]
pub struct Lean<K> {
    /// Everything the server sent in `metadata` but `managedFields`.
    pub metadata: ObjectMeta,
    kind: PhantomData<fn() -> K>,
}

impl<K> From<ObjectMeta> for Lean<K> {
    fn from(metadata: ObjectMeta) -> Self {
        Self {
            metadata,
            kind: PhantomData,
        }
    }
}

/// [`ObjectMeta`] as the server sends it, less `managedFields` (left to
/// serde, which skips an unknown field without building it).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<Meta> for ObjectMeta {
    fn from(m: Meta) -> Self {
        Self {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

impl<'de, K> Deserialize<'de> for Lean<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The object: its metadata; anything else (a full object's spec
        /// and status) is skipped.
        #[derive(Deserialize)]
        struct Object {
            #[serde(default)]
            metadata: Meta,
        }
        let object = Object::deserialize(deserializer)?;
        Ok(ObjectMeta::from(object.metadata).into())
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Lean<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn metadata_api() -> bool {
        true
    }

    fn kind((): &()) -> Cow<'_, str> {
        K::kind(&())
    }

    fn group((): &()) -> Cow<'_, str> {
        K::group(&())
    }

    fn version((): &()) -> Cow<'_, str> {
        K::version(&())
    }

    fn plural((): &()) -> Cow<'_, str> {
        K::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSet;

    use super::*;

    #[test]
    fn metadata_is_read_without_its_field_managers() {
        let json = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "ws", "namespace": "company-a", "uid": "u1",
                "resourceVersion": "42", "generation": 3,
                "labels": {"app.kubernetes.io/managed-by": "enclave"},
                "ownerReferences": [{"apiVersion": "enclave.dev/v1alpha1",
                    "kind": "Developer", "name": "alice", "uid": "d1", "controller": true}],
                "deletionTimestamp": "2026-12-03T00:00:00Z",
                "managedFields": [{"manager": "enclave", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}],
            },
            "spec": {"replicas": 1},
        });
        let lean: Lean<StatefulSet> = serde_json::from_value(json).unwrap();
        let m = &lean.metadata;
        assert_eq!(m.name.as_deref(), Some("ws"));
        assert_eq!(m.namespace.as_deref(), Some("company-a"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.generation, Some(3));
        assert_eq!(m.owner_references.as_ref().unwrap()[0].uid, "d1");
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.labels.as_ref().unwrap().len(), 1);
        assert_eq!(m.managed_fields, None);
    }

    #[test]
    fn it_is_addressed_as_its_kind_through_the_metadata_api() {
        assert_eq!(Lean::<StatefulSet>::kind(&()), "StatefulSet");
        assert_eq!(Lean::<StatefulSet>::api_version(&()), "apps/v1");
        assert_eq!(Lean::<StatefulSet>::plural(&()), "statefulsets");
        assert!(Lean::<StatefulSet>::metadata_api());
    }
}
