//! Vault policies (HCL) and Kubernetes-auth roles, as data.
//!
//! Every path is built from names the CRD schema already restricted to
//! `[a-z0-9-]`, so nothing a tenant writes can widen a policy.

use std::fmt::Write as _;

use serde::Serialize;

use super::{CompanyContext, DeveloperContext};
use crate::crd::DeveloperRole;

/// First line of every policy Enclave writes: how it recognises its own.
pub const OWNERSHIP_MARKER: &str = "# managed-by: enclave";

/// A named ACL policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VaultPolicy {
    /// Policy name.
    pub name: String,
    /// Its rules, as written into `hcl`.
    pub rules: Vec<VaultRule>,
    /// Policy body (HCL).
    pub hcl: String,
}

/// One `path` stanza.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VaultRule {
    /// Path glob.
    pub path: String,
    /// Capabilities granted on it.
    pub capabilities: Vec<String>,
}

/// A Kubernetes-auth role: who may log in, and which policies they get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KubernetesAuthRole {
    /// Role name.
    pub name: String,
    /// Exactly one ServiceAccount, never `*`.
    pub bound_service_account_names: Vec<String>,
    /// Exactly one namespace, never `*`.
    pub bound_service_account_namespaces: Vec<String>,
    /// Audience the login token must carry.
    pub audience: String,
    /// Policies of the issued token.
    pub token_policies: Vec<String>,
    /// TTL of the issued token, seconds.
    pub token_ttl: u32,
    /// Maximum TTL of the issued token, seconds.
    pub token_max_ttl: u32,
}

struct PolicyWriter {
    mount: String,
    rules: Vec<VaultRule>,
    hcl: String,
}

impl PolicyWriter {
    fn new(mount: &str, description: &str) -> Self {
        Self {
            mount: mount.to_owned(),
            rules: Vec::new(),
            hcl: format!("{OWNERSHIP_MARKER}\n# {description}\n"),
        }
    }

    /// Grants on the KV v2 data and metadata of everything below `prefix`.
    fn kv(&mut self, prefix: &str, data: &[&str], metadata: &[&str]) {
        for (kind, caps) in [("data", data), ("metadata", metadata)] {
            let path = format!("{}/{kind}/{prefix}/*", self.mount);
            let quoted = caps
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                self.hcl,
                "\npath \"{path}\" {{\n  capabilities = [{quoted}]\n}}"
            );
            self.rules.push(VaultRule {
                path,
                capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            });
        }
    }
}

const READ: &[&str] = &["read"];
const READ_LIST: &[&str] = &["read", "list"];
const WRITE: &[&str] = &["create", "read", "update", "patch", "delete"];
const WRITE_META: &[&str] = &["read", "list", "delete"];

/// Policy of one developer's workspace.
pub fn developer_policy(ctx: &DeveloperContext<'_>) -> VaultPolicy {
    let company = ctx.company;
    let root = company.names.kv_company_root();
    let mut w = PolicyWriter::new(
        &company.config.vault.kv_mount,
        &format!(
            "developer {} (key {}) of company {}",
            ctx.names.name(),
            ctx.names.key(),
            company.names.company()
        ),
    );
    w.kv(&format!("{root}/shared/dev"), READ, READ_LIST);
    w.kv(&ctx.names.kv_developer(), WRITE, WRITE_META);
    if ctx.settings.role == DeveloperRole::Admin {
        w.kv(&format!("{root}/shared"), WRITE, WRITE_META);
        w.kv(&format!("{root}/shared/prod"), READ, READ_LIST);
    }
    VaultPolicy {
        name: ctx.names.vault_role(),
        rules: w.rules,
        hcl: w.hcl,
    }
}

/// Policy of the company-specific controller: the company's shared and
/// platform secrets, never a developer's own.
pub fn controller_policy(ctx: &CompanyContext<'_>) -> VaultPolicy {
    let root = ctx.names.kv_company_root();
    let mut w = PolicyWriter::new(
        &ctx.config.vault.kv_mount,
        &format!("company controller of company {}", ctx.names.company()),
    );
    w.kv(&format!("{root}/shared"), READ, READ_LIST);
    w.kv(&format!("{root}/platform"), READ, READ_LIST);
    VaultPolicy {
        name: ctx.names.vault_controller(),
        rules: w.rules,
        hcl: w.hcl,
    }
}

fn role(ctx: &CompanyContext<'_>, name: String, service_account: String) -> KubernetesAuthRole {
    let vault = &ctx.config.vault;
    KubernetesAuthRole {
        token_policies: vec![name.clone()],
        name,
        bound_service_account_names: vec![service_account],
        bound_service_account_namespaces: vec![ctx.names.namespace().to_owned()],
        audience: vault.audience.clone(),
        token_ttl: vault.token_ttl_seconds,
        token_max_ttl: vault.token_ttl_seconds,
    }
}

/// Role the workspace logs in with.
pub fn developer_role(ctx: &DeveloperContext<'_>) -> KubernetesAuthRole {
    role(
        ctx.company,
        ctx.names.vault_role(),
        ctx.names.service_account(),
    )
}

/// Role of the company controller.
pub fn controller_role(ctx: &CompanyContext<'_>) -> KubernetesAuthRole {
    role(
        ctx,
        ctx.names.vault_controller(),
        ctx.names.controller_service_account().to_owned(),
    )
}
