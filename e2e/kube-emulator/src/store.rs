//! The emulator's state and every Kubernetes rule applied to it. One mutex
//! guards it: requests are short and the emulator serves tests, so
//! serialising writes keeps the rules simple and resourceVersions total.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use enclave::validation::CrdValidator;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::{
    error::ApiError,
    fields::{self, Managers},
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

    /// Requests so far, by `verb resource manager`.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.state).counters.clone()
    }

    /// Validates built-in kinds against the official schemas from now on.
    pub fn set_builtin_schemas(&mut self, schemas: crate::builtin_schemas::BuiltinSchemas) {
        self.builtin = Some(schemas);
    }

    /// TokenRequest: a token for ServiceAccount `ns/name`.
    pub fn token_request(&self, ns: &str, name: &str, request: &Value) -> Result<Value, ApiError> {
        let sa_res = self
            .resource("", "v1", "serviceaccounts")
            .ok_or_else(|| ApiError::not_found("resource", "serviceaccounts"))?;
        let sa = self.get(&sa_res, Some(ns), name)?;
        let uid = meta_str(&sa, "uid").unwrap_or_default();
        let audiences: Vec<String> = request["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .filter(|a: &Vec<String>| !a.is_empty())
            .unwrap_or_else(|| vec![crate::tokens::ISSUER.to_owned()]);
        let seconds = request["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(3600);
        let (token, exp) = self.signer.mint(ns, name, uid, &audiences, seconds)?;
        let expiration = jiff::Timestamp::from_second(exp)
            .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let mut out = request.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenRequest");
        out["status"] = json!({"token": token, "expirationTimestamp": expiration});
        Ok(out)
    }

    /// TokenReview: who `spec.token` is, if anyone.
    pub fn token_review(&self, request: &Value) -> Value {
        let token = request["spec"]["token"].as_str().unwrap_or_default();
        let audiences: Vec<String> = request["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let status = match self.signer.verify(token, &audiences) {
            Ok(claims) => {
                let k = &claims["kubernetes.io"];
                let (ns, name, uid) = (
                    k["namespace"].as_str().unwrap_or_default(),
                    k["serviceaccount"]["name"].as_str().unwrap_or_default(),
                    k["serviceaccount"]["uid"].as_str().unwrap_or_default(),
                );
                // The ServiceAccount must still exist, with the same uid.
                let live = self
                    .resource("", "v1", "serviceaccounts")
                    .and_then(|r| self.get(&r, Some(ns), name).ok())
                    .is_some_and(|sa| meta_str(&sa, "uid") == Some(uid));
                if live {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": format!("system:serviceaccount:{ns}:{name}"),
                            "uid": uid,
                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        },
                        "audiences": if audiences.is_empty() { claims["aud"].clone() } else { json!(audiences) },
                    })
                } else {
                    json!({"authenticated": false, "error": "the service account no longer exists"})
                }
            }
            Err(error) => json!({"authenticated": false, "error": error}),
        };
        let mut out = request.clone();
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        out["kind"] = json!("TokenReview");
        out["status"] = status;
        out
    }

    /// From now on lists answer with what is stored now (and this
    /// resourceVersion) while writes go on: a stale view, as a lagging cache
    /// or API server would give. `thaw` ends it.
    pub fn freeze_lists(&self) {
        let mut st = lock(&self.state);
        let snapshot = st
            .objects
            .iter()
            .map(|(k, e)| (k.clone(), e.object.clone()))
            .collect();
        st.frozen = Some((snapshot, st.rv));
    }

    /// Lists answer with the current state again.
    pub fn thaw(&self) {
        lock(&self.state).frozen = None;
    }

    /// Ends every open watch stream (clients must re-watch).
    pub fn cut_watches(&self) {
        let _ = self.events.send(Arc::new(Event {
            rv: u64::MAX,
            resource: String::new(),
            namespace: None,
            kind: "CUT",
            object: Value::Null,
        }));
    }

    /// Forgets the event history, so watches from any earlier resourceVersion get 410.
    pub fn compact(&self) {
        lock(&self.state).history.clear();
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

    fn validate(
        &self,
        st: &State,
        res: &Resource,
        object: &Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let name = meta_str(object, "name").unwrap_or_default();
        if let Some(schemas) = &self.builtin
            && !st.validators.contains_key(&res_key(res))
        {
            let problems = schemas.validate(res, object);
            if !problems.is_empty() {
                return Err(ApiError::invalid(&res.kind, name, problems));
            }
        }
        if let Some(validator) = st.validators.get(&res_key(res)) {
            let problems = validator.validate(object, old);
            if !problems.is_empty() {
                return Err(ApiError::invalid(
                    &res.kind,
                    name,
                    problems.into_iter().map(|p| (p.path, p.message)).collect(),
                ));
            }
        }
        Ok(())
    }

    /// Registers the kind a CRD defines, with its validator.
    fn install_crd(st: &mut State, crd: &Value) -> Result<(), ApiError> {
        let name = meta_str(crd, "name").unwrap_or_default().to_owned();
        let typed: CustomResourceDefinition = serde_json::from_value(crd.clone()).map_err(|e| {
            ApiError::invalid(
                "CustomResourceDefinition",
                &name,
                vec![(String::new(), e.to_string())],
            )
        })?;
        let validator = CrdValidator::new(&typed).map_err(|e| {
            ApiError::invalid(
                "CustomResourceDefinition",
                &name,
                vec![("spec.versions".into(), e)],
            )
        })?;
        let res = resources::from_crd(crd).ok_or_else(|| {
            ApiError::invalid(
                "CustomResourceDefinition",
                &name,
                vec![("spec".into(), "no served version".into())],
            )
        })?;
        st.resources
            .retain(|r| !(r.group == res.group && r.plural == res.plural));
        st.validators.insert(res_key(&res), Arc::new(validator));
        st.resources.push(res);
        Ok(())
    }

    fn check_namespace(st: &State, res: &Resource, ns: Option<&str>) -> Result<(), ApiError> {
        let Some(ns) = ns.filter(|_| res.namespaced) else {
            return Ok(());
        };
        match st.objects.get(&format!("/namespaces//{ns}")) {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(e) if e.object["metadata"].get("deletionTimestamp").is_some() => {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// POST.
    pub fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut object: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = lock(&self.state);
        if !object.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if object["metadata"].is_null() {
            object["metadata"] = json!({});
        }
        let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
            (Some(n), _) => n.to_owned(),
            (None, Some(prefix)) => format!("{prefix}{}", &random_hex(3)[..5]),
            (None, None) => {
                return Err(ApiError::invalid(
                    &res.kind,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "name or generateName is required".into(),
                    )],
                ));
            }
        };
        let ns = if res.namespaced {
            Some(
                ns.or(meta_str(&object, "namespace"))
                    .ok_or_else(|| ApiError::bad_request("a namespace is required"))?
                    .to_owned(),
            )
        } else {
            None
        };
        Self::check_namespace(&st, res, ns.as_deref())?;
        let key = obj_key(res, ns.as_deref(), &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&res.qualified(), &name));
        }
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind);
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if let Some(ns) = &ns {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(new_uid());
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        if res.status && !opts.status && !res.group.is_empty() {
            // Custom resources with a status subresource ignore status on create.
            if let Some(m) = object.as_object_mut() {
                m.remove("status");
            }
        }
        if res.kind == "Namespace" {
            object["status"] = json!({"phase": "Active"});
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        self.validate(&st, res, &object, None)?;
        if res.kind == "CustomResourceDefinition" {
            Self::install_crd(&mut st, &object)?;
            // Served at once, as a real server reports shortly after.
            let names = object["spec"]["names"].clone();
            object["status"] = json!({
                "acceptedNames": names,
                "storedVersions": [object["spec"]["versions"][0]["name"].clone()],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
                ],
            });
        }
        let mut managers = Managers::new();
        fields::record_update(
            None,
            &object,
            &mut managers,
            opts.manager.as_deref().unwrap_or("unknown"),
            opts.status,
        );
        Ok(self.commit(&mut st, res, key, object, managers, "ADDED"))
    }

    /// Writes `new` over the stored object (PUT, or the result of a PATCH).
    #[allow(clippy::too_many_arguments)] // all of it is the write; a struct would only rename it
    fn replace(
        &self,
        st: &mut State,
        res: &Resource,
        key: String,
        old: &Value,
        mut new: Value,
        managers: Managers,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let name = meta_str(old, "name").unwrap_or_default().to_owned();
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && rv != meta_str(old, "resourceVersion").unwrap_or_default()
        {
            return Err(ApiError::conflict(&res.qualified(), &name));
        }
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        // Identity and system fields are the server's.
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        if res.status {
            if opts.status {
                // A status write changes status only.
                let status = new.get("status").cloned();
                let mut kept = old.clone();
                match status {
                    Some(s) => kept["status"] = s,
                    None => {
                        if let Some(m) = kept.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                new = kept;
            } else {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        if spec_part(&new) != spec_part(old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if new == *old {
            // Nothing changed: no new resourceVersion, no event.
            return Ok(old.clone());
        }
        self.validate(st, res, &new, Some(old))?;
        if res.kind == "CustomResourceDefinition" {
            Self::install_crd(st, &new)?;
        }
        let deleting =
            new["metadata"].get("deletionTimestamp").is_some() && finalizers(&new).is_empty();
        let out = self.commit(
            st,
            res,
            key,
            new,
            managers,
            if deleting { "DELETED" } else { "MODIFIED" },
        );
        if deleting {
            self.settle(st);
        }
        Ok(out)
    }

    /// PUT.
    pub fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        new: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = lock(&self.state);
        let key = obj_key(res, ns, name);
        let entry = st
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        let (old, mut managers) = (entry.object.clone(), entry.managers.clone());
        fields::record_update(
            Some(&old),
            &new,
            &mut managers,
            opts.manager.as_deref().unwrap_or("unknown"),
            opts.status,
        );
        self.replace(&mut st, res, key, &old, new, managers, opts)
    }

    /// PATCH (and apply, which may create).
    pub fn patch(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchType,
        body: &Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let key = obj_key(res, ns, name);
        let current = {
            let st = lock(&self.state);
            st.objects
                .get(&key)
                .map(|e| (e.object.clone(), e.managers.clone()))
        };
        let Some((old, mut managers)) = current else {
            if kind != PatchType::Apply {
                return Err(ApiError::not_found(&res.qualified(), name));
            }
            let manager = opts
                .manager
                .clone()
                .ok_or_else(|| ApiError::bad_request("fieldManager is required for apply patch"))?;
            let mut object = body.clone();
            object["metadata"]["name"] = json!(name);
            let created = self.create(res, ns, object, opts)?;
            // The applier owns exactly what it applied.
            let mut st = lock(&self.state);
            if let Some(entry) = st.objects.get_mut(&key) {
                entry.managers = Managers::from([(manager, fields::leaves(body, opts.status))]);
            }
            return Ok(created);
        };
        let manager = opts.manager.clone().unwrap_or_else(|| "unknown".into());
        let new = match kind {
            PatchType::Merge => {
                let mut new = old.clone();
                json_patch::merge(&mut new, body);
                fields::record_update(Some(&old), &new, &mut managers, &manager, opts.status);
                new
            }
            PatchType::Strategic => {
                let mut new = old.clone();
                fields::merge(&mut new, body);
                fields::record_update(Some(&old), &new, &mut managers, &manager, opts.status);
                new
            }
            PatchType::Json => {
                let mut operations: json_patch::Patch = serde_json::from_value(body.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                // As the API server does: a `test` for null on a missing path
                // succeeds (kube-runtime's finalizer helper relies on it).
                operations.0.retain(|op| match op {
                    json_patch::PatchOperation::Test(t) => {
                        !(t.value.is_null() && old.pointer(t.path.as_str()).is_none())
                    }
                    _ => true,
                });
                let mut new = old.clone();
                json_patch::patch(&mut new, &operations).map_err(|e| json_patch_error(&e))?;
                fields::record_update(Some(&old), &new, &mut managers, &manager, opts.status);
                new
            }
            PatchType::Apply => {
                if opts.manager.is_none() {
                    return Err(ApiError::bad_request(
                        "fieldManager is required for apply patch",
                    ));
                }
                let mut applied = body.clone();
                if let Some(m) = applied.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                match fields::apply(
                    Some(&old),
                    &mut managers,
                    &manager,
                    &applied,
                    opts.force,
                    opts.status,
                ) {
                    Ok(new) => new,
                    Err(conflicts) => {
                        let mut e = ApiError::conflict(&res.qualified(), name);
                        e.message = format!(
                            "Apply failed with {} conflict(s): {}",
                            conflicts.len(),
                            conflicts
                                .iter()
                                .map(|(f, m)| format!("conflict with \"{m}\": {f}"))
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                        e.causes = conflicts
                            .into_iter()
                            .map(|(f, m)| (f, format!("conflict with \"{m}\"")))
                            .collect();
                        return Err(e);
                    }
                }
            }
        };
        let mut st = lock(&self.state);
        // The object may have changed while the patch was computed.
        let now = st.objects.get(&key).map(|e| e.object.clone());
        if now.as_ref() != Some(&old) {
            return Err(ApiError::conflict(&res.qualified(), name));
        }
        let mut new = new;
        if (kind != PatchType::Apply || meta_str(body, "resourceVersion").is_none())
            && let Some(m) = new["metadata"].as_object_mut()
        {
            m.remove("resourceVersion");
        }
        if let Some(rv) = meta_str(body, "resourceVersion") {
            new["metadata"]["resourceVersion"] = json!(rv);
        }
        self.replace(&mut st, res, key, &old, new, managers, opts)
    }

    /// DELETE.
    pub fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        propagation: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut st = lock(&self.state);
        let key = obj_key(res, ns, name);
        let entry = st
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&res.qualified(), name))?;
        let object = entry.object.clone();
        let mut object = object;
        match propagation {
            Some("Orphan") => {
                let uid = meta_str(&object, "uid").unwrap_or_default().to_owned();
                self.orphan_dependents(&mut st, &uid);
            }
            // The owner stays, marked, until its dependents are gone.
            Some("Foreground") if object["metadata"].get("deletionTimestamp").is_none() => {
                let mut list = finalizers(&object);
                list.push(FOREGROUND.to_owned());
                object["metadata"]["finalizers"] = json!(list);
            }
            _ => {}
        }
        let out = self.delete_one(&mut st, res, key, object);
        self.settle(&mut st);
        Ok(out)
    }

    /// Marks for deletion (finalizers, namespaces) or removes one object.
    fn delete_one(&self, st: &mut State, res: &Resource, key: String, mut object: Value) -> Value {
        let managers = st
            .objects
            .get(&key)
            .map(|e| e.managers.clone())
            .unwrap_or_default();
        let is_namespace = res.kind == "Namespace";
        if !finalizers(&object).is_empty() || is_namespace {
            if object["metadata"].get("deletionTimestamp").is_some() {
                return object;
            }
            object["metadata"]["deletionTimestamp"] = json!(now());
            if is_namespace {
                object["status"]["phase"] = json!("Terminating");
            }
            return self.commit(st, res, key, object, managers, "MODIFIED");
        }
        self.commit(st, res, key, object, managers, "DELETED")
    }

    fn orphan_dependents(&self, st: &mut State, owner_uid: &str) {
        let dependents: Vec<(String, Value)> = st
            .objects
            .iter()
            .filter(|(_, e)| {
                e.object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid))
            })
            .map(|(k, e)| (k.clone(), e.object.clone()))
            .collect();
        for (key, mut object) in dependents {
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != owner_uid);
            }
            let Some(res) = Self::resource_of(st, &object) else {
                continue;
            };
            let managers = st
                .objects
                .get(&key)
                .map(|e| e.managers.clone())
                .unwrap_or_default();
            self.commit(st, &res, key, object, managers, "MODIFIED");
        }
    }

    fn resource_of(st: &State, object: &Value) -> Option<Resource> {
        let api_version = object["apiVersion"].as_str()?;
        let kind = object["kind"].as_str()?;
        st.resources
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .cloned()
    }

    /// The namespace and garbage collectors: runs until nothing changes.
    fn settle(&self, st: &mut State) {
        loop {
            let mut work: Vec<(String, Value)> = Vec::new();
            let uids: std::collections::HashSet<String> = st
                .objects
                .values()
                .filter_map(|e| meta_str(&e.object, "uid").map(str::to_owned))
                .collect();
            let terminating: Vec<String> = st
                .objects
                .iter()
                .filter(|(k, e)| {
                    k.starts_with("/namespaces//")
                        && e.object["metadata"].get("deletionTimestamp").is_some()
                })
                .filter_map(|(_, e)| meta_str(&e.object, "name").map(str::to_owned))
                .collect();
            let mut empty_namespaces = Vec::new();
            for ns in &terminating {
                let mut any = false;
                for (key, e) in &st.objects {
                    if meta_str(&e.object, "namespace") == Some(ns.as_str())
                        && !key.starts_with("/namespaces//")
                    {
                        any = true;
                        if e.object["metadata"].get("deletionTimestamp").is_none() {
                            work.push((key.clone(), e.object.clone()));
                        }
                    }
                }
                if !any {
                    empty_namespaces.push(ns.clone());
                }
            }
            // Background garbage collection: every owner gone → delete.
            for (key, e) in &st.objects {
                if let Some(refs) = e.object["metadata"]["ownerReferences"].as_array()
                    && !refs.is_empty()
                    && refs
                        .iter()
                        .all(|r| r["uid"].as_str().is_none_or(|u| !uids.contains(u)))
                    && e.object["metadata"].get("deletionTimestamp").is_none()
                    && !work.iter().any(|(k, _)| k == key)
                {
                    work.push((key.clone(), e.object.clone()));
                }
            }
            // Foreground deletion: dependents first, then the owner's finalizer goes.
            let mut released = Vec::new();
            let mut released_any = false;
            for (key, e) in &st.objects {
                if e.object["metadata"].get("deletionTimestamp").is_none()
                    || !finalizers(&e.object).iter().any(|f| f == FOREGROUND)
                {
                    continue;
                }
                let uid = meta_str(&e.object, "uid").unwrap_or_default();
                let dependents: Vec<(String, Value)> = st
                    .objects
                    .iter()
                    .filter(|(_, d)| {
                        d.object["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                    })
                    .map(|(k, d)| (k.clone(), d.object.clone()))
                    .collect();
                if dependents.is_empty() {
                    released.push((key.clone(), e.object.clone()));
                } else {
                    for (k, d) in dependents {
                        if d["metadata"].get("deletionTimestamp").is_none()
                            && !work.iter().any(|(w, _)| *w == k)
                        {
                            work.push((k, d));
                        }
                    }
                }
            }
            for (key, mut object) in released {
                let rest: Vec<String> = finalizers(&object)
                    .into_iter()
                    .filter(|f| f != FOREGROUND)
                    .collect();
                let Some(res) = Self::resource_of(st, &object) else {
                    continue;
                };
                let managers = st
                    .objects
                    .get(&key)
                    .map(|e| e.managers.clone())
                    .unwrap_or_default();
                let kind = if rest.is_empty() {
                    "DELETED"
                } else {
                    "MODIFIED"
                };
                object["metadata"]["finalizers"] = json!(rest);
                self.commit(st, &res, key, object, managers, kind);
                released_any = true;
            }
            if work.is_empty() && empty_namespaces.is_empty() && !released_any {
                return;
            }
            for (key, object) in work {
                if let Some(res) = Self::resource_of(st, &object) {
                    self.delete_one(st, &res, key, object);
                }
            }
            for ns in empty_namespaces {
                let key = format!("/namespaces//{ns}");
                if let (Some(e), Some(res)) = (
                    st.objects.get(&key).map(|e| e.object.clone()),
                    st.resources.iter().find(|r| r.kind == "Namespace").cloned(),
                ) {
                    self.commit(st, &res, key, e, Managers::new(), "DELETED");
                }
            }
        }
    }

    /// Events after `rv` for `res` (and `ns`), or 410 if they were forgotten;
    /// with `rv` 0, synthetic ADDED events for everything now stored.
    pub fn since(
        &self,
        res: &Resource,
        ns: Option<&str>,
        rv: Option<u64>,
    ) -> Result<Backlog, ApiError> {
        let st = lock(&self.state);
        let receiver = self.events.subscribe();
        let rk = res_key(res);
        let matches =
            |e: &Event| e.resource == rk && ns.is_none_or(|n| e.namespace.as_deref() == Some(n));
        let backlog = match rv {
            None | Some(0) => {
                let prefix = match ns {
                    Some(ns) => format!("{rk}/{ns}/"),
                    None => format!("{rk}/"),
                };
                st.objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, e)| {
                        Arc::new(Event {
                            rv: e.object["metadata"]["resourceVersion"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0),
                            resource: rk.clone(),
                            namespace: meta_str(&e.object, "namespace").map(str::to_owned),
                            kind: "ADDED",
                            object: e.object.clone(),
                        })
                    })
                    .collect()
            }
            Some(rv) => {
                let oldest = st.history.front().map_or(st.rv + 1, |e| e.rv);
                if rv < st.rv && rv + 1 < oldest {
                    return Err(ApiError::gone(rv));
                }
                st.history
                    .iter()
                    .filter(|e| e.rv > rv && matches(e))
                    .cloned()
                    .collect()
            }
        };
        Ok((backlog, receiver, st.rv))
    }
}

fn json_patch_error(e: &json_patch::PatchError) -> ApiError {
    match e.kind {
        json_patch::PatchErrorKind::TestFailed => {
            let mut err = ApiError::injected(422, None);
            err.reason = "Invalid";
            err.message =
                format!("the server rejected our request due to an error in our request: {e}");
            err
        }
        _ => ApiError::bad_request(format!("the JSON patch could not be applied: {e}")),
    }
}

/// An empty metadata map, for bookmarks.
pub fn bookmark(res: &Resource, rv: u64, initial_end: bool) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    if initial_end {
        meta.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    json!({"type": "BOOKMARK", "object": {"apiVersion": res.api_version(), "kind": res.kind, "metadata": meta}})
}
