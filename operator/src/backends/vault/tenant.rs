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

/// Ensures one developer's policy and role.
pub async fn ensure_developer(
    vault: &impl VaultBackend,
    company: &str,
    plan: &DeveloperPlan,
) -> Result<Vec<Change>, VaultError> {
    let mut changes = Vec::new();
    for policy in &plan.policies {
        changes.push(vault.ensure_policy(policy).await?);
    }
    for role in &plan.roles {
        changes.push(vault.ensure_role(company, role).await?);
    }
    Ok(changes)
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
pub async fn delete_tenant(
    vault: &impl VaultBackend,
    plan: &CompanyPlan,
    kv_root: &str,
    delete_data: bool,
) -> Result<(), VaultError> {
    for role in &plan.roles {
        vault
            .delete_role(&plan.settings.company, &role.name)
            .await?;
    }
    for policy in &plan.policies {
        vault.delete_policy(&policy.name).await?;
    }
    if delete_data {
        vault.delete_secrets(kv_root).await?;
    }
    Ok(())
}
