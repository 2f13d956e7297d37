//! A tenant's Vault state as a whole: policies before the roles that carry
//! them, roles removed before their policies.

use super::{Change, VaultBackend, VaultError};
use crate::builders::{CompanyPlan, DeveloperPlan};

/// Ensures the company-level policies and roles of `plan`.
pub async fn ensure_company(
    vault: &impl VaultBackend,
    plan: &CompanyPlan,
) -> Result<Vec<Change>, VaultError> {
    let mut changes = Vec::new();
    for policy in &plan.policies {
        changes.push(vault.ensure_policy(policy).await?);
    }
    for role in &plan.roles {
        changes.push(vault.ensure_role(&plan.settings.company, role).await?);
    }
    Ok(changes)
}

/// Ensures one developer's policy and role, and the person's own access
/// (`person_mount`: the configured person auth mount, may be empty).
pub async fn ensure_developer(
    vault: &impl VaultBackend,
    company: &str,
    plan: &DeveloperPlan,
    person_mount: &str,
) -> Result<Vec<Change>, VaultError> {
    let mut changes = Vec::new();
    for policy in &plan.policies {
        changes.push(vault.ensure_policy(policy).await?);
    }
    for role in &plan.roles {
        changes.push(vault.ensure_role(company, role).await?);
    }
    changes.extend(person_access(vault, company, plan, person_mount).await?);
    Ok(changes)
}

/// The person's own access (an Admin's JWT role and policy), or its
/// removal when they are no Admin any more. `mount` is the configured
/// person auth mount (empty: none, so nothing to remove either).
async fn person_access(
    vault: &impl VaultBackend,
    company: &str,
    plan: &DeveloperPlan,
    mount: &str,
) -> Result<Vec<Change>, VaultError> {
    if mount.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match &plan.person {
        Some(person) => vec![
            vault.ensure_policy(&person.policy).await?,
            vault
                .ensure_person_role(company, &person.mount, &person.role)
                .await?,
        ],
        // Role first, then the policy it carried.
        None => vec![
            vault
                .delete_person_role(company, mount, &plan.person_name)
                .await?,
            vault.delete_policy(&plan.person_name).await?,
        ],
    })
}

/// Removes one developer's role and policy; with `delete_data`, also their
/// personal secrets (`kv_path`, from the name module).
pub async fn delete_developer(
    vault: &impl VaultBackend,
    company: &str,
    plan: &DeveloperPlan,
    kv_path: &str,
    delete_data: bool,
) -> Result<(), VaultError> {
    for role in &plan.roles {
        vault.delete_role(company, &role.name).await?;
    }
    for policy in &plan.policies {
        vault.delete_policy(&policy.name).await?;
    }
    if delete_data {
        vault.delete_secrets(kv_path).await?;
    }
    Ok(())
}

/// Removes a company's own roles and policies (its developers first, via
/// [`delete_developer`]); with `delete_data`, every secret of the company.
/// Returns what each removal did.
pub async fn delete_tenant(
    vault: &impl VaultBackend,
    plan: &CompanyPlan,
    kv_root: &str,
    delete_data: bool,
) -> Result<Vec<Change>, VaultError> {
    let mut changes = Vec::new();
    for role in &plan.roles {
        changes.push(
            vault
                .delete_role(&plan.settings.company, &role.name)
                .await?,
        );
    }
    for policy in &plan.policies {
        changes.push(vault.delete_policy(&policy.name).await?);
    }
    if delete_data {
        vault.delete_secrets(kv_root).await?;
    }
    Ok(changes)
}
