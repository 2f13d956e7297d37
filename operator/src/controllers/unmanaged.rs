//! Whole objects read without their field managers.
//!
//! [`super::lean::Lean`] reads metadata only. Where the operator needs the
//! whole object (a workspace's spec and ready replicas, a Developer's spec
//! and status, an object compared with its desired state), the server's
//! `metadata.managedFields` still comes along: one JSON tree per field
//! manager of every field it owns, a StatefulSet's whole pod template
//! among them. heaptrack counted their parsing at about a fifth of the
//! operator's allocations while tenants converged. [`Unmanaged`] reads any
//! object with that one key skipped (the parser steps over it without
//! building anything), and is otherwise the object itself.

use std::{borrow::Cow, fmt};

use futures::{Stream, TryStreamExt};
use kube::{Resource, api::ObjectMeta, runtime::watcher};
use serde::{
    Deserialize, Deserializer,
    de::{
        DeserializeSeed, IgnoredAny, MapAccess, Visitor,
        value::{BorrowedStrDeserializer, StringDeserializer},
    },
};

/// A `K` read without `metadata.managedFields`.
#[derive(Clone, Debug)]
pub struct Unmanaged<K>(pub K);

impl<'de, K: Deserialize<'de>> Deserialize<'de> for Unmanaged<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(Skipping {
            inner: deserializer,
            at: Level::Object,
        })
        .map(Unmanaged)
    }
}

impl<K: Resource> Resource for Unmanaged<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn metadata_api() -> bool {
        K::metadata_api()
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        self.0.meta_mut()
    }
}

/// The events of a watch of [`Unmanaged`] objects, as events of the
/// objects themselves.
pub fn unwrapped<K>(
    events: impl Stream<Item = Result<watcher::Event<Unmanaged<K>>, watcher::Error>>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> {
    use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
    events.map_ok(|event| match event {
        Init => Init,
        InitApply(o) => InitApply(o.0),
        InitDone => InitDone,
        Apply(o) => Apply(o.0),
        Delete(o) => Delete(o.0),
    })
}

/// Where in the object a [`Skipping`] deserializer reads.
#[derive(Clone, Copy)]
enum Level {
    /// The object: its `metadata` is read at [`Level::Metadata`].
    Object,
    /// Its metadata: `managedFields` is skipped.
    Metadata,
}

/// Forwards to `inner`, leaving out `managedFields` at [`Level::Metadata`].
struct Skipping<D> {
    inner: D,
    at: Level,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Skipping<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_any(Skipped::reading(visitor, self.at))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_map(Skipped::reading(visitor, self.at))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_struct(name, fields, Skipped::reading(visitor, self.at))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_option(Skipped::reading(visitor, self.at))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner
            .deserialize_newtype_struct(name, Skipped::reading(visitor, self.at))
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct enum identifier
        ignored_any
    }
}

/// The visitor of an object or its metadata: hands the map on through
/// [`SkippingMap`].
struct Skipped<V> {
    inner: V,
    at: Level,
}

impl<V> Skipped<V> {
    /// `visitor`, reading at level `at`.
    fn reading(inner: V, at: Level) -> Self {
        Self { inner, at }
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Skipped<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(SkippingMap {
            inner: map,
            at: self.at,
            metadata_next: false,
        })
    }

    // An optional object or metadata (`Option<ObjectMeta>`) is read the same.
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Skipping {
            inner: deserializer,
            at: self.at,
        })
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Skipping {
            inner: deserializer,
            at: self.at,
        })
    }
}

/// A key, borrowed from the input when it can be.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }

            fn visit_string<E>(self, key: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The map of an object (noting when `metadata` comes) or of its metadata
/// (stepping over `managedFields`).
struct SkippingMap<A> {
    inner: A,
    at: Level,
    metadata_next: bool,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SkippingMap<A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        loop {
            let Some(Key(key)) = self.inner.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            match self.at {
                Level::Metadata if key == "managedFields" => {
                    self.inner.next_value::<IgnoredAny>()?;
                    continue;
                }
                Level::Object => self.metadata_next = key == "metadata",
                Level::Metadata => {}
            }
            return match key {
                Cow::Borrowed(key) => seed.deserialize(BorrowedStrDeserializer::new(key)),
                Cow::Owned(key) => seed.deserialize(StringDeserializer::new(key)),
            }
            .map(Some);
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        if std::mem::take(&mut self.metadata_next) {
            self.inner.next_value_seed(MetadataSeed(seed))
        } else {
            self.inner.next_value_seed(seed)
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// Reads the value of `metadata` at [`Level::Metadata`].
struct MetadataSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for MetadataSeed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Skipping {
            inner: deserializer,
            at: Level::Metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use serde_json::json;

    use super::*;
    use crate::crd::Developer;

    fn with_managers(mut object: serde_json::Value) -> serde_json::Value {
        object["metadata"]["managedFields"] = json!([
            {"manager": "enclave", "operation": "Apply", "apiVersion": "apps/v1",
             "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                 "k:{\"name\":\"workspace\"}": {".": {}, "f:image": {}}}}}}}},
            {"manager": "kube-controller-manager", "operation": "Update",
             "subresource": "status", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:status": {"f:readyReplicas": {}}}},
        ]);
        object
    }

    fn workspace() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {
                "name": "workspace-alice", "namespace": "company-acme", "uid": "u1",
                "resourceVersion": "42", "generation": 2,
                "labels": {"app.kubernetes.io/managed-by": "enclave"},
                "annotations": {"enclave.dev/applied": "abc"},
                "ownerReferences": [{"apiVersion": "enclave.dev/v1alpha1",
                    "kind": "Developer", "name": "alice", "uid": "d1", "controller": true}],
            },
            "spec": {"replicas": 1, "serviceName": "workspace-alice",
                "selector": {"matchLabels": {"app": "alice"}},
                "template": {"metadata": {"labels": {"app": "alice"},
                        "managedFields": [{"manager": "someone", "operation": "Update"}]},
                    "spec": {"containers": [{"name": "workspace", "image": "ws:1"}]}}},
            "status": {"replicas": 1, "readyReplicas": 1},
        })
    }

    #[test]
    fn an_object_is_read_as_it_is_without_its_field_managers() {
        let expected: StatefulSet = serde_json::from_value(workspace()).unwrap();
        let text = serde_json::to_string(&with_managers(workspace())).unwrap();
        // Borrowed keys (from a slice, as kube reads) and owned ones (from
        // a reader) alike.
        let from_slice: Unmanaged<StatefulSet> = serde_json::from_slice(text.as_bytes()).unwrap();
        let from_reader: Unmanaged<StatefulSet> = serde_json::from_reader(text.as_bytes()).unwrap();
        for read in [from_slice.0, from_reader.0] {
            assert_eq!(read.metadata.managed_fields, None);
            assert_eq!(read, expected);
            // Only the object's own metadata is filtered.
            let template = read.spec.template.metadata.unwrap();
            assert_eq!(template.managed_fields.map(|m| m.len()), Some(1));
        }
        let whole: StatefulSet = serde_json::from_str(&text).unwrap();
        assert_eq!(whole.metadata.managed_fields.map(|m| m.len()), Some(2));
    }

    #[test]
    fn a_custom_resource_reads_the_same_and_is_addressed_as_itself() {
        let developer = json!({
            "apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
            "metadata": {"name": "alice", "namespace": "company-acme", "uid": "d1",
                "generation": 1, "finalizers": ["enclave.dev/cleanup"]},
            "spec": {"subject": "alice@example.com"},
            "status": {"uid": 10000, "conditions": [{"type": "Ready", "status": "True",
                "reason": "Ready", "message": "ready", "lastTransitionTime": "2026-12-07T00:00:00Z"}]},
        });
        let expected: Developer = serde_json::from_value(developer.clone()).unwrap();
        let text = serde_json::to_string(&with_managers(developer)).unwrap();
        let read: Unmanaged<Developer> = serde_json::from_str(&text).unwrap();
        assert_eq!(read.0, expected);
        assert_eq!(Unmanaged::<Developer>::kind(&()), "Developer");
        assert_eq!(
            Unmanaged::<Developer>::url_path(&(), Some("company-acme")),
            Developer::url_path(&(), Some("company-acme"))
        );
        assert!(!Unmanaged::<Developer>::metadata_api());
    }

    #[test]
    fn optional_metadata_and_other_shapes_read_the_same() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct Optional {
            metadata: Option<ObjectMeta>,
            #[serde(default)]
            items: Vec<u32>,
        }
        let text = serde_json::to_string(&with_managers(json!({
            "metadata": {"name": "a"}, "items": [1, 2],
        })))
        .unwrap();
        let read: Unmanaged<Optional> = serde_json::from_str(&text).unwrap();
        let meta = read.0.metadata.expect("metadata");
        assert_eq!(
            (meta.name.as_deref(), meta.managed_fields, read.0.items),
            (Some("a"), None, vec![1, 2])
        );
        let none: Unmanaged<Optional> = serde_json::from_str(r#"{"metadata": null}"#).unwrap();
        assert_eq!(none.0.metadata, None);
        assert!(serde_json::from_str::<Unmanaged<Optional>>("[1]").is_err());
    }

    #[tokio::test]
    async fn watch_events_carry_the_objects_themselves() {
        use futures::StreamExt;
        let set: Unmanaged<StatefulSet> = serde_json::from_value(workspace()).unwrap();
        let events = futures::stream::iter([
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(set.clone())),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(set.clone())),
            Ok(watcher::Event::Delete(set)),
        ]);
        let names: Vec<String> = unwrapped(events)
            .map(|e| match e.unwrap() {
                watcher::Event::Init => "init".to_owned(),
                watcher::Event::InitDone => "done".to_owned(),
                watcher::Event::InitApply(s)
                | watcher::Event::Apply(s)
                | watcher::Event::Delete(s) => s.metadata.name.unwrap_or_default(),
            })
            .collect()
            .await;
        assert_eq!(
            names,
            [
                "init",
                "workspace-alice",
                "done",
                "workspace-alice",
                "workspace-alice"
            ]
        );
    }
}
