//! `enclave plan`: what the given tenants imply, without a cluster.
//!
//! Input is validated as the API server would (schema, unknown fields, CEL)
//! and as the operator would (a Developer needs its Company's namespace, no
//! two Companies share a namespace); any problem means no plan at all.
//!
//! Validation needs every document at once (cross-references), but a plan
//! is built and rendered one tenant at a time ([`Tenants::plans`]), so the
//! memory a plan needs grows with the input, not with what it implies.

mod load;
mod render;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    num::NonZero,
    path::{Path, PathBuf},
};

use kube::CustomResourceExt;
use serde_json::Value;

pub use load::Document;
pub use render::{
    Format, Rendered, all_objects, render_json, render_summary, render_yaml, write_json,
    write_summary, write_yaml,
};

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

    fn at(doc: &Origin, path: impl Into<String>, message: impl Into<String>) -> Self {
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

/// Where a document came from, kept after its content is parsed.
#[derive(Clone, Debug)]
struct Origin {
    source: String,
    index: usize,
}

impl Document {
    fn origin(&self) -> Origin {
        Origin {
            source: self.source.clone(),
            index: self.index,
        }
    }
}

struct Located<T> {
    doc: Origin,
    object: T,
}

/// One validated Company with its Developers, each with its uid/gid.
struct Tenant {
    company: Company,
    developers: Vec<(Developer, i64)>,
}

/// The validated tenants of the input: what a plan is built from.
pub struct Tenants {
    tenants: Vec<Tenant>,
}

/// Tenants each thread plans and renders before the output is written.
const SHARE: usize = 64;
/// Documents read before they are validated, a share per thread.
const BATCH: usize = 2048;
/// Threads to plan with, at most.
const MAX_THREADS: usize = 8;

impl Tenant {
    fn plan(&self, config: &OperatorConfig) -> TenantPlan {
        let ctx = CompanyContext::new(&self.company, config, preview(self.company.status.as_ref()));
        TenantPlan {
            name: self.company.metadata.name.clone().unwrap_or_default(),
            company: builders::build_company(&ctx),
            developers: self
                .developers
                .iter()
                .map(|(d, id)| builders::build_developer(&DeveloperContext::new(&ctx, d, *id)))
                .collect(),
        }
    }
}

impl Tenants {
    /// Each tenant's plan, built when the iterator reaches it: a caller that
    /// renders and drops each one never holds more than one tenant's objects.
    pub fn plans<'a>(
        &'a self,
        config: &'a OperatorConfig,
    ) -> impl Iterator<Item = TenantPlan> + 'a {
        self.tenants.iter().map(move |t| t.plan(config))
    }

    /// The whole plan, held at once (for tests and small inputs).
    pub fn plan(&self, config: &OperatorConfig) -> Plan {
        Plan {
            tenants: self.plans(config).collect(),
        }
    }

    /// Plans every tenant and writes it in `format`, on every core: each
    /// thread plans and renders a share of a window of tenants, and the
    /// shares are written in order, so the output is byte for byte that of
    /// [`write_summary`], [`write_yaml`] or [`write_json`] while memory holds
    /// one window's text.
    pub fn write(
        &self,
        out: &mut impl io::Write,
        config: &OperatorConfig,
        format: Format,
    ) -> io::Result<()> {
        let threads = threads();
        let parts = self.tenants.chunks(SHARE * threads).flat_map(|window| {
            std::thread::scope(|scope| {
                let shares: Vec<_> = window
                    .chunks(window.len().div_ceil(threads))
                    .map(|share| {
                        scope.spawn(move || {
                            let mut part = Rendered::default();
                            for t in share {
                                format.render(&t.plan(config), &mut part)?;
                            }
                            Ok(part)
                        })
                    })
                    .collect();
                shares
                    .into_iter()
                    .map(|s| {
                        s.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect::<Vec<io::Result<Rendered>>>()
            })
        });
        format.write(out, parts)
    }
}

/// Documents sorted into Companies and Developers as they are read, each
/// validated on its own; the cross-references are checked by [`resolve`].
struct Collected {
    company_validator: CrdValidator,
    developer_validator: CrdValidator,
    companies: Vec<Located<Company>>,
    developers: Vec<Located<Developer>>,
    problems: Vec<Problem>,
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
    Ok(tenants_of_paths(paths, config)?.plan(config))
}

/// Validates `documents` and plans them.
pub fn plan_documents(
    documents: Vec<Document>,
    config: &OperatorConfig,
) -> Result<Plan, Vec<Problem>> {
    let mut collected = Collected::new()?;
    collected.add(documents);
    Ok(resolve(collected, config)?.plan(config))
}

/// Validates the documents of `paths`, a batch of [`BATCH`] at a time (the
/// parsed documents are dropped once converted), without planning them yet.
pub fn tenants_of_paths(
    paths: &[PathBuf],
    config: &OperatorConfig,
) -> Result<Tenants, Vec<Problem>> {
    let mut collected = Collected::new()?;
    let mut budget = load::Budget::default();
    let mut batch = Vec::new();
    for file in load::files(paths)? {
        match load::read(&file, &mut budget) {
            Ok(documents) => batch.extend(documents),
            Err(problem) => {
                // Problems stay in the order of the files.
                collected.add(std::mem::take(&mut batch));
                collected.problems.push(problem);
            }
        }
        if batch.len() >= BATCH {
            collected.add(std::mem::take(&mut batch));
        }
    }
    collected.add(batch);
    resolve(collected, config)
}

impl Collected {
    fn new() -> Result<Self, Vec<Problem>> {
        Ok(Self {
            company_validator: CrdValidator::new(&Company::crd()).map_err(internal)?,
            developer_validator: CrdValidator::new(&Developer::crd()).map_err(internal)?,
            companies: Vec::new(),
            developers: Vec::new(),
            problems: Vec::new(),
        })
    }

    /// Validates and converts `documents`, dropping their parsed content;
    /// shares of them on every core, the results kept in document order.
    fn add(&mut self, documents: Vec<Document>) {
        let threads = threads();
        let share = documents.len().div_ceil(threads).max(1);
        let this = &*self;
        let checked: Vec<Vec<Checked>> = std::thread::scope(|scope| {
            let shares: Vec<_> = documents
                .chunks(share)
                .map(|docs| scope.spawn(move || docs.iter().map(|d| this.check(d)).collect()))
                .collect();
            shares
                .into_iter()
                .map(|s| {
                    s.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        drop(documents);
        for result in checked.into_iter().flatten() {
            match result {
                Checked::Company(c) => self.companies.push(*c),
                Checked::Developer(d) => self.developers.push(*d),
                Checked::Problems(p) => self.problems.extend(p),
            }
        }
    }

    /// One document validated and converted, or its problems.
    fn check(&self, doc: &Document) -> Checked {
        let api_version = format!("{GROUP}/{VERSION}");
        let origin = doc.origin();
        let problem = |path: &str, message: String| {
            Checked::Problems(vec![Problem::at(&origin, path, message)])
        };
        let Some(map) = doc.value.as_object() else {
            return problem(
                "",
                "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
            );
        };
        let version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
        let validator = match (version == api_version, kind) {
            (true, "Company") => &self.company_validator,
            (true, "Developer") => &self.developer_validator,
            _ if version.starts_with(&format!("{GROUP}/")) && version != api_version => {
                return problem(
                    "apiVersion",
                    format!("unsupported version {version:?}: use {api_version}"),
                );
            }
            _ => {
                return problem(
                    "kind",
                    format!(
                        "unknown kind {kind:?} (apiVersion {version:?}): enclave plan reads {api_version} Company and Developer resources"
                    ),
                );
            }
        };
        let found = validator.validate(&doc.value, None);
        if !found.is_empty() {
            return Checked::Problems(
                found
                    .into_iter()
                    .map(|p| Problem::at(&origin, p.path, p.message))
                    .collect(),
            );
        }
        let value = crate::validation::without_nulls(&doc.value);
        let converted = if kind == "Company" {
            serde_json::from_value::<Company>(value).map(|object| {
                Checked::Company(Box::new(Located {
                    doc: origin.clone(),
                    object,
                }))
            })
        } else {
            serde_json::from_value::<Developer>(value).map(|object| {
                Checked::Developer(Box::new(Located {
                    doc: origin.clone(),
                    object,
                }))
            })
        };
        converted.unwrap_or_else(|e| problem("", e.to_string()))
    }
}

/// What [`Collected::check`] made of one document.
enum Checked {
    Company(Box<Located<Company>>),
    Developer(Box<Located<Developer>>),
    Problems(Vec<Problem>),
}

/// Threads to plan with: one per core, at most [`MAX_THREADS`].
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, NonZero::get)
        .min(MAX_THREADS)
}

fn resolve(collected: Collected, config: &OperatorConfig) -> Result<Tenants, Vec<Problem>> {
    let Collected {
        mut companies,
        mut developers,
        mut problems,
        ..
    } = collected;
    if !problems.is_empty() {
        return Err(problems);
    }
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
    let mut by_name: BTreeMap<String, &Origin> = BTreeMap::new();
    let mut by_namespace: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in companies.iter().enumerate() {
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
            let owner = companies[*owner]
                .object
                .metadata
                .name
                .as_deref()
                .unwrap_or_default();
            problems.push(Problem::at(&c.doc, "spec.namespace", format!("namespace {ns:?} is already claimed by Company {owner:?}: each company needs its own namespace")));
        } else {
            by_namespace.insert(ns, i);
        }
    }

    // Every Developer belongs to exactly the Company that owns its namespace.
    let mut members: Vec<Vec<Located<Developer>>> = companies.iter().map(|_| Vec::new()).collect();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    for d in developers {
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
            Some(company) => members[*company].push(d),
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

    let mut tenants = Vec::with_capacity(companies.len());
    for (c, devs) in companies.into_iter().zip(members) {
        let ctx = CompanyContext::new(&c.object, config, preview(c.object.status.as_ref()));
        if let Some(problem) = ctx.settings.problem() {
            problems.push(Problem::at(&c.doc, "spec.storage.deletionPolicy", problem));
            continue;
        }
        // Ids recorded in status (a plan of `kubectl get -o yaml` output) are kept.
        let mut used: BTreeSet<i64> = devs
            .iter()
            .filter_map(|d| d.object.status.as_ref()?.uid)
            .collect();
        let mut developers = Vec::with_capacity(devs.len());
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
            developers.push((d.object, id));
        }
        drop(ctx);
        tenants.push(Tenant {
            company: c.object,
            developers,
        });
    }
    if problems.is_empty() {
        Ok(Tenants { tenants })
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
