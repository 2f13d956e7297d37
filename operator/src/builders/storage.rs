//! Volume objects and the storage-prep Job. A developer pod only ever
//! mounts a volume whose root is its own directory: never a subPath of a
//! company-wide volume (a subPath is no isolation boundary).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicySpec},
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            CSIPersistentVolumeSource, Capabilities, Container, NFSVolumeSource, ObjectReference,
            PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, PodSecurityContext, PodSpec,
            PodTemplateSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
            VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::LabelSelector},
};
use kube::api::ObjectMeta;

use super::{CompanyContext, DeveloperContext, FileSystemFacts, StorageKind, labels};
use crate::{crd::FsxType, storage_prep::Action as PrepAction};

const FS_ROOT_MOUNT: &str = "/mnt/fsx-root";

/// Volume source of `path` (absolute, below the file system root; empty
/// for the root itself) on file system `fs`.
fn fsx_source(fs: &FileSystemFacts, fsx_type: FsxType, path: &str) -> PersistentVolumeSpec {
    match fsx_type {
        FsxType::OpenZfs => PersistentVolumeSpec {
            // OpenZFS exports the root volume as /fsx.
            nfs: Some(NFSVolumeSource {
                server: fs.dns_name.clone(),
                path: format!("/fsx{path}"),
                read_only: None,
            }),
            mount_options: Some(vec!["nfsvers=4.1".into()]),
            ..PersistentVolumeSpec::default()
        },
        FsxType::Lustre => PersistentVolumeSpec {
            csi: Some(CSIPersistentVolumeSource {
                driver: "fsx.csi.aws.com".into(),
                volume_handle: if path.is_empty() {
                    fs.id.clone()
                } else {
                    format!("{}:{path}", fs.id)
                },
                volume_attributes: Some(BTreeMap::from([
                    ("dnsname".to_owned(), fs.dns_name.clone()),
                    // Lustre mounts a subdirectory as <mountname>/<path>.
                    ("mountname".to_owned(), format!("{}{path}", fs.mount_name)),
                ])),
                ..CSIPersistentVolumeSource::default()
            }),
            ..PersistentVolumeSpec::default()
        },
    }
}

fn meta(name: &str, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels.clone()),
        ..ObjectMeta::default()
    }
}

/// A retained, pre-bound PersistentVolume rooted at `path` of the file system.
fn static_volume(
    fs: &FileSystemFacts,
    fsx_type: FsxType,
    path: &str,
    metadata: ObjectMeta,
    size: &str,
    access: &str,
    claim: ObjectReference,
) -> PersistentVolume {
    PersistentVolume {
        metadata,
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_owned(),
                Quantity(size.to_owned()),
            )])),
            access_modes: Some(vec![access.to_owned()]),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(String::new()),
            claim_ref: Some(claim),
            ..fsx_source(fs, fsx_type, path)
        }),
        ..PersistentVolume::default()
    }
}

fn claim_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}

fn claim(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    size: &str,
    class: &str,
    volume: Option<String>,
    access: &str,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![access.to_owned()]),
            storage_class_name: Some(class.to_owned()),
            volume_name: volume,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(size.to_owned()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The file system root, mounted only by the company's storage-prep Jobs in
/// the operator namespace (FSx only), so they can create the company's and
/// the developer's directories. Retained: it holds data. Built once the
/// file system was observed.
pub fn company_root(ctx: &CompanyContext<'_>) -> Option<(PersistentVolume, PersistentVolumeClaim)> {
    let StorageKind::Fsx {
        fsx_type,
        capacity_gib,
        ..
    } = &ctx.settings.storage
    else {
        return None;
    };
    let fs = ctx.observed.file_system.as_ref()?;
    let name = ctx.names.storage_root_volume();
    let operator_ns = &ctx.config.operator_namespace;
    let size = format!("{capacity_gib}Gi");
    let labels = labels::with_component(labels::company(ctx.names.company()), "company-root");
    let pv = static_volume(
        fs,
        *fsx_type,
        // The file system root: the prep Job creates the company's directory too.
        "",
        meta(&name, &labels),
        &size,
        "ReadWriteMany",
        claim_ref(operator_ns, &name),
    );
    let pvc = claim(
        operator_ns,
        &name,
        labels,
        &size,
        "",
        Some(name.clone()),
        "ReadWriteMany",
    );
    Some((pv, pvc))
}

/// Denies all traffic to and from the company's storage-prep pods in the
/// operator namespace: they only touch a volume the kubelet mounts.
pub fn prep_network_policy(ctx: &CompanyContext<'_>) -> Option<NetworkPolicy> {
    if !matches!(ctx.settings.storage, StorageKind::Fsx { .. }) {
        return None;
    }
    let selector = labels::with_component(labels::company(ctx.names.company()), "storage-prep");
    Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(ctx.names.storage_prep_policy()),
            namespace: Some(ctx.config.operator_namespace.clone()),
            labels: Some(labels::company(ctx.names.company())),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..NetworkPolicySpec::default()
        }),
    })
}

/// The developer's private volume: a PersistentVolume rooted at their
/// directory plus its claim (FSx; the volume once the file system was
/// observed), or a claim from the StorageClass (volume).
pub fn home_volume(
    ctx: &DeveloperContext<'_>,
) -> (Option<PersistentVolume>, PersistentVolumeClaim) {
    let company = ctx.company;
    let ns = company.names.namespace();
    let claim_name = ctx.names.home_claim();
    let labels = labels::with_component(
        labels::developer(company.names.company(), ctx.names.name()),
        "home",
    );
    let size = &ctx.settings.quota;
    match &company.settings.storage {
        StorageKind::Fsx { fsx_type, .. } => {
            let pv_name = ctx.names.home_volume();
            let pv = company.observed.file_system.as_ref().map(|fs| {
                static_volume(
                    fs,
                    *fsx_type,
                    &ctx.names.storage_path(),
                    meta(&pv_name, &labels),
                    size,
                    "ReadWriteOnce",
                    claim_ref(ns, &claim_name),
                )
            });
            let mut pvc = claim(
                ns,
                &claim_name,
                labels,
                size,
                "",
                Some(pv_name),
                "ReadWriteOnce",
            );
            pvc.metadata.owner_references = ctx.owner().map(|o| vec![o]);
            (pv, pvc)
        }
        StorageKind::Volume { storage_class } => {
            // No owner reference: with a dynamically provisioned volume the
            // claim is the data; it goes only through the deletion policy.
            (
                None,
                claim(
                    ns,
                    &claim_name,
                    labels,
                    size,
                    storage_class,
                    None,
                    "ReadWriteOnce",
                ),
            )
        }
    }
}

/// The Job that creates the developer's directory, owned by their uid/gid
/// with mode 0700 (FSx only; a per-developer volume needs no preparation).
/// It runs in the operator namespace, so no tenant can see or change it.
pub fn prep_job(ctx: &DeveloperContext<'_>) -> Option<Job> {
    storage_job(ctx, &ctx.names.storage_prep_job(), PrepAction::Create)
}

/// The Job that carries out the deletion policy on the developer's
/// directory: `Archive` (policy `Snapshot`) or `Delete` (FSx only).
pub fn cleanup_job(ctx: &DeveloperContext<'_>, action: PrepAction) -> Option<Job> {
    storage_job(ctx, &ctx.names.storage_cleanup_job(), action)
}

fn storage_job(ctx: &DeveloperContext<'_>, name: &str, action: PrepAction) -> Option<Job> {
    if !matches!(ctx.company.settings.storage, StorageKind::Fsx { .. }) {
        return None;
    }
    let company = ctx.company;
    let id = ctx.settings.posix_id.to_string();
    let path = ctx.names.storage_path();
    // The same pod labels as the prep Job: the deny-all policy selects both.
    let labels = labels::with_component(
        labels::developer(company.names.company(), ctx.names.name()),
        "storage-prep",
    );
    let limits = BTreeMap::from([
        ("cpu".to_owned(), Quantity("200m".into())),
        ("memory".to_owned(), Quantity("64Mi".into())),
    ]);
    let container = Container {
        name: "storage-prep".into(),
        image: Some(company.config.operator_image.clone()),
        image_pull_policy: Some("Always".into()),
        args: Some(vec![
            "storage-prep".into(),
            "--root".into(),
            FS_ROOT_MOUNT.into(),
            "--path".into(),
            ctx.names.storage_path().trim_start_matches('/').to_owned(),
            "--uid".into(),
            id.clone(),
            "--gid".into(),
            id,
            "--mode".into(),
            "0700".into(),
            "--action".into(),
            action.as_arg().into(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..ResourceRequirements::default()
        }),
        // Root only to chown; every other capability dropped.
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["CHOWN".into(), "FOWNER".into(), "DAC_OVERRIDE".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "fsx-root".into(),
            mount_path: FS_ROOT_MOUNT.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Some(Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(company.config.operator_namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                "enclave.dev/storage-path".to_owned(),
                path,
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(4),
            active_deadline_seconds: Some(600),
            ttl_seconds_after_finished: Some(3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some("enclave-storage-prep".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "fsx-root".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: company.names.storage_root_volume(),
                            read_only: Some(false),
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// Everything the FSx backend needs for one company.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSystemRequest {
    /// Company name.
    pub company: String,
    /// OpenZFS or Lustre.
    pub fsx_type: FsxType,
    /// An existing file system the company uses (Enclave owns only its root directory there).
    pub existing_file_system_id: Option<String>,
    /// GiB.
    pub capacity_gib: i32,
    /// Deployment type.
    pub deployment_type: String,
    /// OpenZFS MB/s, or Lustre MB/s per TiB.
    pub throughput_capacity: i32,
    /// Subnets.
    pub subnet_ids: Vec<String>,
    /// Security groups.
    pub security_group_ids: Vec<String>,
    /// KMS key.
    pub kms_key_id: Option<String>,
    /// Idempotency token of CreateFileSystem.
    pub request_token: String,
    /// Idempotency token of DeleteFileSystem.
    pub delete_request_token: String,
    /// The id an earlier reconcile recorded: looked up by id (one call)
    /// instead of a scan of the account's file systems by tag.
    pub recorded_file_system_id: Option<String>,
    /// Tags on the file system and its final backup; adoption requires all.
    pub tags: BTreeMap<String, String>,
    /// On deletion.
    pub deletion_policy: crate::crd::DeletionPolicy,
}

/// The file system `ctx`'s Company implies; `None` in volume mode.
pub fn file_system_request(ctx: &CompanyContext<'_>) -> Option<FileSystemRequest> {
    let StorageKind::Fsx {
        fsx_type,
        existing_file_system_id,
        capacity_gib,
        deployment_type,
        throughput_capacity,
        subnet_ids,
        security_group_ids,
        kms_key_id,
    } = &ctx.settings.storage
    else {
        return None;
    };
    Some(FileSystemRequest {
        company: ctx.names.company().to_owned(),
        fsx_type: *fsx_type,
        existing_file_system_id: existing_file_system_id.clone(),
        capacity_gib: *capacity_gib,
        deployment_type: deployment_type.clone(),
        throughput_capacity: *throughput_capacity,
        subnet_ids: subnet_ids.clone(),
        security_group_ids: security_group_ids.clone(),
        kms_key_id: kms_key_id.clone(),
        request_token: ctx.names.fsx_request_token(ctx.uid()),
        delete_request_token: ctx.names.fsx_delete_request_token(ctx.uid()),
        recorded_file_system_id: ctx.observed.file_system.as_ref().map(|f| f.id.clone()),
        tags: super::aws_tags(ctx),
        deletion_policy: ctx.settings.storage_deletion_policy,
    })
}
