//! Writes: create, update, patch (merge, strategic, JSON, apply), delete,
//! with validation, generation, status-subresource and ownership rules.

use std::sync::Arc;

use enclave::validation::CrdValidator;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use super::{
    FOREGROUND, PatchType, State, Store, WriteOptions, finalizers, lock, meta_str, new_uid, now,
    obj_key, random_hex, res_key, spec_part,
};
use crate::{
    error::ApiError,
    fields::{self, Managers},
    resources::{self, Resource},
};

impl Store {
    /// A custom resource as it is stored: defaults filled in, and unless
    /// the write is strict, undeclared fields dropped.
    fn shape(st: &State, res: &Resource, object: Value, strict: bool) -> Value {
        match st.validators.get(&res_key(res)) {
            Some(validator) => validator.default_and_prune(&object, !strict),
            None => object,
        }
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
        let crd = format!(
            "apiextensions.k8s.io/customresourcedefinitions//{}.{}",
            res.plural, res.group
        );
        if st
            .objects
            .get(&crd)
            .is_some_and(|e| e.object["metadata"].get("deletionTimestamp").is_some())
        {
            let mut err = ApiError::method_not_allowed();
            err.message =
                "create not allowed while custom resource definition is terminating".into();
            return Err(err);
        }
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
        let mut object = Self::shape(&st, res, object, opts.strict);
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
        let owned = object["metadata"].get("ownerReferences").is_some();
        let out = self.commit(&mut st, res, key, object, managers, "ADDED");
        if owned {
            // An object whose owners are already gone is collected, as the
            // garbage collector does on a cluster.
            self.settle(&mut st);
        }
        Ok(out)
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
        let mut new = Self::shape(st, res, new, opts.strict);
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
        if deleting || out["metadata"].get("ownerReferences").is_some() {
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
