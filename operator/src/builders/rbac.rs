//! Company RBAC, all inside the company namespace: the company-admin
//! ClusterRole for admins (manage Developers, look at workspaces; never exec
//! into anyone's pod, read Secrets or touch the namespace itself), and for
//! each person a Role on exactly their own workspace pod and Developer.

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
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
            name: person(ctx),
            namespace: None,
        }]),
    })
}

/// Binds the chart's workspace-access ClusterRole to the operator's own
/// ServiceAccount in this company namespace: the API server lets nobody
/// write a Role granting rules they do not hold, and this way the operator
/// holds pod access only inside company namespaces (it has `bind` on that
/// one ClusterRole, never `escalate`).
pub fn operator_access_binding(ctx: &CompanyContext<'_>) -> RoleBinding {
    let config = ctx.config;
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(ctx.names.operator_access_binding().to_owned()),
            namespace: Some(ctx.names.namespace().to_owned()),
            labels: Some(labels::company(ctx.names.company())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: config.rbac.workspace_access_cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: config.rbac.operator_service_account.clone(),
            namespace: Some(config.operator_namespace.clone()),
        }]),
    }
}

/// The Kubernetes user the person is to the API server (the OIDC
/// authenticator's username prefix before their identity-provider subject).
pub fn person(ctx: &DeveloperContext<'_>) -> String {
    format!(
        "{}{}",
        ctx.company.config.rbac.user_prefix, ctx.developer.spec.subject
    )
}

/// What a person may do with their own workspace: look at, exec into,
/// attach to, port-forward to and read the logs of that one pod, and read
/// their own Developer. Every rule names its object: nothing of anyone
/// else's. (`get` on the streaming subresources is what WebSocket clients
/// send.)
pub fn workspace_access_role(ctx: &DeveloperContext<'_>) -> Role {
    let company = ctx.company;
    let pod = ctx.names.workspace_pod();
    let rule = |group: &str, resources: &[&str], verbs: &[&str], name: &str| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: Some(vec![name.to_owned()]),
        non_resource_urls: None,
    };
    Role {
        metadata: ObjectMeta {
            name: Some(ctx.names.workspace_access()),
            namespace: Some(company.names.namespace().to_owned()),
            labels: Some(labels::developer(company.names.company(), ctx.names.name())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        rules: Some(vec![
            rule("", &["pods", "pods/log"], &["get"], &pod),
            rule(
                "",
                &["pods/exec", "pods/attach", "pods/portforward"],
                &["get", "create"],
                &pod,
            ),
            rule("enclave.dev", &["developers"], &["get"], ctx.names.name()),
        ]),
    }
}

/// Binds the person to [`workspace_access_role`].
pub fn workspace_access_binding(ctx: &DeveloperContext<'_>) -> RoleBinding {
    let company = ctx.company;
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(ctx.names.workspace_access()),
            namespace: Some(company.names.namespace().to_owned()),
            labels: Some(labels::developer(company.names.company(), ctx.names.name())),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: ctx.names.workspace_access(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: person(ctx),
            namespace: None,
        }]),
    }
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
