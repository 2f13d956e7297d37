//! `enclave plan`: what the given tenants imply, without a cluster.
//!
//! Input is validated as the API server would (schema, unknown fields, CEL)
//! and as the operator would (a Developer needs its Company's namespace, no
//! two Companies share a namespace); any problem means no plan at all.

mod load;
mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use kube::CustomResourceExt;
use serde_json::Value;

pub use load::{Document, load};
pub use render::{all_objects, render_json, render_summary, render_yaml};

use crate::{
    builders::{self, CompanyContext, CompanyPlan, DeveloperContext, DeveloperPlan},
    config::OperatorConfig,
    crd::{Company, Developer, GROUP, VERSION},
    names::CompanyNames,
    posix_ids,
    validation::CrdValidator,
};

/// Stands in for the uid the API server assigns, in names derived from it.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// One problem with the input, located by file, document and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub source: String,
    /// 1-based document index in the file, when the problem is in one.
    pub document: Option<usize>,
    /// Dotted field path, when the problem is at a field.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    fn file(source: &Path, message: impl Into<String>) -> Self {
        Self {
            source: source.display().to_string(),
            document: None,
            path: String::new(),
            message: message.into(),
        }
    }

    fn at(doc: &Document, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source: doc.source.clone(),
            document: Some(doc.index),
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(index) = self.document {
            write!(f, ": document {index}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What one company implies, with its developers.
#[derive(Clone, Debug)]
pub struct TenantPlan {
    /// The company's name.
    pub name: String,
    /// The company's own objects, policies and actions.
    pub company: CompanyPlan,
    /// Each developer's, by name.
    pub developers: Vec<DeveloperPlan>,
}

impl TenantPlan {
    /// Every Kubernetes object of the tenant: the company's, then each
    /// developer's.
    pub fn objects(&self) -> impl Iterator<Item = &crate::builders::KubeObject> {
        self.company
            .objects
            .iter()
            .chain(self.developers.iter().flat_map(|d| d.objects.iter()))
    }
}

/// What all given tenants imply.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// One per Company, by name.
    pub tenants: Vec<TenantPlan>,
}

struct Located<T> {
    doc: Document,
    object: T,
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(internal)`
fn internal(message: String) -> Vec<Problem> {
    vec![Problem {
        source: "enclave".into(),
        document: None,
        path: String::new(),
        message: format!("internal error: {message}; please report it"),
    }]
}

/// Validates the documents of `paths` and plans them.
pub fn plan_paths(paths: &[PathBuf], config: &OperatorConfig) -> Result<Plan, Vec<Problem>> {
    plan_documents(load(paths)?, config)
}

/// Validates `documents` and plans them.
pub fn plan_documents(
    documents: Vec<Document>,
    config: &OperatorConfig,
) -> Result<Plan, Vec<Problem>> {
    let company_validator = CrdValidator::new(&Company::crd()).map_err(internal)?;
    let developer_validator = CrdValidator::new(&Developer::crd()).map_err(internal)?;
    let api_version = format!("{GROUP}/{VERSION}");
    let mut problems = Vec::new();
    let mut companies: Vec<Located<Company>> = Vec::new();
    let mut developers: Vec<Located<Developer>> = Vec::new();

    for doc in documents {
        let Some(map) = doc.value.as_object() else {
            problems.push(Problem::at(
                &doc,
                "",
                "expected a Kubernetes object (a mapping with apiVersion and kind)",
            ));
            continue;
        };
        let version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
        let validator = match (version == api_version, kind) {
            (true, "Company") => &company_validator,
            (true, "Developer") => &developer_validator,
            _ if version.starts_with(&format!("{GROUP}/")) && version != api_version => {
                problems.push(Problem::at(
                    &doc,
                    "apiVersion",
                    format!("unsupported version {version:?}: use {api_version}"),
                ));
                continue;
            }
            _ => {
                problems.push(Problem::at(
                    &doc,
                    "kind",
                    format!("unknown kind {kind:?} (apiVersion {version:?}): enclave plan reads {api_version} Company and Developer resources"),
                ));
                continue;
            }
        };
        let found = validator.validate(&doc.value, None);
        if !found.is_empty() {
            problems.extend(
                found
                    .into_iter()
                    .map(|p| Problem::at(&doc, p.path, p.message)),
            );
            continue;
        }
        let value = crate::validation::without_nulls(&doc.value);
        if kind == "Company" {
            match serde_json::from_value::<Company>(value) {
                Ok(object) => companies.push(Located { doc, object }),
                Err(e) => problems.push(Problem::at(&doc, "", e.to_string())),
            }
        } else {
            match serde_json::from_value::<Developer>(value) {
                Ok(object) => developers.push(Located { doc, object }),
                Err(e) => problems.push(Problem::at(&doc, "", e.to_string())),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    resolve(companies, developers, config)
}

fn resolve(
    mut companies: Vec<Located<Company>>,
    mut developers: Vec<Located<Developer>>,
    config: &OperatorConfig,
) -> Result<Plan, Vec<Problem>> {
    let mut problems = Vec::new();
    companies.sort_by(|a, b| a.object.metadata.name.cmp(&b.object.metadata.name));
    developers.sort_by(|a, b| a.object.metadata.name.cmp(&b.object.metadata.name));
    for meta in companies
        .iter_mut()
        .map(|c| &mut c.object.metadata)
        .chain(developers.iter_mut().map(|d| &mut d.object.metadata))
    {
        meta.uid.get_or_insert_with(|| PLACEHOLDER_UID.to_owned());
    }

    // Company name and namespace are each claimed once.
    let mut by_name: BTreeMap<String, &Document> = BTreeMap::new();
    let mut by_namespace: BTreeMap<String, String> = BTreeMap::new();
    for c in &companies {
        let name = c.object.metadata.name.clone().unwrap_or_default();
        let names = CompanyNames::new(&name, c.object.spec.namespace.as_deref());
        if let Some(first) = by_name.get(&name) {
            problems.push(Problem::at(
                &c.doc,
                "metadata.name",
                format!(
                    "Company {name:?} is defined twice (also in {} document {})",
                    first.source, first.index
                ),
            ));
            continue;
        }
        by_name.insert(name.clone(), &c.doc);
        let ns = names.namespace().to_owned();
        if ns == config.operator_namespace {
            problems.push(Problem::at(
                &c.doc,
                "spec.namespace",
                format!("{ns:?} is the operator's own namespace"),
            ));
        } else if let Some(owner) = by_namespace.get(&ns) {
            problems.push(Problem::at(&c.doc, "spec.namespace", format!("namespace {ns:?} is already claimed by Company {owner:?}: each company needs its own namespace")));
        } else {
            by_namespace.insert(ns, name);
        }
    }

    // Every Developer belongs to exactly the Company that owns its namespace.
    let mut members: BTreeMap<String, Vec<&Located<Developer>>> = BTreeMap::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for d in &developers {
        let ns = d.object.metadata.namespace.clone().unwrap_or_default();
        let name = d.object.metadata.name.clone().unwrap_or_default();
        if !seen.insert((ns.clone(), name.clone())) {
            problems.push(Problem::at(
                &d.doc,
                "metadata.name",
                format!("Developer {ns}/{name} is defined twice"),
            ));
            continue;
        }
        match by_namespace.get(&ns) {
            Some(company) => members.entry(company.clone()).or_default().push(d),
            None => problems.push(Problem::at(
                &d.doc,
                "metadata.namespace",
                format!("no Company owns namespace {ns:?}: a Developer must live in its company's namespace (Company.spec.namespace, default company-<name>)"),
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let mut plan = Plan::default();
    for c in &companies {
        let name = c.object.metadata.name.clone().unwrap_or_default();
        let ctx = CompanyContext::new(&c.object, config, preview(c.object.status.as_ref()));
        if let Some(problem) = ctx.settings.problem() {
            problems.push(Problem::at(&c.doc, "spec.storage.deletionPolicy", problem));
            continue;
        }
        let company_plan = builders::build_company(&ctx);
        let devs = members.get(&name).map(Vec::as_slice).unwrap_or_default();
        // Ids recorded in status (a plan of `kubectl get -o yaml` output) are kept.
        let mut used: BTreeSet<i64> = devs
            .iter()
            .filter_map(|d| d.object.status.as_ref()?.uid)
            .collect();
        let mut developer_plans = Vec::new();
        for d in devs {
            let recorded = d.object.status.as_ref().and_then(|s| s.uid);
            let Some(id) =
                recorded.or_else(|| posix_ids::allocate(&config.workspace.posix_ids, &used))
            else {
                problems.push(Problem::at(
                    &d.doc,
                    "",
                    "no free uid left in the configured range (workspace.posixIds)",
                ));
                continue;
            };
            used.insert(id);
            let dctx = DeveloperContext::new(&ctx, &d.object, id);
            if let Some(problem) = dctx.settings.image_problem(&ctx.settings) {
                problems.push(Problem::at(&d.doc, "spec.workspace.image", problem));
                continue;
            }
            developer_plans.push(builders::build_developer(&dctx));
        }
        plan.tenants.push(TenantPlan {
            name,
            company: company_plan,
            developers: developer_plans,
        });
    }
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(problems)
    }
}

/// What a plan assumes of a Company's external resources: what its status
/// records (a plan of `kubectl get -o yaml` output), else stand-ins for a
/// file system not yet created, named so that nobody mistakes them, so the
/// plan shows the volumes that will mount it.
fn preview(status: Option<&crate::crd::CompanyStatus>) -> builders::Observed {
    let mut observed = builders::Observed::recorded(status);
    observed
        .file_system
        .get_or_insert_with(|| builders::FileSystemFacts {
            id: "fs-pending".into(),
            dns_name: "pending-fsx-dns-name.invalid".into(),
            mount_name: "pending".into(),
        });
    observed
}
