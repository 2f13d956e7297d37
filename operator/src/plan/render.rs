//! Renders a plan: a readable tree (`summary`), the exact Kubernetes
//! objects (`yaml`), or everything as data (`json`).
//!
//! Each renderer writes one tenant at a time to an [`io::Write`], so a plan
//! built lazily ([`super::Tenants::plans`]) is never held whole.

use std::{borrow::Borrow, fmt::Write as _, io};

use serde_json::{Value, json};

use super::{Plan, TenantPlan};
use crate::builders::{ExternalAction, KubeObject, KubernetesAuthRole, StorageKind, VaultPolicy};

fn objects(out: &mut String, indent: &str, list: &[KubeObject]) {
    let _ = writeln!(out, "{indent}Kubernetes objects ({})", list.len());
    for o in list {
        let _ = writeln!(out, "{indent}  {:<22} {}", o.kind(), o.display_name());
    }
}

fn vault(out: &mut String, indent: &str, policies: &[VaultPolicy], roles: &[KubernetesAuthRole]) {
    let _ = writeln!(out, "{indent}Vault");
    for p in policies {
        let _ = writeln!(out, "{indent}  policy {}", p.name);
        for r in &p.rules {
            let _ = writeln!(
                out,
                "{indent}    {:<38} {}",
                r.capabilities.join(", "),
                r.path
            );
        }
    }
    for r in roles {
        let _ = writeln!(
            out,
            "{indent}  role   {} <- serviceaccount {}/{} (audience {}, ttl {}s, policies {})",
            r.name,
            r.bound_service_account_namespaces.join(","),
            r.bound_service_account_names.join(","),
            r.audience,
            r.token_ttl,
            r.token_policies.join(",")
        );
    }
}

fn actions(out: &mut String, indent: &str, list: &[ExternalAction]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "{indent}External actions");
    for a in list {
        let system = serde_json::to_value(a.system)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(out, "{indent}  {system:<10} {} {}", a.operation, a.target);
        for (k, v) in &a.parameters {
            let _ = writeln!(out, "{indent}               {k}: {v}");
        }
        let _ = writeln!(out, "{indent}               ({})", a.note);
    }
}

fn tenant(out: &mut String, t: &TenantPlan) {
    let s = &t.company.settings;
    let _ = writeln!(out, "Company {} -> namespace {}", t.name, s.namespace);
    let db = &s.database;
    let _ = writeln!(
        out,
        "  database: {:?}, engine postgres {}, deletion policy {:?}",
        db.mode, db.engine_version, db.deletion_policy
    );
    let storage = match &s.storage {
        StorageKind::Fsx {
            fsx_type,
            existing_file_system_id: Some(id),
            ..
        } => format!("FSx {fsx_type:?}, existing file system {id}"),
        StorageKind::Fsx {
            fsx_type,
            capacity_gib,
            ..
        } => format!("FSx {fsx_type:?}, {capacity_gib} GiB, created for the company"),
        StorageKind::Volume { storage_class } => {
            format!("one volume per developer from StorageClass {storage_class}")
        }
    };
    let _ = writeln!(
        out,
        "  storage: {storage}, deletion policy {:?}",
        s.storage_deletion_policy
    );
    let _ = writeln!(
        out,
        "  quota: cpu {}, memory {}, pods {}, storage {}; ingress from namespaces {}",
        s.cpu,
        s.memory,
        s.pods,
        s.storage_quota,
        s.ingress_namespaces.join(", ")
    );
    objects(out, "  ", &t.company.objects);
    vault(out, "  ", &t.company.policies, &t.company.roles);
    actions(out, "  ", &t.company.actions);
    for d in &t.developers {
        let ds = &d.settings;
        let _ = writeln!(
            out,
            "  Developer {} (role {:?}, uid/gid {}{})",
            ds.name,
            ds.role,
            ds.posix_id,
            if ds.suspended { ", suspended" } else { "" }
        );
        objects(out, "    ", &d.objects);
        vault(out, "    ", &d.policies, &d.roles);
        actions(out, "    ", &d.actions);
    }
    out.push('\n');
}

/// What the summary's last line counts.
#[derive(Default)]
struct Totals {
    companies: usize,
    developers: usize,
    objects: usize,
    policies: usize,
    roles: usize,
    actions: usize,
}

impl Totals {
    fn add(&mut self, t: &TenantPlan) {
        self.companies += 1;
        self.developers += t.developers.len();
        self.objects +=
            t.company.objects.len() + t.developers.iter().map(|d| d.objects.len()).sum::<usize>();
        self.policies +=
            t.company.policies.len() + t.developers.iter().map(|d| d.policies.len()).sum::<usize>();
        self.roles +=
            t.company.roles.len() + t.developers.iter().map(|d| d.roles.len()).sum::<usize>();
        self.actions +=
            t.company.actions.len() + t.developers.iter().map(|d| d.actions.len()).sum::<usize>();
    }

    fn merge(&mut self, other: &Self) {
        self.companies += other.companies;
        self.developers += other.developers;
        self.objects += other.objects;
        self.policies += other.policies;
        self.roles += other.roles;
        self.actions += other.actions;
    }
}

/// An output format of `enclave plan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The readable tree, with totals at the end.
    Summary,
    /// Every Kubernetes object, in apply order, as multi-document YAML.
    Yaml,
    /// Everything as one JSON document, for tools.
    Json,
}

/// Consecutive tenants rendered: their text, each tenant (JSON) or object
/// (YAML) preceded by its separator, and what they count.
#[derive(Default)]
pub struct Rendered {
    text: String,
    totals: Totals,
}

impl Format {
    /// What precedes every part but the first.
    fn separator(self) -> &'static str {
        match self {
            Self::Summary => "",
            Self::Yaml => "---\n",
            Self::Json => ",\n",
        }
    }

    /// Appends one tenant to `into`.
    pub fn render(self, t: &TenantPlan, into: &mut Rendered) -> io::Result<()> {
        let out = &mut into.text;
        match self {
            Self::Summary => tenant(out, t),
            Self::Yaml => {
                for o in t.objects() {
                    out.push_str(self.separator());
                    serde_saphyr::to_fmt_writer(&mut *out, &o.to_json())
                        .map_err(io::Error::other)?;
                }
            }
            Self::Json => {
                let text = serde_json::to_string_pretty(&tenant_json(t))?;
                out.push_str(self.separator());
                for (i, line) in text.lines().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    let _ = write!(out, "    {line}");
                }
            }
        }
        into.totals.add(t);
        Ok(())
    }

    /// Writes the rendered parts, in order, with what opens and closes the
    /// output: the same bytes however the tenants were split into parts.
    pub fn write(
        self,
        out: &mut impl io::Write,
        parts: impl IntoIterator<Item = io::Result<Rendered>>,
    ) -> io::Result<()> {
        let mut totals = Totals::default();
        let mut first = true;
        for part in parts {
            let part = part?;
            let mut text = part.text.as_str();
            if first && !text.is_empty() {
                if self == Self::Json {
                    out.write_all(b"{\n  \"tenants\": [\n")?;
                }
                text = text.strip_prefix(self.separator()).unwrap_or(text);
                first = false;
            }
            out.write_all(text.as_bytes())?;
            totals.merge(&part.totals);
        }
        match self {
            Self::Summary => writeln!(
                out,
                "Plan: {} companies, {} developers, {} Kubernetes objects, {} Vault policies, {} Vault roles, {} external actions.\nDeveloper uid/gid are allocated by the operator and recorded in Developer status; names derived from a Company's uid (final snapshot, FSx request token) use a placeholder uid here.",
                totals.companies,
                totals.developers,
                totals.objects,
                totals.policies,
                totals.roles,
                totals.actions,
            ),
            Self::Yaml => Ok(()),
            Self::Json if first => out.write_all(b"{\n  \"tenants\": []\n}"),
            Self::Json => out.write_all(b"\n  ]\n}"),
        }
    }

    /// Renders and writes `tenants` one at a time.
    fn write_each<T: Borrow<TenantPlan>>(
        self,
        out: &mut impl io::Write,
        tenants: impl IntoIterator<Item = T>,
    ) -> io::Result<()> {
        self.write(
            out,
            tenants.into_iter().map(|t| {
                let mut part = Rendered::default();
                self.render(t.borrow(), &mut part)?;
                Ok(part)
            }),
        )
    }
}

/// Writes the readable tree, tenant by tenant.
pub fn write_summary<T: Borrow<TenantPlan>>(
    out: &mut impl io::Write,
    tenants: impl IntoIterator<Item = T>,
) -> io::Result<()> {
    Format::Summary.write_each(out, tenants)
}

/// Writes every Kubernetes object, in apply order, as multi-document YAML.
pub fn write_yaml<T: Borrow<TenantPlan>>(
    out: &mut impl io::Write,
    tenants: impl IntoIterator<Item = T>,
) -> io::Result<()> {
    Format::Yaml.write_each(out, tenants)
}

/// Writes everything as one JSON document, for tools: the same bytes as
/// pretty-printing `{"tenants": [...]}` at once.
pub fn write_json<T: Borrow<TenantPlan>>(
    out: &mut impl io::Write,
    tenants: impl IntoIterator<Item = T>,
) -> io::Result<()> {
    Format::Json.write_each(out, tenants)
}

fn tenant_json(t: &TenantPlan) -> Value {
    json!({
        "company": t.name,
        "settings": t.company.settings,
        "objects": t.company.objects.iter().map(KubeObject::to_json).collect::<Vec<_>>(),
        "vaultPolicies": t.company.policies,
        "vaultRoles": t.company.roles,
        "actions": t.company.actions,
        "developers": t.developers.iter().map(|d| json!({
            "settings": d.settings,
            "objects": d.objects.iter().map(KubeObject::to_json).collect::<Vec<_>>(),
            "vaultPolicies": d.policies,
            "vaultRoles": d.roles,
            "actions": d.actions,
        })).collect::<Vec<_>>(),
    })
}

fn into_string(write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Result<String, String> {
    let mut out = Vec::new();
    write(&mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// The readable tree.
pub fn render_summary(plan: &Plan) -> Result<String, String> {
    into_string(|out| write_summary(out, &plan.tenants))
}

/// Every Kubernetes object, in apply order.
pub fn all_objects(plan: &Plan) -> Vec<&KubeObject> {
    plan.tenants.iter().flat_map(TenantPlan::objects).collect()
}

/// The exact Kubernetes objects as multi-document YAML.
pub fn render_yaml(plan: &Plan) -> Result<String, String> {
    into_string(|out| write_yaml(out, &plan.tenants))
}

/// Everything as one JSON document, for tools.
pub fn render_json(plan: &Plan) -> Result<String, String> {
    into_string(|out| write_json(out, &plan.tenants))
}
