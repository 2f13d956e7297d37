//! The namespace and garbage collectors, and deletion itself.

use serde_json::{Value, json};

use super::{FOREGROUND, State, Store, finalizers, meta_str, now, res_key};

/// Keys of stored CustomResourceDefinitions start so.
const CRD_PREFIX: &str = "apiextensions.k8s.io/customresourcedefinitions/";
use crate::{fields::Managers, resources::Resource};

impl Store {
    /// The field owners of the object at `key` (none if it is gone).
    fn managers_of(st: &State, key: &str) -> Managers {
        st.objects
            .get(key)
            .map(|e| e.managers.clone())
            .unwrap_or_default()
    }

    /// Marks for deletion (finalizers, namespaces) or removes one object.
    pub(super) fn delete_one(
        &self,
        st: &mut State,
        res: &Resource,
        key: String,
        mut object: Value,
    ) -> Value {
        let managers = Self::managers_of(st, &key);
        let is_namespace = res.kind == "Namespace";
        // Namespaces and CRDs terminate: their contents go first.
        let terminates = is_namespace || res.kind == "CustomResourceDefinition";
        if !finalizers(&object).is_empty() || terminates {
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

    /// Keys and objects whose ownerReferences name `owner_uid`.
    fn dependents_of(st: &State, owner_uid: &str) -> Vec<(String, Value)> {
        st.objects
            .iter()
            .filter(|(_, e)| {
                e.object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid))
            })
            .map(|(k, e)| (k.clone(), e.object.clone()))
            .collect()
    }

    pub(super) fn orphan_dependents(&self, st: &mut State, owner_uid: &str) {
        for (key, mut object) in Self::dependents_of(st, owner_uid) {
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"] != owner_uid);
            }
            let Some(res) = Self::resource_of(st, &object) else {
                continue;
            };
            let managers = Self::managers_of(st, &key);
            self.commit(st, &res, key, object, managers, "MODIFIED");
        }
    }

    pub(super) fn resource_of(st: &State, object: &Value) -> Option<Resource> {
        let api_version = object["apiVersion"].as_str()?;
        let kind = object["kind"].as_str()?;
        st.resources
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .cloned()
    }

    /// The namespace and garbage collectors: runs until nothing changes.
    pub(super) fn settle(&self, st: &mut State) {
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
            // A deleted CRD: its instances are deleted (their finalizers
            // honoured), then the CRD and its resource go.
            let mut gone_crds = Vec::new();
            for (key, e) in &st.objects {
                if !key.starts_with(CRD_PREFIX)
                    || e.object["metadata"].get("deletionTimestamp").is_none()
                    || !finalizers(&e.object).is_empty()
                {
                    continue;
                }
                let Some(res) = crate::resources::from_crd(&e.object) else {
                    continue;
                };
                let prefix = format!("{}/", res_key(&res));
                let mut any = false;
                for (k, instance) in &st.objects {
                    if k.starts_with(&prefix) {
                        any = true;
                        if instance.object["metadata"]
                            .get("deletionTimestamp")
                            .is_none()
                            && !work.iter().any(|(w, _)| w == k)
                        {
                            work.push((k.clone(), instance.object.clone()));
                        }
                    }
                }
                if !any {
                    gone_crds.push((key.clone(), e.object.clone(), res));
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
                let dependents = Self::dependents_of(st, uid);
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
                let managers = Self::managers_of(st, &key);
                let kind = if rest.is_empty() {
                    "DELETED"
                } else {
                    "MODIFIED"
                };
                object["metadata"]["finalizers"] = json!(rest);
                self.commit(st, &res, key, object, managers, kind);
                released_any = true;
            }
            if work.is_empty()
                && empty_namespaces.is_empty()
                && !released_any
                && gone_crds.is_empty()
            {
                return;
            }
            for (key, crd, res) in gone_crds {
                if let Some(crd_res) = Self::resource_of(st, &crd) {
                    self.commit(st, &crd_res, key, crd, Managers::new(), "DELETED");
                }
                st.resources
                    .retain(|r| !(r.group == res.group && r.plural == res.plural));
                st.validators.remove(&res_key(&res));
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
}
