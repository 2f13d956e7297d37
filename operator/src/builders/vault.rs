//! Vault policies (HCL), Kubernetes-auth roles (pods) and JWT-auth roles
//! (people), as data.
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
    /// One line saying whose policy this is.
    pub description: String,
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

/// A JWT-auth role of one person: a token from the identity provider with
/// their `sub` and the configured audience logs in to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JwtAuthRole {
    /// Role name.
    pub name: String,
    /// The person's identity-provider subject; never empty, never a glob.
    pub bound_subject: String,
    /// Audiences the token must carry.
    pub bound_audiences: Vec<String>,
    /// Policies of the issued token.
    pub token_policies: Vec<String>,
    /// TTL of the issued token, seconds.
    pub token_ttl: u32,
    /// Maximum TTL of the issued token, seconds.
    pub token_max_ttl: u32,
}

/// What an Admin person (not their pod) gets in Vault: write access to the
/// company's shared secrets, through a login with their own identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PersonAccess {
    /// The JWT-auth mount the role lives in.
    pub mount: String,
    /// The policy.
    pub policy: VaultPolicy,
    /// The role.
    pub role: JwtAuthRole,
}

/// Renders `rules` as HCL under the ownership marker and a one-line
/// description. The Vault backend re-renders a policy from its rules before
/// writing it, so the HCL can never hold more than the rules say.
pub fn render_hcl(description: &str, rules: &[VaultRule]) -> String {
    let mut hcl = format!("{OWNERSHIP_MARKER}\n# {description}\n");
    for rule in rules {
        let caps = rule
            .capabilities
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            hcl,
            "\npath \"{}\" {{\n  capabilities = [{caps}]\n}}",
            rule.path
        );
    }
    hcl
}

/// Collects rules on the KV v2 paths of one mount.
struct PolicyWriter {
    mount: String,
    description: String,
    rules: Vec<VaultRule>,
}

impl PolicyWriter {
    fn new(mount: &str, description: String) -> Self {
        Self {
            mount: mount.to_owned(),
            description,
            rules: Vec::new(),
        }
    }

    /// Grants on the KV v2 data and metadata of everything below `prefix`.
    fn kv(&mut self, prefix: &str, data: &[&str], metadata: &[&str]) {
        for (kind, caps) in [("data", data), ("metadata", metadata)] {
            self.rules.push(VaultRule {
                path: format!("{}/{kind}/{prefix}/*", self.mount),
                capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            });
        }
    }

    fn finish(self, name: String) -> VaultPolicy {
        let hcl = render_hcl(&self.description, &self.rules);
        VaultPolicy {
            name,
            description: self.description,
            rules: self.rules,
            hcl,
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
        format!(
            "developer {} (key {}) of company {}",
            ctx.names.name(),
            ctx.names.key(),
            company.names.company()
        ),
    );
    // Every workspace, an Admin's included, runs third-party code: it reads
    // the company's development secrets and its owner's own, nothing more.
    // Admins write shared secrets as themselves (see `admin_person_access`),
    // production ones only the company controller reads.
    w.kv(&format!("{root}/shared/dev"), READ, READ_LIST);
    w.kv(&ctx.names.kv_developer(), WRITE, WRITE_META);
    w.finish(ctx.names.vault_role())
}

/// An Admin person's policy and JWT-auth role: they write the company's
/// shared secrets (dev and prod) with their own identity-provider login,
/// never from a pod. `None` for Developers, or when the operator has no
/// person auth mount configured.
pub fn admin_person_access(ctx: &DeveloperContext<'_>) -> Option<PersonAccess> {
    let company = ctx.company;
    let vault = &company.config.vault;
    if ctx.settings.role != DeveloperRole::Admin || vault.person_auth_mount.is_empty() {
        return None;
    }
    let mut w = PolicyWriter::new(
        &vault.kv_mount,
        format!(
            "admin person {} (key {}) of company {}: writes the shared secrets",
            ctx.names.name(),
            ctx.names.key(),
            company.names.company()
        ),
    );
    w.kv(
        &format!("{}/shared", company.names.kv_company_root()),
        WRITE,
        WRITE_META,
    );
    let name = ctx.names.vault_person();
    Some(PersonAccess {
        mount: vault.person_auth_mount.clone(),
        policy: w.finish(name.clone()),
        role: JwtAuthRole {
            token_policies: vec![name.clone()],
            name,
            bound_subject: ctx.developer.spec.subject.clone(),
            bound_audiences: vec![vault.person_audience.clone()],
            token_ttl: vault.token_ttl_seconds,
            token_max_ttl: vault.token_ttl_seconds,
        },
    })
}

/// Policy of the company-specific controller: the company's shared and
/// platform secrets, never a developer's own.
pub fn controller_policy(ctx: &CompanyContext<'_>) -> VaultPolicy {
    let root = ctx.names.kv_company_root();
    let mut w = PolicyWriter::new(
        &ctx.config.vault.kv_mount,
        format!("company controller of company {}", ctx.names.company()),
    );
    w.kv(&format!("{root}/shared"), READ, READ_LIST);
    w.kv(&format!("{root}/platform"), READ, READ_LIST);
    w.finish(ctx.names.vault_controller())
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

/// Enclave's own Vault policy: tenant policies and roles named `enclave-*`
/// and the tenants' KV paths, nothing else. Shipped in the chart
/// (`charts/enclave/files/vault-policy.hcl`) and printed by
/// `enclave vault-policy`.
pub fn operator_policy(kv_mount: &str, auth_mount: &str, person_auth_mount: &str) -> String {
    let mut policy = format!(
        r#"{OWNERSHIP_MARKER}
# The Enclave operator: tenant ACL policies and Kubernetes-auth roles named
# enclave-*, the tenants' secrets below companies/, and read access to its
# own platform secrets below enclave/. Nothing else.

path "sys/policies/acl/enclave-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

path "auth/{auth_mount}/role/enclave-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

path "{kv_mount}/data/companies/*" {{
  capabilities = ["create", "read", "update", "delete"]
}}

path "{kv_mount}/metadata/companies/*" {{
  capabilities = ["read", "list", "delete"]
}}

# Platform secrets the operator reads, e.g. the shared PostgreSQL admin.
path "{kv_mount}/data/enclave/*" {{
  capabilities = ["read"]
}}

path "auth/token/lookup-self" {{
  capabilities = ["read"]
}}

path "auth/token/renew-self" {{
  capabilities = ["update"]
}}
"#
    );
    if !person_auth_mount.is_empty() {
        let _ = write!(
            policy,
            r#"
# The JWT-auth roles of admin people (the identity provider's login).
path "auth/{person_auth_mount}/role/enclave-*" {{
  capabilities = ["create", "read", "update", "delete"]
}}
"#
        );
    }
    policy
}
