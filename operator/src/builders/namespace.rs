//! The company namespace and its quota.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        ConfigMap, LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota,
        ResourceQuotaSpec,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::api::ObjectMeta;

use super::{CompanyContext, labels};

/// The namespace, with Pod Security Admission enforced. No owner reference:
/// deleting the Company (or its CRD) must never cascade into a tenant's
/// namespace; the controller removes it after the deletion policy ran.
pub fn namespace(ctx: &CompanyContext<'_>) -> Namespace {
    let level = &ctx.config.tenant.pod_security;
    let mut labels = labels::company(ctx.names.company());
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), level.clone());
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    // The owner's uid (none in a plan of files, where no uid exists yet).
    let annotations = (!ctx.uid().is_empty()).then(|| {
        BTreeMap::from([(
            crate::names::ANNOTATION_COMPANY_UID.to_owned(),
            ctx.uid().to_owned(),
        )])
    });
    Namespace {
        metadata: ObjectMeta {
            name: Some(ctx.names.namespace().to_owned()),
            labels: Some(labels),
            annotations,
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn meta(ctx: &CompanyContext<'_>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ctx.names.namespace().to_owned()),
        labels: Some(labels::company(ctx.names.company())),
        owner_references: ctx.owner().map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Vault's CA bundle (`vault.caFile`) for the namespace's init steps, when
/// Vault's certificate is signed by a private CA.
pub fn vault_ca(ctx: &CompanyContext<'_>) -> Option<ConfigMap> {
    let pem = ctx.config.vault.ca_pem.as_ref()?;
    Some(ConfigMap {
        metadata: meta(ctx, ctx.names.vault_ca_config_map()),
        data: Some(BTreeMap::from([("ca.crt".to_owned(), pem.clone())])),
        ..ConfigMap::default()
    })
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

/// Hard limits of the namespace.
pub fn resource_quota(ctx: &CompanyContext<'_>) -> ResourceQuota {
    let s = &ctx.settings;
    let pods = s.pods.to_string();
    ResourceQuota {
        metadata: meta(ctx, "company-quota"),
        spec: Some(ResourceQuotaSpec {
            hard: Some(quantities(&[
                ("requests.cpu", &s.cpu),
                ("limits.cpu", &s.cpu),
                ("requests.memory", &s.memory),
                ("limits.memory", &s.memory),
                ("pods", &pods),
                ("requests.storage", &s.storage_quota),
            ])),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

/// Defaults for containers that state no resources, so the quota can admit them.
pub fn limit_range(ctx: &CompanyContext<'_>) -> LimitRange {
    let r = &ctx.settings.workspace_resources;
    LimitRange {
        metadata: meta(ctx, "company-limits"),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(quantities(&[
                    ("cpu", &r.cpu_limit),
                    ("memory", &r.memory_limit),
                ])),
                default_request: Some(quantities(&[
                    ("cpu", &r.cpu_request),
                    ("memory", &r.memory_request),
                ])),
                ..LimitRangeItem::default()
            }],
        }),
    }
}
