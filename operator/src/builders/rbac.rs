//! Company RBAC: admins manage Developers in their own namespace and can
//! look at workspaces, but cannot exec into anyone's pod, read Secrets or
//! touch the namespace itself.

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::api::ObjectMeta;

use super::{CompanyContext, DeveloperContext, labels};
use crate::crd::{DeveloperRole, GROUP};

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];

/// The `company-admin` Role.
pub fn company_admin_role(ctx: &CompanyContext<'_>) -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(ctx.names.admin_role().to_owned()),
            namespace: Some(ctx.names.namespace().to_owned()),
            labels: Some(labels::company(ctx.names.company())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule(
                GROUP,
                &["developers"],
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
            ),
            rule(GROUP, &["developers/status"], READ),
            // Read-only view of the workspaces; deliberately no pods/exec,
            // pods/attach, pods/portforward or secrets.
            rule(
                "",
                &[
                    "pods",
                    "pods/log",
                    "events",
                    "services",
                    "persistentvolumeclaims",
                    "serviceaccounts",
                ],
                READ,
            ),
            rule("apps", &["statefulsets"], READ),
        ]),
    }
}

fn role_ref(ctx: &CompanyContext<'_>) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "Role".into(),
        name: ctx.names.admin_role().to_owned(),
    }
}

/// Binds the company's admin group (from the identity provider) to the Role.
pub fn company_admin_binding(ctx: &CompanyContext<'_>) -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(ctx.names.admin_role().to_owned()),
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

/// Binds an Admin developer's identity to the Role; `None` for other roles.
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
