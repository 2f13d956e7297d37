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
/// (`recorded`: the person role the status records as written, by mount
/// and name, removed when the plan has another or none).
pub async fn ensure_developer(
    vault: &impl VaultBackend,
    company: &str,
    plan: &DeveloperPlan,
    recorded: Option<(&str, &str)>,
) -> Result<Vec<Change>, VaultError> {
    let mut changes = Vec::new();
    for policy in &plan.policies {
        changes.push(vault.ensure_policy(policy).await?);
    }
    for role in &plan.roles {
        changes.push(vault.ensure_role(company, role).await?);
    }
    changes.extend(person_access(vault, company, plan, recorded).await?);
    Ok(changes)
}

/// The person's own access (an Admin's JWT role and policy), and the
/// removal of a recorded one the plan no longer has (the person is no
/// Admin any more, or the configuration names another mount).
async fn person_access(
    vault: &impl VaultBackend,
    company: &str,
    plan: &DeveloperPlan,
    recorded: Option<(&str, &str)>,
) -> Result<Vec<Change>, VaultError> {
    let mut changes = Vec::new();
    let wanted = plan
        .person
        .as_ref()
        .map(|p| (p.mount.as_str(), p.role.name.as_str()));
    if let Some((mount, role)) = recorded.filter(|r| Some(*r) != wanted) {
        // Role first, then the policy it carried.
        changes.push(vault.delete_person_role(company, mount, role).await?);
        if wanted.is_none_or(|(_, name)| name != role) {
            changes.push(vault.delete_policy(role).await?);
        }
    }
    if let Some(person) = &plan.person {
        changes.push(vault.ensure_policy(&person.policy).await?);
        changes.push(
            vault
                .ensure_person_role(company, &person.mount, &person.role)
                .await?,
        );
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
