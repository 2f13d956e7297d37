//! The developer's workspace: ServiceAccount, headless Service and a
//! StatefulSet of one hardened pod that meets Pod Security `restricted`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvVar, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
            PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
            SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection, ServicePort,
            ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    },
};
use kube::api::ObjectMeta;

use super::{DeveloperContext, labels, settings::Resources};
use crate::config::OperatorConfig;

const HOME: &str = "/home/developer";
/// Where the init step writes secrets (a memory volume).
pub(super) const SECRETS_DIR: &str = "/run/enclave/secrets";
/// Where the pod's projected token for Vault is.
pub(super) const VAULT_TOKEN_DIR: &str = "/var/run/secrets/vault";
const PORT_NAME: &str = "workspace";

fn meta(ctx: &DeveloperContext<'_>, name: String, component: &str) -> ObjectMeta {
    let company = ctx.company;
    ObjectMeta {
        name: Some(name),
        namespace: Some(company.names.namespace().to_owned()),
        labels: Some(labels::with_component(
            labels::developer(company.names.company(), ctx.names.name()),
            component,
        )),
        owner_references: ctx.owner().map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The workspace's own identity; no API token is mounted into the pod.
pub fn service_account(ctx: &DeveloperContext<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(ctx, ctx.names.service_account(), "workspace"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Headless Service: stable DNS for the pod and the ingress's backend.
pub fn service(ctx: &DeveloperContext<'_>) -> Service {
    let company = ctx.company;
    Service {
        metadata: meta(ctx, ctx.names.workspace(), "workspace"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels::workspace_selector(
                company.names.company(),
                ctx.names.name(),
            )),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: company.config.workspace.port,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The container hardening every Enclave container gets.
pub(super) fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

pub(super) fn resources(r: &Resources) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(r.cpu_request.clone())),
            ("memory".to_owned(), Quantity(r.memory_request.clone())),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(r.cpu_limit.clone())),
            ("memory".to_owned(), Quantity(r.memory_limit.clone())),
        ])),
        ..ResourceRequirements::default()
    }
}

pub(super) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Logs in to Vault with the pod's own projected token, writes the
/// developer's secrets into the memory volume and clones the company
/// repository on first start. Runs the operator's own image.
fn init_container(ctx: &DeveloperContext<'_>) -> Container {
    let company = ctx.company;
    let vault = &company.config.vault;
    let mut args = vec![
        "workspace-init".to_owned(),
        "--vault-address".into(),
        vault.address.clone(),
        "--auth-mount".into(),
        vault.auth_mount.clone(),
        "--role".into(),
        ctx.names.vault_role(),
        "--token-file".into(),
        format!("{VAULT_TOKEN_DIR}/token"),
        "--kv-mount".into(),
        vault.kv_mount.clone(),
        "--developer-path".into(),
        ctx.names.kv_developer(),
        "--shared-path".into(),
        format!("{}/shared/dev", company.names.kv_company_root()),
        "--secrets-dir".into(),
        SECRETS_DIR.into(),
        "--home".into(),
        HOME.into(),
    ];
    let ca = vault_ca(company.config, company.names.vault_ca_config_map());
    if let Some((ca_args, _, _)) = &ca {
        args.extend(ca_args.iter().cloned());
    }
    if let Some(repo) = &company.settings.git_repository {
        args.extend(["--git-repository".into(), repo.clone()]);
        if let Some(branch) = &ctx.settings.git_branch {
            args.extend(["--git-branch".into(), branch.clone()]);
        }
    }
    Container {
        name: "workspace-init".into(),
        image: Some(company.config.operator_image.clone()),
        image_pull_policy: Some("Always".into()),
        args: Some(args),
        resources: Some(resources(&init_resources())),
        security_context: Some(hardened()),
        volume_mounts: Some(
            [
                mount("vault-token", VAULT_TOKEN_DIR, true),
                mount("secrets", SECRETS_DIR, false),
                mount("home", HOME, false),
                mount("tmp", "/tmp", false),
            ]
            .into_iter()
            .chain(ca.map(|(_, _, m)| m))
            .collect(),
        ),
        ..Container::default()
    }
}

/// Where init steps find Vault's CA bundle, when it is private.
const VAULT_CA_DIR: &str = "/etc/enclave/vault-ca";

/// The init step's `--vault-ca-file`, its volume and its mount, when the
/// operator has a private CA for Vault (its ConfigMap in the namespace).
pub(super) fn vault_ca(
    config: &OperatorConfig,
    config_map: &str,
) -> Option<(Vec<String>, Volume, VolumeMount)> {
    config.vault.ca_pem.as_ref()?;
    Some((
        vec!["--vault-ca-file".into(), format!("{VAULT_CA_DIR}/ca.crt")],
        Volume {
            name: "vault-ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_owned(),
                default_mode: Some(0o444),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount("vault-ca", VAULT_CA_DIR, true),
    ))
}

/// What an init step (the operator's image reading Vault) gets.
pub(super) fn init_resources() -> Resources {
    Resources {
        cpu_request: "100m".into(),
        cpu_limit: "500m".into(),
        memory_request: "64Mi".into(),
        memory_limit: "256Mi".into(),
    }
}

/// A memory-backed volume: secrets never touch a disk.
pub(super) fn memory_volume(name: &str, limit: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(limit.into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A scratch volume for `/tmp` (the root file system is read-only).
pub(super) fn tmp_volume() -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("2Gi".into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The pod's own short-lived token for Vault (`audience`), projected.
pub(super) fn vault_token_volume(audience: &str) -> Volume {
    Volume {
        name: "vault-token".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o400),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.to_owned()),
                    expiration_seconds: Some(600),
                    path: "token".into(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Pod-level hardening: non-root as `id`, the runtime's seccomp profile.
pub(super) fn pod_security(id: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(id),
        run_as_group: Some(id),
        fs_group: Some(id),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn workspace_container(ctx: &DeveloperContext<'_>) -> Container {
    let port = ctx.company.config.workspace.port;
    let probe = |initial: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(PORT_NAME.into()),
            host: None,
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        ..Probe::default()
    };
    Container {
        name: "workspace".into(),
        image: Some(ctx.settings.image.clone()),
        image_pull_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(vec![
            env("HOME", HOME),
            env("ENCLAVE_SECRETS_DIR", SECRETS_DIR),
            env("DBT_PROFILES_DIR", SECRETS_DIR),
        ]),
        resources: Some(resources(&ctx.settings.resources)),
        security_context: Some(hardened()),
        readiness_probe: Some(probe(5)),
        liveness_probe: Some(probe(30)),
        volume_mounts: Some(vec![
            mount("home", HOME, false),
            mount("secrets", SECRETS_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    }
}

fn volumes(ctx: &DeveloperContext<'_>) -> Vec<Volume> {
    vec![
        Volume {
            name: "home".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: ctx.names.home_claim(),
                read_only: None,
            }),
            ..Volume::default()
        },
        memory_volume("secrets", "16Mi"),
        tmp_volume(),
        vault_token_volume(&ctx.company.config.vault.audience),
    ]
    .into_iter()
    .chain(vault_ca(ctx.company.config, ctx.company.names.vault_ca_config_map()).map(|(_, v, _)| v))
    .collect()
}

/// The StatefulSet of the one workspace pod (zero while suspended).
pub fn stateful_set(ctx: &DeveloperContext<'_>) -> StatefulSet {
    let company = ctx.company;
    let selector = labels::workspace_selector(company.names.company(), ctx.names.name());
    let id = ctx.settings.posix_id;
    StatefulSet {
        metadata: meta(ctx, ctx.names.workspace(), "workspace"),
        spec: StatefulSetSpec {
            // One pod, or none while suspended (data stays).
            replicas: Some(i32::from(!ctx.settings.suspended)),
            service_name: Some(ctx.names.workspace()),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ctx.names.service_account()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    host_network: Some(false),
                    host_pid: Some(false),
                    host_ipc: Some(false),
                    security_context: Some(pod_security(id)),
                    init_containers: Some(vec![init_container(ctx)]),
                    containers: vec![workspace_container(ctx)],
                    volumes: Some(volumes(ctx)),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}
