//! The company-specific controller (`spec.controller.image`): one hardened
//! pod under the company-controller ServiceAccount, whose init step writes
//! the company's production secrets and its database credentials into a
//! memory volume; restarted onto new credentials after a rotation.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{Container, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::api::ObjectMeta;

use super::{
    CompanyContext, labels,
    settings::Resources,
    workspace::{
        SECRETS_DIR, VAULT_TOKEN_DIR, env, hardened, init_resources, memory_volume, mount,
        pod_security, resources, tmp_volume, vault_ca, vault_token_volume,
    },
};

/// The component label of the company controller's objects.
pub const COMPONENT: &str = "company-controller";

/// Pod template annotation with the KV version of the database credentials
/// the pod was started with: a rotation changes it, and so restarts the pod.
pub const CREDENTIALS_VERSION_ANNOTATION: &str = "enclave.dev/credentials-version";

/// The company's own image: Enclave cannot know its health endpoints, and
/// a wrong probe would restart a healthy controller.
const NO_PROBES: &str =
    "CKV_K8S_8=the company's own controller image: its health endpoints are unknown to Enclave";

/// The uid the company controller runs as (the image's own user is not
/// known; `restricted` needs a non-root one).
const CONTROLLER_UID: i64 = 65_532;

fn selector(ctx: &CompanyContext<'_>) -> BTreeMap<String, String> {
    labels::with_component(labels::company(ctx.names.company()), COMPONENT)
}

/// Logs in to Vault with the company-controller role and writes the
/// company's production secrets (`env`, `profiles.yml`, …) and the database
/// credentials (`database.env`) into the memory volume.
fn init_container(ctx: &CompanyContext<'_>) -> Container {
    let vault = &ctx.config.vault;
    let root = ctx.names.kv_company_root();
    let ca = vault_ca(ctx.config, ctx.names.vault_ca_config_map());
    let mut args = vec![
        "workspace-init".to_owned(),
        "--vault-address".into(),
        vault.address.clone(),
        "--auth-mount".into(),
        vault.auth_mount.clone(),
        "--role".into(),
        ctx.names.vault_controller(),
        "--token-file".into(),
        format!("{VAULT_TOKEN_DIR}/token"),
        "--kv-mount".into(),
        vault.kv_mount.clone(),
        "--shared-path".into(),
        format!("{root}/shared/prod"),
        "--developer-path".into(),
        format!("{root}/platform"),
        "--secrets-dir".into(),
        SECRETS_DIR.into(),
        "--home".into(),
        "/tmp".into(),
    ];
    if let Some((ca_args, _, _)) = &ca {
        args.extend(ca_args.iter().cloned());
    }
    Container {
        name: "secrets-init".into(),
        image: Some(ctx.config.operator_image.clone()),
        image_pull_policy: Some("Always".into()),
        args: Some(args),
        resources: Some(resources(&init_resources())),
        security_context: Some(hardened()),
        volume_mounts: Some(
            [
                mount("vault-token", VAULT_TOKEN_DIR, true),
                mount("secrets", SECRETS_DIR, false),
                mount("tmp", "/tmp", false),
            ]
            .into_iter()
            .chain(ca.map(|(_, _, m)| m))
            .collect(),
        ),
        ..Container::default()
    }
}

fn controller_container(ctx: &CompanyContext<'_>, image: &str) -> Container {
    let mut environment = vec![env("ENCLAVE_SECRETS_DIR", SECRETS_DIR)];
    // Where the database is, once known (the credentials are in the file).
    if let Some(db) = &ctx.observed.database {
        if let Some(host) = &db.endpoint {
            environment.push(env("PGHOST", host));
        }
        if let Some(port) = db.port {
            environment.push(env("PGPORT", &port.to_string()));
        }
        if let Some(name) = &db.name {
            environment.push(env("PGDATABASE", name));
        }
    }
    let limits = Resources {
        cpu_request: "100m".into(),
        cpu_limit: "1".into(),
        memory_request: "128Mi".into(),
        memory_limit: "512Mi".into(),
    };
    Container {
        name: "controller".into(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("Always".into()),
        env: Some(environment),
        resources: Some(resources(&limits)),
        security_context: Some(hardened()),
        volume_mounts: Some(vec![
            mount("secrets", SECRETS_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    }
}

/// The company controller's Deployment, if the spec names an image: one
/// replica, replaced (never two at once), under the company-controller
/// ServiceAccount (no API token mounted).
pub fn deployment(ctx: &CompanyContext<'_>) -> Option<Deployment> {
    let image = ctx.settings.controller_image.as_deref()?;
    let selector = selector(ctx);
    let version = ctx
        .observed
        .database
        .as_ref()
        .and_then(|d| d.credentials_version)
        .map_or_else(|| "none".to_owned(), |v| v.to_string());
    Some(Deployment {
        metadata: ObjectMeta {
            name: Some(ctx.names.controller_service_account().to_owned()),
            namespace: Some(ctx.names.namespace().to_owned()),
            labels: Some(selector.clone()),
            // Scanners (checkov) see why this one pod has no probes.
            annotations: Some(BTreeMap::from([
                ("checkov.io/skip1".to_owned(), NO_PROBES.to_owned()),
                ("checkov.io/skip2".to_owned(), NO_PROBES.replace("_8", "_9")),
            ])),
            owner_references: ctx.owner().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    annotations: Some(BTreeMap::from([(
                        CREDENTIALS_VERSION_ANNOTATION.to_owned(),
                        version,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ctx.names.controller_service_account().to_owned()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security(CONTROLLER_UID)),
                    init_containers: Some(vec![init_container(ctx)]),
                    containers: vec![controller_container(ctx, image)],
                    volumes: Some(
                        [
                            memory_volume("secrets", "16Mi"),
                            tmp_volume(),
                            vault_token_volume(&ctx.config.vault.audience),
                        ]
                        .into_iter()
                        .chain(
                            vault_ca(ctx.config, ctx.names.vault_ca_config_map())
                                .map(|(_, v, _)| v),
                        )
                        .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}
