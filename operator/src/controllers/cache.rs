//! What the operator's own watches say about the objects it manages, so
//! that a resync of unchanged tenants compares with memory instead of
//! reading every child from the API server.
//!
//! Per object it keeps the `resourceVersion` the watch last saw and the one
//! an apply last found (or made) as desired, with the hash of that intent.
//! When both versions are equal and the intent is unchanged, nobody has
//! written the object since it was verified: nothing to read, nothing to
//! write. Any write by anyone changes the version, and the next apply reads
//! the object again (drift is found as before, one resync after the watch
//! saw it). An object the watch has not seen, or a kind that has not listed
//! yet, is always read. Entries are a few dozen bytes: keys are hashed, and
//! versions (etcd revisions) kept as numbers.

use std::{
    collections::{HashMap, HashSet},
    fmt::Debug,
    hash::{Hash, Hasher},
    sync::{Arc, RwLock},
};

use futures::{StreamExt, future::join_all};
use k8s_openapi::Resource as _;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{
        ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota,
        Service, ServiceAccount,
    },
    networking::v1::NetworkPolicy,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;

use crate::names::{ANNOTATION_COMPANY_UID, LABEL_COMPANY};

/// One object as the cache knows it.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    kind: &'static str,
    /// The version the watch last saw (0: not seen, or gone).
    observed: u64,
    /// The version an apply last found as desired (0: never).
    verified: u64,
    /// The hash of the intent it was verified with.
    intent: u64,
    /// A StatefulSet's ready replicas.
    ready: i32,
}

/// A namespace's owner marks (label and uid annotation).
type Owner = (Option<String>, Option<String>);

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    namespaces: HashMap<String, Owner>,
    /// Keys seen during a kind's relist.
    relisting: HashMap<&'static str, HashSet<u64>>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WatchCache {
    inner: RwLock<Inner>,
}

fn key(kind: &str, namespace: &str, name: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (kind, namespace, name).hash(&mut hasher);
    hasher.finish()
}

/// A hash of an intent (the applied annotation's value).
pub fn intent(annotation: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    annotation.hash(&mut hasher);
    hasher.finish()
}

fn version(resource_version: Option<&str>) -> u64 {
    resource_version.and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl WatchCache {
    /// Whether the object is, as far as the watch knows, exactly as an
    /// apply with this intent last verified it.
    pub fn unchanged(&self, kind: &str, namespace: &str, name: &str, intent: u64) -> bool {
        let Ok(inner) = self.inner.read() else {
            return false;
        };
        inner
            .entries
            .get(&key(kind, namespace, name))
            .is_some_and(|e| e.observed != 0 && e.observed == e.verified && e.intent == intent)
    }

    /// Records that the object at `resource_version` holds intent `intent`.
    pub fn verified(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        resource_version: Option<&str>,
        intent: u64,
    ) {
        if let Ok(mut inner) = self.inner.write() {
            let entry = inner
                .entries
                .entry(key(kind, namespace, name))
                .or_insert(Entry {
                    kind,
                    ..Entry::default()
                });
            entry.verified = version(resource_version);
            entry.intent = intent;
        }
    }

    /// A StatefulSet's ready replicas, if the watch has seen it.
    pub fn ready_replicas(&self, namespace: &str, name: &str) -> Option<i32> {
        let inner = self.inner.read().ok()?;
        inner
            .entries
            .get(&key(StatefulSet::KIND, namespace, name))
            .filter(|e| e.observed != 0)
            .map(|e| e.ready)
    }

    /// A namespace's company label and uid annotation, if the namespace
    /// watch has listed and seen it (`None`: unknown, read it).
    pub fn namespace_owner(&self, name: &str) -> Option<Owner> {
        let inner = self.inner.read().ok()?;
        inner.namespaces.get(name).cloned()
    }

    fn observe(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
        version_seen: u64,
        ready: i32,
    ) {
        if let Ok(mut inner) = self.inner.write() {
            let k = key(kind, namespace, name);
            if let Some(seen) = inner.relisting.get_mut(kind) {
                seen.insert(k);
            }
            let entry = inner.entries.entry(k).or_insert(Entry {
                kind,
                ..Entry::default()
            });
            entry.observed = version_seen;
            entry.ready = ready;
        }
    }

    fn forget(&self, kind: &'static str, namespace: &str, name: &str) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.remove(&key(kind, namespace, name));
            if kind == Namespace::KIND {
                inner.namespaces.remove(name);
            }
        }
    }

    fn relist_begins(&self, kind: &'static str) {
        if let Ok(mut inner) = self.inner.write() {
            inner.relisting.insert(kind, HashSet::new());
        }
    }

    /// Forgets what the relist of `kind` did not see (deleted while the
    /// watch was down).
    fn relist_done(&self, kind: &'static str) {
        if let Ok(mut inner) = self.inner.write() {
            let seen = inner.relisting.remove(kind).unwrap_or_default();
            inner
                .entries
                .retain(|k, e| e.kind != kind || seen.contains(k));
        }
    }

    fn observe_namespace(&self, name: &str, owner: Owner) {
        if let Ok(mut inner) = self.inner.write() {
            inner.namespaces.insert(name.to_owned(), owner);
        }
    }

    fn relist_namespaces(&self, seen: &HashSet<String>) {
        if let Ok(mut inner) = self.inner.write() {
            inner.namespaces.retain(|name, _| seen.contains(name));
        }
    }
}

/// The label every object Enclave manages carries.
const MANAGED: &str = "app.kubernetes.io/managed-by=enclave";

/// Follows one kind: metadata only, or (`ready`) whole objects where the
/// cache keeps a status field.
async fn follow<W>(api: Api<W>, kind: &'static str, cache: Arc<WatchCache>, ready: fn(&W) -> i32)
where
    W: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    W::DynamicType: Default,
{
    let mut events = watcher(api, watcher::Config::default().labels(MANAGED))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => cache.relist_begins(kind),
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => cache.observe(
                kind,
                &o.namespace().unwrap_or_default(),
                &o.name_any(),
                version(o.resource_version().as_deref()),
                ready(&o),
            ),
            Ok(watcher::Event::Delete(o)) => {
                cache.forget(kind, &o.namespace().unwrap_or_default(), &o.name_any());
            }
            Ok(watcher::Event::InitDone) => cache.relist_done(kind),
            Err(error) => tracing::debug!(%error, kind, "watch of managed objects interrupted"),
        }
    }
}

/// Follows every namespace (not only Enclave's: whether a namespace that
/// a Company would claim belongs to someone else is read from here too).
async fn follow_namespaces(client: Client, cache: Arc<WatchCache>) {
    let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(ns) | watcher::Event::Apply(ns)) => {
                if let Some(seen) = &mut relisted {
                    seen.insert(ns.name_any());
                }
                let owner = (
                    ns.labels().get(LABEL_COMPANY).cloned(),
                    ns.annotations().get(ANNOTATION_COMPANY_UID).cloned(),
                );
                cache.observe_namespace(&ns.name_any(), owner);
                if ns
                    .labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("enclave")
                {
                    cache.observe(
                        Namespace::KIND,
                        "",
                        &ns.name_any(),
                        version(ns.resource_version().as_deref()),
                        0,
                    );
                }
            }
            Ok(watcher::Event::Delete(ns)) => cache.forget(Namespace::KIND, "", &ns.name_any()),
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    cache.relist_namespaces(&seen);
                }
            }
            Err(error) => tracing::debug!(%error, "watch of namespaces interrupted"),
        }
    }
}

fn none<W>(_: &W) -> i32 {
    0
}

/// Keeps `cache` current until the controllers stop: one watch per kind
/// Enclave applies.
pub async fn run(client: Client, cache: Arc<WatchCache>) {
    macro_rules! meta {
        ($kind:ty) => {
            Box::pin(follow(
                Api::<PartialObjectMeta<$kind>>::all(client.clone()),
                <$kind>::KIND,
                Arc::clone(&cache),
                none,
            )) as futures::future::BoxFuture<'static, ()>
        };
    }
    let sets = Box::pin(follow(
        Api::<StatefulSet>::all(client.clone()),
        StatefulSet::KIND,
        Arc::clone(&cache),
        |s: &StatefulSet| {
            s.status
                .as_ref()
                .and_then(|st| st.ready_replicas)
                .unwrap_or(0)
        },
    )) as futures::future::BoxFuture<'static, ()>;
    join_all([
        Box::pin(follow_namespaces(client.clone(), Arc::clone(&cache))),
        sets,
        meta!(ResourceQuota),
        meta!(LimitRange),
        meta!(NetworkPolicy),
        meta!(Role),
        meta!(RoleBinding),
        meta!(ServiceAccount),
        meta!(PersistentVolume),
        meta!(PersistentVolumeClaim),
        meta!(Service),
        meta!(Deployment),
        meta!(ConfigMap),
    ])
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_verified_and_seen_at_the_same_version_needs_no_read() {
        let cache = WatchCache::default();
        let intent = intent("abc");
        assert!(
            !cache.unchanged("Service", "ns", "svc", intent),
            "never seen"
        );
        cache.verified("Service", "ns", "svc", Some("10"), intent);
        assert!(
            !cache.unchanged("Service", "ns", "svc", intent),
            "the watch has not seen 10"
        );
        cache.observe("Service", "ns", "svc", 10, 0);
        assert!(cache.unchanged("Service", "ns", "svc", intent));
        assert!(
            !cache.unchanged("Service", "ns", "svc", super::intent("abd")),
            "another intent"
        );
        assert!(
            !cache.unchanged("Service", "other", "svc", intent),
            "another key"
        );
        // Someone wrote it: read it again.
        cache.observe("Service", "ns", "svc", 11, 0);
        assert!(!cache.unchanged("Service", "ns", "svc", intent));
        cache.verified("Service", "ns", "svc", Some("11"), intent);
        assert!(cache.unchanged("Service", "ns", "svc", intent));
        // Deleted: read it again.
        cache.forget("Service", "ns", "svc");
        assert!(!cache.unchanged("Service", "ns", "svc", intent));
    }

    #[test]
    fn a_relist_forgets_what_vanished_meanwhile() {
        let cache = WatchCache::default();
        let intent = intent("x");
        for name in ["a", "b"] {
            cache.observe("Role", "ns", name, 5, 0);
            cache.verified("Role", "ns", name, Some("5"), intent);
        }
        cache.observe("Service", "ns", "a", 5, 0);
        cache.relist_begins("Role");
        cache.observe("Role", "ns", "a", 5, 0);
        cache.relist_done("Role");
        assert!(cache.unchanged("Role", "ns", "a", intent));
        assert!(
            !cache.unchanged("Role", "ns", "b", intent),
            "gone while the watch was down"
        );
        assert_eq!(cache.ready_replicas("ns", "a"), None, "not a StatefulSet");
    }

    #[test]
    fn versions_that_are_not_numbers_are_never_trusted() {
        let cache = WatchCache::default();
        let intent = intent("x");
        cache.verified("Role", "ns", "a", Some("opaque"), intent);
        cache.observe("Role", "ns", "a", version(Some("opaque")), 0);
        assert!(!cache.unchanged("Role", "ns", "a", intent));
    }
}
