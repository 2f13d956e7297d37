//! Safety checks on everything written to Vault. The CRD schema already
//! restricts names, so these fail only on a bug or on input that bypassed
//! validation; they are the last line before a policy one path too broad.

use super::VaultError;
use crate::builders::{JwtAuthRole, KubernetesAuthRole, VaultPolicy, render_hcl};

const CAPABILITIES: &[&str] = &["create", "read", "update", "patch", "delete", "list"];

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_enclave_name(name: &str) -> bool {
    name.len() <= 128
        && name.strip_prefix("enclave-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn unsafe_(what: &'static str, name: &str, reason: impl Into<String>) -> VaultError {
    VaultError::Unsafe {
        what,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// A KV path below the mount in the design's layout:
/// `companies/<company>[/shared[/dev|/prod]|/developers/<key>|/platform][/...]`,
/// every segment lowercase letters, digits and inner hyphens. No globs, no
/// `..`, and no name that could reach into another company's tree.
pub fn check_kv_path(path: &str) -> Result<(), VaultError> {
    let segments: Vec<&str> = path.split('/').collect();
    let fail = |reason: &str| Err(unsafe_("path", path, reason));
    if segments.first() != Some(&"companies") || segments.len() < 2 {
        return fail("tenant secrets live below companies/<company>");
    }
    if !segments[1..].iter().all(|s| is_segment(s)) {
        return fail("every segment must be lowercase letters, digits and inner hyphens");
    }
    match segments.get(2).copied() {
        None | Some("platform" | "developers") => Ok(()),
        Some("shared") => match segments.get(3).copied() {
            None | Some("dev" | "prod") => Ok(()),
            Some(_) => fail("shared secrets are below shared/dev or shared/prod"),
        },
        Some(_) => fail("below a company there are only shared/, developers/ and platform/"),
    }
}

/// A platform secret's path: `enclave/<segment>(/<segment>)*`.
pub fn check_platform_path(path: &str) -> Result<(), VaultError> {
    let mut segments = path.split('/');
    if segments.next() == Some("enclave")
        && segments.clone().next().is_some()
        && segments.all(is_segment)
    {
        Ok(())
    } else {
        Err(unsafe_(
            "path",
            path,
            "platform secrets live below enclave/, in lowercase segments",
        ))
    }
}

/// `policy` grants only below `<kv_mount>/(data|metadata)/companies/`, with
/// known capabilities, and its HCL is exactly the rendering of its rules.
pub fn check_policy(kv_mount: &str, policy: &VaultPolicy) -> Result<(), VaultError> {
    let name = &policy.name;
    if !is_enclave_name(name) {
        return Err(unsafe_(
            "policy",
            name,
            "names are enclave- followed by lowercase letters, digits and hyphens",
        ));
    }
    if policy.description.chars().any(char::is_control) {
        return Err(unsafe_("policy", name, "the description must be one line"));
    }
    if policy.rules.is_empty() {
        return Err(unsafe_(
            "policy",
            name,
            "a policy without rules grants nothing and hides a bug",
        ));
    }
    for rule in &policy.rules {
        let below = ["data", "metadata"]
            .iter()
            .find_map(|kind| rule.path.strip_prefix(&format!("{kv_mount}/{kind}/")));
        let Some(kv_path) = below.and_then(|p| p.strip_suffix("/*")) else {
            return Err(unsafe_(
                "policy",
                name,
                format!(
                    "path {:?} is not <kv>/data|metadata/companies/.../*",
                    rule.path
                ),
            ));
        };
        check_kv_path(kv_path).map_err(|_| {
            unsafe_(
                "policy",
                name,
                format!("path {:?} leaves the tenant's KV paths", rule.path),
            )
        })?;
        if let Some(cap) = rule
            .capabilities
            .iter()
            .find(|c| !CAPABILITIES.contains(&c.as_str()))
        {
            return Err(unsafe_(
                "policy",
                name,
                format!("capability {cap:?} is not allowed"),
            ));
        }
    }
    if policy.hcl != render_hcl(&policy.description, &policy.rules) {
        return Err(unsafe_(
            "policy",
            name,
            "the HCL is not the rendering of its rules",
        ));
    }
    Ok(())
}

/// `role` binds exactly one ServiceAccount in one namespace, never `*`,
/// with a bounded TTL and only its own policy.
pub fn check_role(role: &KubernetesAuthRole) -> Result<(), VaultError> {
    let name = &role.name;
    if !is_enclave_name(name) {
        return Err(unsafe_(
            "role",
            name,
            "names are enclave- followed by lowercase letters, digits and hyphens",
        ));
    }
    let one =
        |list: &[String]| list.len() == 1 && list.iter().all(|s| is_segment(s) && s.len() <= 63);
    if !one(&role.bound_service_account_names) || !one(&role.bound_service_account_namespaces) {
        return Err(unsafe_(
            "role",
            name,
            "bind exactly one ServiceAccount name and one namespace, never *",
        ));
    }
    if role.token_policies != [name.clone()] {
        return Err(unsafe_("role", name, "a role carries only its own policy"));
    }
    if role.audience.is_empty() {
        return Err(unsafe_("role", name, "an audience is required"));
    }
    check_ttls(name, role.token_ttl, role.token_max_ttl)
}

/// Token TTLs of a role: between 1 s and 24 h, the maximum not below the TTL.
fn check_ttls(name: &str, ttl: u32, max_ttl: u32) -> Result<(), VaultError> {
    if ttl == 0 || ttl > 86_400 || max_ttl < ttl || max_ttl > 86_400 {
        return Err(unsafe_(
            "role",
            name,
            "token TTLs must be between 1 s and 24 h",
        ));
    }
    Ok(())
}

/// Refuses a person's JWT-auth role that could let anyone but that one
/// person in: a subject is required and never a glob, an audience too.
pub fn check_person_role(role: &JwtAuthRole) -> Result<(), VaultError> {
    let name = &role.name;
    if !is_enclave_name(name) {
        return Err(unsafe_(
            "role",
            name,
            "names are enclave- followed by lowercase letters, digits and hyphens",
        ));
    }
    let subject = &role.bound_subject;
    if subject.is_empty() || subject.contains('*') || subject.len() > 255 {
        return Err(unsafe_(
            "role",
            name,
            "bind exactly one subject (a person's sub claim), never empty or a glob",
        ));
    }
    if role.bound_audiences.is_empty() || role.bound_audiences.iter().any(String::is_empty) {
        return Err(unsafe_("role", name, "an audience is required"));
    }
    if role.token_policies != [name.clone()] {
        return Err(unsafe_("role", name, "a role carries only its own policy"));
    }
    check_ttls(name, role.token_ttl, role.token_max_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_paths_follow_the_layout() {
        for ok in [
            "companies/acme",
            "companies/acme/platform/database",
            "companies/acme/shared",
            "companies/acme/shared/prod/git",
            "companies/acme/developers/bob-1a2b3c4d/env",
        ] {
            assert!(check_kv_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "companies",
            "secret/x",
            "companies/a/b/platform",
            "companies/acme/shared/stage/x",
            "companies/a*/platform",
            "companies/../x",
            "companies/acme//x",
            "companies/Acme",
            "companies/acme/platform/*",
        ] {
            assert!(check_kv_path(bad).is_err(), "{bad}");
        }
    }
}
