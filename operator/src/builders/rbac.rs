//! Company RBAC: bindings of the chart's company-admin ClusterRole in the
//! company namespace. Admins manage Developers there and can look at
//! workspaces, but cannot exec into anyone's pod, read Secrets or touch the
//! namespace itself.

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{RoleBinding, RoleRef, Subject},
};
use kube::api::ObjectMeta;

use super::{CompanyContext, DeveloperContext, labels};
use crate::crd::DeveloperRole;

/// The chart's company-admin ClusterRole (its rules:
/// `charts/enclave/files/rbac.yaml`), granted inside one company namespace.
/// The operator holds `bind` on that one name, so it never needs the rules
/// itself (the API server's escalation check).
fn role_ref(ctx: &CompanyContext<'_>) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: ctx.config.rbac.company_admin_cluster_role.clone(),
    }
}

/// Binds the company's admin group (from the identity provider) to the
/// company-admin ClusterRole in the company namespace.
pub fn company_admin_binding(ctx: &CompanyContext<'_>) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(ctx.names.admin_binding().to_owned()),
            namespace: Some(ctx.names.namespace().to_owned()),
            labels: Some(labels::company(ctx.names.company())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        role_ref: role_ref(ctx),
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Group".into(),
            name: format!(
                "{}{}-admins",
                ctx.config.rbac.admin_group_prefix,
                ctx.names.company()
            ),
            namespace: None,
        }]),
    }
}

/// Binds an Admin developer's identity to the company-admin ClusterRole;
/// `None` for other roles.
pub fn developer_admin_binding(ctx: &DeveloperContext<'_>) -> Option<RoleBinding> {
    if ctx.settings.role != DeveloperRole::Admin {
        return None;
    }
    let company = ctx.company;
    Some(RoleBinding {
        metadata: ObjectMeta {
            name: Some(ctx.names.admin_binding()),
            namespace: Some(company.names.namespace().to_owned()),
            labels: Some(labels::developer(company.names.company(), ctx.names.name())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        role_ref: role_ref(company),
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: format!(
                "{}{}",
                company.config.rbac.user_prefix, ctx.developer.spec.subject
            ),
            namespace: None,
        }]),
    })
}

/// ServiceAccount of the company-specific controller; it only logs in to
/// Vault, so no API token is mounted.
pub fn controller_service_account(ctx: &CompanyContext<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(ctx.names.controller_service_account().to_owned()),
            namespace: Some(ctx.names.namespace().to_owned()),
            labels: Some(labels::with_component(
                labels::company(ctx.names.company()),
                "company-controller",
            )),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
