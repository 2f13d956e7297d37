//! The emulator's state and every Kubernetes rule applied to it. One mutex
//! guards it: requests are short and the emulator serves tests, so
//! serialising writes keeps the rules simple and resourceVersions total.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use enclave::validation::CrdValidator;
use serde_json::{Value, json};
use tokio::sync::broadcast;

mod collect;
mod tokens;
mod watch;
mod writes;

pub use watch::bookmark;

use crate::{
    error::ApiError,
    fields::Managers,
    resources::{self, Resource},
    selectors::{FieldSelector, LabelSelector},
};

/// Finalizer of an owner being deleted in the foreground.
const FOREGROUND: &str = "foregroundDeletion";

/// Events kept for watches from an older resourceVersion; older → 410.
const HISTORY: usize = 50_000;

/// One change, as watches see it.
#[derive(Clone, Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// `group/plural`.
    pub resource: String,
    /// Namespace, for namespaced kinds.
    pub namespace: Option<String>,
    /// `ADDED`, `MODIFIED`, `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before it, for DELETED, with the new rv).
    pub object: Value,
}

/// A fault to inject into matching requests.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Fault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`; any when `None`.
    pub verb: Option<String>,
    /// Plural, e.g. `statefulsets`; any when `None`.
    pub resource: Option<String>,
    /// Object name; any when `None`.
    pub name: Option<String>,
    /// How many more requests it hits.
    pub remaining: u32,
    /// HTTP status to answer with (409, 429, 500, …).
    pub status: u16,
    /// Retry-After seconds (429).
    pub retry_after: Option<u64>,
}

struct Entry {
    object: Value,
    managers: Managers,
}

struct State {
    rv: u64,
    resources: Vec<Resource>,
    validators: HashMap<String, Arc<CrdValidator>>,
    objects: BTreeMap<String, Entry>,
    history: VecDeque<Arc<Event>>,
    counters: BTreeMap<String, u64>,
    clients: BTreeMap<String, u64>,
    faults: Vec<Fault>,
    /// While set, lists answer from this snapshot (a stale view).
    frozen: Option<(BTreeMap<String, Value>, u64)>,
}

/// The emulator's state.
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    signer: crate::tokens::Signer,
    builtin: Option<crate::builtin_schemas::BuiltinSchemas>,
}

fn res_key(res: &Resource) -> String {
    format!("{}/{}", res.group, res.plural)
}

fn obj_key(res: &Resource, ns: Option<&str>, name: &str) -> String {
    format!("{}/{}/{}", res_key(res), ns.unwrap_or_default(), name)
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Hex digits from the standard library's randomly seeded hasher: unique
/// enough for uids and generated names in tests, not for secrets.
fn random_hex(bytes: usize) -> String {
    use std::{
        fmt::Write as _,
        hash::{BuildHasher, Hasher},
    };
    let mut out = String::new();
    while out.len() < bytes * 2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(out.len());
        let _ = write!(out, "{:016x}", h.finish());
    }
    out.truncate(bytes * 2);
    out
}

fn new_uid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Everything but metadata and status: what `generation` counts.
fn spec_part(o: &Value) -> Value {
    let mut o = o.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    o
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn meta_str<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o["metadata"][field].as_str()
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Events to replay, the live feed, and the current resourceVersion.
pub type Backlog = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>, u64);

/// What a write request carries besides the object.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// `fieldManager`.
    pub manager: Option<String>,
    /// `force` (apply).
    pub force: bool,
    /// Writing the status subresource.
    pub status: bool,
    /// Unknown fields are errors (`fieldValidation=Strict`, and always for
    /// apply); otherwise they are dropped, as the API server does.
    pub strict: bool,
}

/// The kinds of PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (merged like apply: lists by key).
    Strategic,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`.
    Apply,
}

impl Store {
    /// An empty cluster with the built-in kinds and the `default` and
    /// `kube-system` namespaces. Fails only if no signing key can be made.
    pub fn new() -> Result<Self, String> {
        let (events, _) = broadcast::channel(16_384);
        let store = Self {
            state: Mutex::new(State {
                rv: 0,
                resources: resources::builtins(),
                validators: HashMap::new(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                counters: BTreeMap::new(),
                clients: BTreeMap::new(),
                faults: Vec::new(),
                frozen: None,
            }),
            events,
            signer: crate::tokens::Signer::new()?,
            builtin: None,
        };
        for ns in ["default", "kube-system"] {
            let _ = store.create_namespaced(
                "namespaces",
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            );
        }
        Ok(store)
    }

    fn create_namespaced(
        &self,
        plural: &str,
        ns: Option<&str>,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let res = self
            .resource("", "v1", plural)
            .ok_or_else(|| ApiError::not_found("resource", plural))?;
        self.create(&res, ns, obj, &WriteOptions::default())
    }

    /// Every served resource.
    pub fn resources(&self) -> Vec<Resource> {
        lock(&self.state).resources.clone()
    }

    /// The resource at `group`/`version`/`plural`.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        lock(&self.state)
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Subscribes to every future event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Counts a request and applies a matching fault, if any.
    pub fn admit(
        &self,
        verb: &str,
        resource: &str,
        name: Option<&str>,
        manager: Option<&str>,
    ) -> Result<(), ApiError> {
        let mut st = lock(&self.state);
        *st.counters
            .entry(format!("{verb} {resource} {}", manager.unwrap_or("-")))
            .or_default() += 1;
        let hit = st.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource)
                && f.name.as_deref().is_none_or(|n| Some(n) == name)
        });
        if let Some(fault) = hit {
            fault.remaining -= 1;
            return Err(ApiError::injected(fault.status, fault.retry_after));
        }
        Ok(())
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push(fault);
    }

    /// Counts a request of the client that presented bearer token `client`.
    pub fn count_client(&self, verb: &str, resource: &str, client: &str) {
        *lock(&self.state)
            .clients
            .entry(format!("{verb} {resource} {client}"))
            .or_default() += 1;
    }

    /// Requests so far, by `verb resource client` (the client's bearer
    /// token; `-` without one), so tests can tell processes apart.
    pub fn client_counters(&self) -> BTreeMap<String, u64> {
        lock(&self.state).clients.clone()
    }

    /// Requests so far, by `verb resource manager`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.state).counters.clone()
    }

    /// Validates built-in kinds against the official schemas from now on.
    pub fn set_builtin_schemas(&mut self, schemas: crate::builtin_schemas::BuiltinSchemas) {
        self.builtin = Some(schemas);
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).rv
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        lock(&self.state).objects.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn commit(
        &self,
        st: &mut State,
        res: &Resource,
        key: String,
        mut object: Value,
        managers: Managers,
        kind: &'static str,
    ) -> Value {
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let event = Arc::new(Event {
            rv: st.rv,
            resource: res_key(res),
            namespace: meta_str(&object, "namespace").map(str::to_owned),
            kind,
            object: object.clone(),
        });
        if kind == "DELETED" {
            st.objects.remove(&key);
        } else {
            st.objects.insert(
                key,
                Entry {
                    object: object.clone(),
                    managers,
                },
            );
        }
        st.history.push_back(Arc::clone(&event));
        if st.history.len() > HISTORY {
            st.history.pop_front();
        }
        let _ = self.events.send(event);
        object
    }

    /// GET one object.
    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let st = lock(&self.state);
        st.objects
            .get(&obj_key(res, ns, name))
            .map(|e| e.object.clone())
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))
    }

    /// LIST: items, the list's resourceVersion, and a continue token.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_from: Option<&str>,
    ) -> (Vec<Value>, u64, Option<String>) {
        let st = lock(&self.state);
        let prefix = match ns {
            Some(ns) => format!("{}/{ns}/", res_key(res)),
            None => format!("{}/", res_key(res)),
        };
        let start = continue_from.map_or_else(|| prefix.clone(), |c| format!("{c}\u{0}"));
        let (objects, rv): (Box<dyn Iterator<Item = (&String, &Value)>>, u64) =
            if let Some((snapshot, rv)) = &st.frozen {
                (Box::new(snapshot.range(start..)), *rv)
            } else {
                (
                    Box::new(st.objects.range(start..).map(|(k, e)| (k, &e.object))),
                    st.rv,
                )
            };
        let mut items: Vec<(String, Value)> = Vec::new();
        let mut more = false;
        for (key, object) in objects {
            if !key.starts_with(&prefix) {
                break;
            }
            if !labels.matches(object) || !fields.matches(object) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                break;
            }
            items.push((key.clone(), object.clone()));
        }
        let cont = if more {
            items.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        (items.into_iter().map(|(_, v)| v).collect(), rv, cont)
    }
}
