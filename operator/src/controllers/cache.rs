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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;

use super::{
    lean::Lean,
    unmanaged::{Unmanaged, unwrapped},
};
use crate::names::{ANNOTATION_COMPANY_UID, LABEL_COMPANY};

/// One object as the cache knows it: one per object the operator manages
/// (about 7 per Developer: 6 of its own and 12 per Company of 10), so
/// kept to 48 bytes (its kind is its table's).
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// The version the watch last saw (0: not seen, or gone).
    observed: u64,
    /// The version an apply last found as desired (0: never).
    verified: u64,
    /// The hash of the intent it was verified with.
    intent: u64,
    /// A StatefulSet's ready replicas.
    ready: i32,
    /// For kinds watched whole: the object's [`content`] hash (0:
    /// unknown).
    content: u64,
    /// A hash of its controller owner's uid (0: none known).
    owner: u64,
    /// Since when it is seen being deleted its dependents first (a
    /// StatefulSet in the foreground, a namespace always): irreversible, so
    /// never wrong, only perhaps late. In [`seconds`], plus one (0: not
    /// seen stopping).
    stopping: u32,
}

/// Whether an entry's `stopping` mark (see [`Entry::stopping`]) is set,
/// younger than [`STOPPING_TRUSTED`] at `now`, and set after the last
/// failure of its kind's watch (`failed`, 0: none); all in [`seconds`],
/// plus one.
fn trusted_stopping(stopping: u32, failed: u32, now: u32) -> bool {
    stopping != 0
        && failed < stopping
        && u64::from(now.saturating_sub(stopping - 1)) < STOPPING_TRUSTED.as_secs()
}

/// Seconds since the process first asked: a clock of four bytes.
fn seconds() -> u32 {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    u32::try_from(START.elapsed().as_secs()).unwrap_or(u32::MAX)
}

/// How long a workspace (or a namespace) seen stopping is believed to be
/// still stopping without a read. A watch that fails (its access revoked, its connection
/// dead: kube's watcher gives up on a silent one after five minutes) ends
/// the trust at once; this bounds what no error reports. A read that finds
/// it still stopping sets the mark again: at 10,000 Developers whose
/// workspaces the garbage collector takes an hour to delete, one read each
/// per ten minutes, where a read per retry starved the collector.
const STOPPING_TRUSTED: std::time::Duration = std::time::Duration::from_mins(10);

/// What a watch event says of one object.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// Its version.
    version: u64,
    /// A StatefulSet's ready replicas.
    ready: i32,
    /// See [`Entry::content`].
    content: u64,
    /// See [`Entry::owner`].
    owner: u64,
    /// Being deleted its dependents first (see [`Entry::stopping`]).
    stopping: bool,
}

/// A namespace's owner marks (label and uid annotation).
type Owner = (Option<String>, Option<String>);

#[derive(Debug, Default)]
struct Inner {
    /// Each kind's objects by key, one table per kind: an entry need not
    /// carry its kind, and a relist looks only at its own kind's.
    tables: HashMap<&'static str, HashMap<u64, Entry>>,
    namespaces: HashMap<String, Owner>,
    /// Keys seen during a kind's relist.
    relisting: HashMap<&'static str, HashSet<u64>>,
    /// Kinds whose watch has listed at least once.
    listed: HashSet<&'static str>,
    /// The keys of the objects each owner (uid hash) owns.
    owned: HashMap<u64, HashSet<u64>>,
    /// When each kind's watch last failed, in [`seconds`] plus one.
    failed: HashMap<&'static str, u32>,
}

impl Inner {
    fn get(&self, kind: &str, k: u64) -> Option<&Entry> {
        self.tables.get(kind)?.get(&k)
    }

    fn get_mut(&mut self, kind: &str, k: u64) -> Option<&mut Entry> {
        self.tables.get_mut(kind)?.get_mut(&k)
    }

    /// The entry of `kind` at `k`, new if need be.
    fn entry(&mut self, kind: &'static str, k: u64) -> &mut Entry {
        self.tables.entry(kind).or_default().entry(k).or_default()
    }

    /// Records `owner` as the owner of `k` (moving it from another).
    fn own(&mut self, kind: &str, k: u64, owner: u64) {
        let Some(entry) = self.get_mut(kind, k) else {
            return;
        };
        let before = std::mem::replace(&mut entry.owner, owner);
        if before == owner {
            return;
        }
        self.disown(k, before);
        if owner != 0 {
            self.owned.entry(owner).or_default().insert(k);
        }
    }

    fn disown(&mut self, k: u64, owner: u64) {
        if let Some(keys) = self.owned.get_mut(&owner) {
            keys.remove(&k);
            if keys.is_empty() {
                self.owned.remove(&owner);
            }
        }
    }
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

/// A hash of an owner's uid, as the cache indexes owners.
fn owner_key(uid: &str) -> u64 {
    key("", "", uid)
}

/// The hash of the uid of `meta`'s owner (the first reference: Enclave
/// sets exactly one), 0 without one.
fn owner_of(meta: &kube::api::ObjectMeta) -> u64 {
    meta.owner_references
        .as_ref()
        .and_then(|refs| refs.first())
        .map_or(0, |r| owner_key(&r.uid))
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
            .get(kind, key(kind, namespace, name))
            .is_some_and(|e| e.observed != 0 && e.observed == e.verified && e.intent == intent)
    }

    /// Records that the object at `resource_version`, owned as `meta`
    /// says, holds intent `intent`.
    pub fn verified(
        &self,
        kind: &'static str,
        meta: &kube::api::ObjectMeta,
        resource_version: Option<&str>,
        intent: u64,
    ) {
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        let name = meta.name.as_deref().unwrap_or_default();
        if let Ok(mut inner) = self.inner.write() {
            let k = key(kind, namespace, name);
            let entry = inner.entry(kind, k);
            entry.verified = version(resource_version);
            entry.intent = intent;
            inner.own(kind, k, owner_of(meta));
        }
    }

    /// The kinds of `owner_uid`'s objects in `namespace` that are not
    /// in `keep` (kind and name), as far as the watches and this
    /// process's applies know; `None` when one of `kinds` has not listed
    /// yet (then nothing is known).
    pub fn strays<'a>(
        &self,
        kinds: &[&str],
        namespace: &str,
        owner_uid: &str,
        keep: impl IntoIterator<Item = &'a (&'static str, String)>,
    ) -> Option<HashSet<&'static str>> {
        let inner = self.inner.read().ok()?;
        if !kinds.iter().all(|k| inner.listed.contains(k)) {
            return None;
        }
        let keep: HashSet<u64> = keep
            .into_iter()
            .map(|(k, n)| key(k, namespace, n))
            .collect();
        Some(
            inner
                .owned
                .get(&owner_key(owner_uid))
                .into_iter()
                .flatten()
                .filter(|k| !keep.contains(*k))
                .filter_map(|k| {
                    let mut tables = inner.tables.iter();
                    tables.find_map(|(kind, table)| table.contains_key(k).then_some(*kind))
                })
                .collect(),
        )
    }

    /// Whether the object does not exist as far as the watch knows: its
    /// kind has listed and the watch has not seen it (or saw it go). An
    /// apply then writes without reading first; should the watch lag
    /// behind a creation, that write is a server-side no-op.
    pub fn absent(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Ok(inner) = self.inner.read() else {
            return false;
        };
        inner.listed.contains(kind)
            && inner
                .get(kind, key(kind, namespace, name))
                .is_none_or(|e| e.observed == 0)
    }

    /// A StatefulSet's ready replicas, if the watch has seen it.
    pub fn ready_replicas(&self, namespace: &str, name: &str) -> Option<i32> {
        let inner = self.inner.read().ok()?;
        inner
            .get(StatefulSet::KIND, key(StatefulSet::KIND, namespace, name))
            .filter(|e| e.observed != 0)
            .map(|e| e.ready)
    }

    /// Whether the watch saw the object being deleted its dependents
    /// first, and not yet gone, with its mark trusted
    /// (see [`trusted_stopping`]).
    pub fn stopping(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Ok(inner) = self.inner.read() else {
            return false;
        };
        let failed = inner.failed.get(kind).copied().unwrap_or(0);
        inner
            .get(kind, key(kind, namespace, name))
            .is_some_and(|e| e.observed != 0 && trusted_stopping(e.stopping, failed, seconds()))
    }

    /// Records that a read found the object still being deleted its
    /// dependents first: its watch-seen mark counts from now (irreversible, so a
    /// fresh read can only be late, never wrong). Nothing for an object the
    /// watch has not seen stopping.
    pub fn still_stopping(&self, kind: &str, namespace: &str, name: &str) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(entry) = inner.get_mut(kind, key(kind, namespace, name))
            && entry.observed != 0
            && entry.stopping != 0
        {
            entry.stopping = seconds().saturating_add(1);
        }
    }

    /// Records that the watch of `kind` failed: what it said may be stale
    /// until it delivers again.
    pub(super) fn watch_failed(&self, kind: &'static str) {
        if let Ok(mut inner) = self.inner.write() {
            inner.failed.insert(kind, seconds().saturating_add(1));
        }
    }

    /// A namespace's company label and uid annotation, if the namespace
    /// watch has listed and seen it (`None`: unknown, read it).
    pub fn namespace_owner(&self, name: &str) -> Option<Owner> {
        let inner = self.inner.read().ok()?;
        inner.namespaces.get(name).cloned()
    }

    /// Records what the watch saw. A new version whose content (all but
    /// the status) is that of a verified version is verified too: another
    /// controller's status update (a quota's usage, a StatefulSet's
    /// replicas) changes nothing an apply wrote.
    fn observe(&self, kind: &'static str, namespace: &str, name: &str, seen: Seen) {
        let Seen {
            version: version_seen,
            ready,
            content,
            owner,
            stopping,
        } = seen;
        if let Ok(mut inner) = self.inner.write() {
            let k = key(kind, namespace, name);
            if let Some(seen) = inner.relisting.get_mut(kind) {
                seen.insert(k);
            }
            let entry = inner.entry(kind, k);
            if content != 0
                && entry.content == content
                && entry.observed != 0
                && entry.observed == entry.verified
            {
                entry.verified = version_seen;
            }
            entry.observed = version_seen;
            entry.ready = ready;
            entry.content = content;
            entry.stopping = match (stopping, entry.stopping) {
                (false, _) => 0,
                (true, 0) => seconds().saturating_add(1),
                (true, since) => since,
            };
            inner.own(kind, k, owner);
        }
    }

    fn forget(&self, kind: &'static str, namespace: &str, name: &str) {
        if let Ok(mut inner) = self.inner.write() {
            let k = key(kind, namespace, name);
            if let Some(entry) = inner.tables.get_mut(kind).and_then(|t| t.remove(&k)) {
                inner.disown(k, entry.owner);
            }
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
            let mut gone = Vec::new();
            if let Some(table) = inner.tables.get_mut(kind) {
                table.retain(|k, e| {
                    let kept = seen.contains(k);
                    if !kept {
                        gone.push((*k, e.owner));
                    }
                    kept
                });
            }
            for (k, owner) in gone {
                inner.disown(k, owner);
            }
            inner.listed.insert(kind);
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

/// A hash of an object's spec and of the metadata an apply or a person can
/// change, with its uid, generation and deletion to catch a re-creation or
/// a deletion: not its status, nor what changes with it (version, field
/// managers). Serialized straight into the hasher: no copy of the object.
fn content<S: serde::Serialize>(meta: &ObjectMeta, spec: &S) -> u64 {
    /// Feeds what is written to a hasher.
    struct Hashing(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(std::collections::hash_map::DefaultHasher::new());
    let written = serde_json::to_writer(
        &mut hashing,
        &(
            (&meta.uid, meta.generation, &meta.labels, &meta.annotations),
            (
                &meta.owner_references,
                &meta.finalizers,
                &meta.deletion_timestamp,
            ),
            spec,
        ),
    );
    match written {
        Ok(()) => hashing.0.finish(),
        Err(_) => 0,
    }
}

/// A claim's [`content`] less what binding it changes: the volume
/// controller's annotations and `spec.volumeName` (set once, by the
/// binder: a claim's spec is immutable but for its size).
fn claim_content(claim: &PersistentVolumeClaim) -> u64 {
    const BINDING: [&str; 3] = [
        "pv.kubernetes.io/",
        "volume.kubernetes.io/",
        "volume.beta.kubernetes.io/",
    ];
    let m = &claim.metadata;
    let meta = ObjectMeta {
        uid: m.uid.clone(),
        generation: m.generation,
        labels: m.labels.clone(),
        annotations: m.annotations.as_ref().map(|a| {
            a.iter()
                .filter(|(k, _)| !BINDING.iter().any(|p| k.starts_with(p)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        owner_references: m.owner_references.clone(),
        finalizers: m.finalizers.clone(),
        deletion_timestamp: m.deletion_timestamp.clone(),
        ..ObjectMeta::default()
    };
    let spec = claim.spec.clone().map(|mut spec| {
        spec.volume_name = None;
        spec
    });
    content(&meta, &spec)
}

/// How a kind is followed: metadata only, or whole objects whose content
/// the cache compares and whose ready replicas it keeps.
struct Whole<W> {
    ready: fn(&W) -> i32,
    /// See [`content`].
    content: fn(&W) -> u64,
}

/// An object a watch saw, after the cache recorded it.
#[derive(Debug)]
pub enum Passed<W> {
    /// Created or changed (or listed), as it is now.
    Applied(W),
    /// Deleted, as it was last.
    Deleted(W),
    /// The watch lists everything again (at start, or after it lost its
    /// place): the objects listed follow as `Applied`, then `Relisted`.
    Relisting,
    /// The relist is complete: what it did not bring was deleted meanwhile.
    Relisted,
}

/// Where a watch passes on what it saw: the workspace StatefulSets wake
/// their Developers from the cache's watch, not from a second one.
pub type PassOn<W> = futures::channel::mpsc::UnboundedSender<Passed<W>>;

/// The watch of Enclave's objects of one kind.
fn managed<W>(api: Api<W>) -> impl futures::Stream<Item = watcher::Result<watcher::Event<W>>>
where
    W: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    W::DynamicType: Default,
{
    watcher(api, watcher::Config::default().labels(MANAGED))
}

/// Follows one kind's `events` (`whole`: whole objects, see [`Whole`]).
async fn follow<W>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<W>>> + Send + 'static,
    kind: &'static str,
    cache: Arc<WatchCache>,
    whole: Option<Whole<W>>,
    pass_on: Option<PassOn<W>>,
) where
    W: Resource + Clone + Debug + Send + 'static,
{
    let mut events = events.default_backoff().boxed();
    let pass = |o: Passed<W>| {
        if let Some(to) = &pass_on {
            // Fails only once the receiving controller is gone (the
            // operator is stopping): nothing is left to wake.
            let _ = to.unbounded_send(o);
        }
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                cache.relist_begins(kind);
                pass(Passed::Relisting);
            }
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                cache.observe(
                    kind,
                    &o.namespace().unwrap_or_default(),
                    &o.name_any(),
                    Seen {
                        version: version(o.resource_version().as_deref()),
                        ready: whole.as_ref().map_or(0, |w| (w.ready)(&o)),
                        content: whole.as_ref().map_or(0, |w| (w.content)(&o)),
                        owner: owner_of(o.meta()),
                        stopping: o.meta().deletion_timestamp.is_some()
                            && o.finalizers().iter().any(|f| f == "foregroundDeletion"),
                    },
                );
                pass(Passed::Applied(o));
            }
            Ok(watcher::Event::Delete(o)) => {
                cache.forget(kind, &o.namespace().unwrap_or_default(), &o.name_any());
                pass(Passed::Deleted(o));
            }
            Ok(watcher::Event::InitDone) => {
                cache.relist_done(kind);
                pass(Passed::Relisted);
            }
            Err(error) => {
                tracing::debug!(%error, kind, "watch of managed objects interrupted");
                cache.watch_failed(kind);
            }
        }
    }
}

/// Follows every namespace (not only Enclave's: whether a namespace that
/// a Company would claim belongs to someone else is read from here too).
async fn follow_namespaces(client: Client, cache: Arc<WatchCache>) {
    let api: Api<Lean<Namespace>> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                cache.relist_begins(Namespace::KIND);
            }
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
                        Seen {
                            version: version(ns.resource_version().as_deref()),
                            // A namespace always goes its content first.
                            stopping: ns.metadata.deletion_timestamp.is_some(),
                            ..Seen::default()
                        },
                    );
                }
            }
            Ok(watcher::Event::Delete(ns)) => cache.forget(Namespace::KIND, "", &ns.name_any()),
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    cache.relist_namespaces(&seen);
                }
                cache.relist_done(Namespace::KIND);
            }
            Err(error) => {
                tracing::debug!(%error, "watch of namespaces interrupted");
                cache.watch_failed(Namespace::KIND);
            }
        }
    }
}

/// Keeps `cache` current until the controllers stop: one watch per kind
/// Enclave applies. Every workspace StatefulSet seen goes on to
/// `workspaces`.
pub async fn run(client: Client, cache: Arc<WatchCache>, workspaces: PassOn<StatefulSet>) {
    macro_rules! meta {
        ($kind:ty) => {
            Box::pin(follow(
                managed(Api::<Lean<$kind>>::all(client.clone())),
                <$kind>::KIND,
                Arc::clone(&cache),
                None,
                None,
            )) as futures::future::BoxFuture<'static, ()>
        };
    }
    let sets = Box::pin(follow(
        unwrapped(managed(Api::<Unmanaged<StatefulSet>>::all(client.clone()))),
        StatefulSet::KIND,
        Arc::clone(&cache),
        Some(Whole {
            ready: |s: &StatefulSet| {
                s.status
                    .as_ref()
                    .and_then(|st| st.ready_replicas)
                    .unwrap_or(0)
            },
            content: |s: &StatefulSet| content(&s.metadata, &s.spec),
        }),
        Some(workspaces),
    )) as futures::future::BoxFuture<'static, ()>;
    // A quota's usage changes with every pod and claim in its namespace.
    let quotas = Box::pin(follow(
        unwrapped(managed(Api::<Unmanaged<ResourceQuota>>::all(
            client.clone(),
        ))),
        ResourceQuota::KIND,
        Arc::clone(&cache),
        Some(Whole {
            ready: |_| 0,
            content: |q: &ResourceQuota| content(&q.metadata, &q.spec),
        }),
        None,
    )) as futures::future::BoxFuture<'static, ()>;
    // A claim's binding changes its annotations and volume name, then its
    // status: none of it is what an apply wrote.
    let claims = Box::pin(follow(
        unwrapped(managed(Api::<Unmanaged<PersistentVolumeClaim>>::all(
            client.clone(),
        ))),
        PersistentVolumeClaim::KIND,
        Arc::clone(&cache),
        Some(Whole {
            ready: |_| 0,
            content: claim_content,
        }),
        None,
    )) as futures::future::BoxFuture<'static, ()>;
    join_all([
        Box::pin(follow_namespaces(client.clone(), Arc::clone(&cache))),
        sets,
        quotas,
        claims,
        meta!(LimitRange),
        meta!(NetworkPolicy),
        meta!(Role),
        meta!(RoleBinding),
        meta!(ServiceAccount),
        meta!(PersistentVolume),
        meta!(Service),
        meta!(Deployment),
        meta!(ConfigMap),
    ])
    .await;
}

#[cfg(test)]
impl WatchCache {
    /// Records that the watch of `kind` has listed (and seen nothing).
    pub(super) fn saw_listed(&self, kind: &'static str) {
        if let Ok(mut inner) = self.inner.write() {
            inner.listed.insert(kind);
        }
    }

    /// Records that the watch saw `name` being deleted its dependents
    /// first.
    pub(super) fn saw_stopping(&self, kind: &'static str, namespace: &str, name: &str) {
        self.observe(
            kind,
            namespace,
            name,
            Seen {
                version: 1,
                stopping: true,
                ..Seen::default()
            },
        );
    }

    /// Records that the namespace watch saw `name` marked as `company`'s
    /// (label and uid annotation).
    pub(super) fn saw_namespace_of(&self, name: &str, company: &str, uid: &str) {
        self.observe_namespace(name, (Some(company.into()), Some(uid.into())));
    }

    /// Records that the watch saw `name` deleted.
    pub(super) fn saw_gone(&self, kind: &'static str, namespace: &str, name: &str) {
        self.forget(kind, namespace, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(version: u64, ready: i32, content: u64, owner: u64) -> Seen {
        Seen {
            version,
            ready,
            content,
            owner,
            stopping: false,
        }
    }

    fn meta(namespace: &str, name: &str) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn owned(namespace: &str, name: &str, uid: &str) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta {
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    uid: uid.into(),
                    ..Default::default()
                },
            ]),
            ..meta(namespace, name)
        }
    }

    #[test]
    fn strays_are_found_by_owner_in_memory() {
        let cache = WatchCache::default();
        let kinds = ["Role", "Service"];
        let keep = [("Role", "a".to_owned())];
        assert_eq!(
            cache.strays(&kinds, "ns", "u1", &keep),
            None,
            "nothing listed"
        );
        for kind in kinds {
            cache.relist_begins(kind);
            cache.relist_done(kind);
        }
        assert_eq!(
            cache.strays(&kinds, "ns", "u1", &keep),
            Some(HashSet::new())
        );
        // Applied by this process: known before the watch sees it.
        cache.verified("Role", &owned("ns", "a", "u1"), Some("3"), intent("x"));
        cache.verified("Service", &owned("ns", "b", "u1"), Some("4"), intent("x"));
        cache.verified("Service", &owned("ns", "c", "u2"), Some("5"), intent("x"));
        assert_eq!(
            cache.strays(&kinds, "ns", "u1", &keep),
            Some(HashSet::from(["Service"]))
        );
        // Seen by the watch with another owner: no longer u1's.
        cache.observe("Service", "ns", "b", seen(6, 0, 0, owner_key("u9")));
        assert_eq!(
            cache.strays(&kinds, "ns", "u1", &keep),
            Some(HashSet::new())
        );
        cache.observe("Service", "ns", "b", seen(7, 0, 0, owner_key("u1")));
        cache.forget("Service", "ns", "b");
        assert_eq!(
            cache.strays(&kinds, "ns", "u1", &keep),
            Some(HashSet::new())
        );
        assert_eq!(
            cache.strays(&kinds, "ns", "u2", &[]),
            Some(HashSet::from(["Service"]))
        );
        // A relist that does not see it forgets its owner too.
        cache.relist_begins("Service");
        cache.relist_done("Service");
        assert_eq!(cache.strays(&kinds, "ns", "u2", &[]), Some(HashSet::new()));
    }

    #[test]
    fn an_object_verified_and_seen_at_the_same_version_needs_no_read() {
        let cache = WatchCache::default();
        let intent = intent("abc");
        assert!(
            !cache.unchanged("Service", "ns", "svc", intent),
            "never seen"
        );
        cache.verified("Service", &meta("ns", "svc"), Some("10"), intent);
        assert!(
            !cache.unchanged("Service", "ns", "svc", intent),
            "the watch has not seen 10"
        );
        cache.observe("Service", "ns", "svc", seen(10, 0, 0, 0));
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
        cache.observe("Service", "ns", "svc", seen(11, 0, 0, 0));
        assert!(!cache.unchanged("Service", "ns", "svc", intent));
        cache.verified("Service", &meta("ns", "svc"), Some("11"), intent);
        assert!(cache.unchanged("Service", "ns", "svc", intent));
        // Deleted: read it again.
        cache.forget("Service", "ns", "svc");
        assert!(!cache.unchanged("Service", "ns", "svc", intent));
    }

    #[test]
    fn an_entry_stays_small_and_a_stopping_mark_is_trusted_for_ten_minutes_or_until_its_watch_fails()
     {
        // About 7 entries per Developer: 72,000 at 1,000 x 10.
        assert!(std::mem::size_of::<Entry>() <= 48);
        assert!(!super::trusted_stopping(0, 0, 5), "not seen stopping");
        assert!(
            super::trusted_stopping(1, 0, 0),
            "seen at second 0, asked then"
        );
        assert!(
            super::trusted_stopping(11, 0, 609),
            "seen at 10, asked at 609"
        );
        assert!(
            !super::trusted_stopping(11, 0, 610),
            "seen at 10, asked at 610"
        );
        assert!(
            super::trusted_stopping(11, 10, 20),
            "the watch failed at 9, before it saw it at 10"
        );
        assert!(
            !super::trusted_stopping(11, 11, 20),
            "the watch failed at 10: perhaps after it saw it"
        );
        assert!(
            !super::trusted_stopping(11, 16, 20),
            "the watch failed at 15: it may have missed its going"
        );
    }

    #[test]
    fn a_read_that_finds_a_workspace_still_stopping_marks_it_again() {
        let cache = WatchCache::default();
        let k = key("StatefulSet", "ns", "workspace-pat");
        cache.still_stopping("StatefulSet", "ns", "workspace-pat");
        assert!(
            cache
                .inner
                .read()
                .expect("lock")
                .get("StatefulSet", k)
                .is_none(),
            "never seen: nothing to mark"
        );
        cache.observe("StatefulSet", "ns", "workspace-pat", seen(3, 1, 1, 0));
        cache.still_stopping("StatefulSet", "ns", "workspace-pat");
        assert!(
            !cache.stopping("StatefulSet", "ns", "workspace-pat"),
            "not seen stopping: a read alone does not mark it"
        );
        cache.saw_stopping("StatefulSet", "ns", "workspace-pat");
        // A mark from long ago (no real mark is ever this large).
        cache
            .inner
            .write()
            .expect("lock")
            .get_mut("StatefulSet", k)
            .expect("entry")
            .stopping = u32::MAX;
        let before = super::seconds();
        cache.still_stopping("StatefulSet", "ns", "workspace-pat");
        let mark = cache
            .inner
            .read()
            .expect("lock")
            .get("StatefulSet", k)
            .map(|e| e.stopping);
        let mark = mark.expect("entry");
        assert!(
            (before + 1..=super::seconds() + 1).contains(&mark),
            "marked as of now: {mark}"
        );
        assert!(cache.stopping("StatefulSet", "ns", "workspace-pat"));
    }

    #[test]
    fn a_workspace_seen_stopping_is_stopping_until_it_is_gone() {
        let cache = WatchCache::default();
        assert!(
            !cache.stopping("StatefulSet", "ns", "workspace-pat"),
            "never seen"
        );
        cache.observe("StatefulSet", "ns", "workspace-pat", seen(3, 1, 1, 0));
        assert!(
            !cache.stopping("StatefulSet", "ns", "workspace-pat"),
            "running"
        );
        cache.observe(
            "StatefulSet",
            "ns",
            "workspace-pat",
            Seen {
                stopping: true,
                ..seen(4, 1, 2, 0)
            },
        );
        assert!(cache.stopping("StatefulSet", "ns", "workspace-pat"));
        assert!(
            !cache.stopping("StatefulSet", "ns", "workspace-kim"),
            "another"
        );
        cache.forget("StatefulSet", "ns", "workspace-pat");
        assert!(
            !cache.stopping("StatefulSet", "ns", "workspace-pat"),
            "gone"
        );
    }

    #[test]
    fn a_claims_binding_needs_no_read_but_a_changed_size_does() {
        use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
        let cache = WatchCache::default();
        let intent = intent("c");
        let mut claim = PersistentVolumeClaim::default();
        claim.metadata.name = Some("home-pat".into());
        claim.metadata.annotations =
            Some([("enclave.dev/applied".to_owned(), "h".to_owned())].into());
        claim.spec = Some(PersistentVolumeClaimSpec {
            storage_class_name: Some("gp3".into()),
            ..PersistentVolumeClaimSpec::default()
        });
        let observe = |version, claim: &PersistentVolumeClaim| {
            cache.observe(
                "PersistentVolumeClaim",
                "ns",
                "home-pat",
                seen(version, 0, claim_content(claim), 0),
            );
        };
        observe(5, &claim);
        cache.verified(
            "PersistentVolumeClaim",
            &meta("ns", "home-pat"),
            Some("5"),
            intent,
        );
        // The volume controller binds it: its annotations, its volume, its
        // status; each a new version.
        claim.metadata.annotations.get_or_insert_default().extend([
            (
                "pv.kubernetes.io/bind-completed".to_owned(),
                "yes".to_owned(),
            ),
            (
                "volume.kubernetes.io/storage-provisioner".to_owned(),
                "ebs".to_owned(),
            ),
        ]);
        observe(6, &claim);
        if let Some(spec) = claim.spec.as_mut() {
            spec.volume_name = Some("pvc-1234".into());
        }
        observe(7, &claim);
        claim.status = Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        observe(8, &claim);
        assert!(cache.unchanged("PersistentVolumeClaim", "ns", "home-pat", intent));
        // Someone grows it: read it.
        if let Some(spec) = claim.spec.as_mut() {
            spec.resources = Some(VolumeResourceRequirements {
                requests: Some(
                    [(
                        "storage".to_owned(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Ti".into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            });
        }
        observe(9, &claim);
        assert!(!cache.unchanged("PersistentVolumeClaim", "ns", "home-pat", intent));
    }

    #[test]
    fn a_status_update_of_a_verified_object_needs_no_read() {
        let cache = WatchCache::default();
        let intent = intent("q");
        let mut quota = ResourceQuota::default();
        quota.metadata.name = Some("quota".into());
        quota.metadata.resource_version = Some("7".into());
        let written = content(&quota.metadata, &quota.spec);
        cache.observe("ResourceQuota", "ns", "quota", seen(7, 0, written, 0));
        cache.verified("ResourceQuota", &meta("ns", "quota"), Some("7"), intent);
        // The quota controller records usage: a new version, same content.
        quota.metadata.resource_version = Some("8".into());
        quota.status = Some(k8s_openapi::api::core::v1::ResourceQuotaStatus::default());
        quota.metadata.managed_fields = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry::default(),
        ]);
        assert_eq!(
            content(&quota.metadata, &quota.spec),
            written,
            "status and version are not content"
        );
        cache.observe(
            "ResourceQuota",
            "ns",
            "quota",
            seen(8, 0, content(&quota.metadata, &quota.spec), 0),
        );
        assert!(cache.unchanged("ResourceQuota", "ns", "quota", intent));
        // Someone changes a label: read it.
        quota.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        let observe = |version, quota: &ResourceQuota| {
            cache.observe(
                "ResourceQuota",
                "ns",
                "quota",
                seen(version, 0, content(&quota.metadata, &quota.spec), 0),
            );
        };
        observe(9, &quota);
        assert!(!cache.unchanged("ResourceQuota", "ns", "quota", intent));
        // ...and a status update after it does not make it trusted again.
        observe(10, &quota);
        assert!(!cache.unchanged("ResourceQuota", "ns", "quota", intent));
        // Metadata-only kinds (content 0) never advance.
        cache.observe("Role", "ns", "r", seen(3, 0, 0, 0));
        cache.verified("Role", &meta("ns", "r"), Some("3"), intent);
        cache.observe("Role", "ns", "r", seen(4, 0, 0, 0));
        assert!(!cache.unchanged("Role", "ns", "r", intent));
    }

    #[test]
    fn a_relist_forgets_what_vanished_meanwhile() {
        let cache = WatchCache::default();
        let intent = intent("x");
        for name in ["a", "b"] {
            cache.observe("Role", "ns", name, seen(5, 0, 0, 0));
            cache.verified("Role", &meta("ns", name), Some("5"), intent);
        }
        cache.observe("Service", "ns", "a", seen(5, 0, 0, 0));
        cache.relist_begins("Role");
        cache.observe("Role", "ns", "a", seen(5, 0, 0, 0));
        cache.relist_done("Role");
        assert!(cache.unchanged("Role", "ns", "a", intent));
        assert!(
            !cache.unchanged("Role", "ns", "b", intent),
            "gone while the watch was down"
        );
        assert_eq!(cache.ready_replicas("ns", "a"), None, "not a StatefulSet");
    }

    #[test]
    fn only_a_listed_kind_knows_what_is_absent() {
        let cache = WatchCache::default();
        assert!(!cache.absent("Role", "ns", "a"), "not listed: unknown");
        cache.relist_begins("Role");
        cache.observe("Role", "ns", "a", seen(5, 0, 0, 0));
        cache.relist_done("Role");
        assert!(!cache.absent("Role", "ns", "a"));
        assert!(cache.absent("Role", "ns", "b"));
        assert!(!cache.absent("Service", "ns", "b"), "another kind");
        // Applied but not seen yet by the watch: still absent as far as it knows.
        cache.verified("Role", &meta("ns", "b"), Some("6"), intent("x"));
        assert!(cache.absent("Role", "ns", "b"));
        cache.forget("Role", "ns", "a");
        assert!(cache.absent("Role", "ns", "a"));
    }

    #[test]
    fn versions_that_are_not_numbers_are_never_trusted() {
        let cache = WatchCache::default();
        let intent = intent("x");
        cache.verified("Role", &meta("ns", "a"), Some("opaque"), intent);
        cache.observe("Role", "ns", "a", seen(version(Some("opaque")), 0, 0, 0));
        assert!(!cache.unchanged("Role", "ns", "a", intent));
    }
}
