//! A tenant's effective settings: its spec merged with the operator's
//! defaults, resolved once so every builder reads the same values.

use serde::Serialize;

use super::CompanyContext;
use crate::{
    config::{DefaultStorage, OperatorConfig},
    crd::{
        Company, CompanyStatus, DatabaseMode, DeletionPolicy, Developer, DeveloperRole, EgressRule,
        FsxType, ResourceSettings,
    },
    names::{CompanyNames, DeveloperNames},
};

/// `status.storage.kind` of a Company on FSx.
pub const STORAGE_KIND_FSX: &str = "Fsx";
/// `status.storage.kind` of a Company on per-developer volumes.
pub const STORAGE_KIND_VOLUME: &str = "Volume";

/// What the controllers observed of a Company's external resources and
/// pass to the builders explicitly: the builders never read status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The storage backend recorded at the Company's first reconcile:
    /// changing the operator's default must not move a Company's data.
    pub storage_backend: Option<DefaultStorage>,
    /// The company's file system, once FSx reported it; the volumes that
    /// mount it are built only then.
    pub file_system: Option<FileSystemFacts>,
    /// The company database, once it is known.
    pub database: Option<DatabaseFacts>,
}

/// The company database as its status records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseFacts {
    /// Host clients connect to.
    pub endpoint: Option<String>,
    /// Port.
    pub port: Option<i32>,
    /// Database name.
    pub name: Option<String>,
    /// The KV version of the credentials the database uses (a rotation
    /// raises it, and the company controller restarts onto it).
    pub credentials_version: Option<i64>,
}

/// A company file system as FSx reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSystemFacts {
    /// Its id.
    pub id: String,
    /// The DNS name clients mount it by.
    pub dns_name: String,
    /// The Lustre mount name (empty for OpenZFS).
    pub mount_name: String,
}

impl Observed {
    /// The facts a Company's status records (what earlier reconciles
    /// observed); none for a new Company.
    pub fn recorded(status: Option<&CompanyStatus>) -> Self {
        let storage = status.and_then(|s| s.storage.as_ref());
        Self {
            storage_backend: match storage.and_then(|s| s.kind.as_deref()) {
                Some(STORAGE_KIND_VOLUME) => Some(DefaultStorage::Volume),
                Some(STORAGE_KIND_FSX) => Some(DefaultStorage::Fsx),
                _ => None,
            },
            file_system: storage.and_then(|s| {
                Some(FileSystemFacts {
                    id: s.file_system_id.clone()?,
                    dns_name: s.dns_name.clone()?,
                    mount_name: s.mount_name.clone().unwrap_or_default(),
                })
            }),
            database: status
                .and_then(|s| s.database.as_ref())
                .map(|d| DatabaseFacts {
                    endpoint: d.endpoint.clone(),
                    port: d.port,
                    name: d.name.clone(),
                    credentials_version: d.credentials_version,
                }),
        }
    }
}

/// Where a company's files live.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StorageKind {
    /// An FSx file system (created, or an existing one).
    Fsx {
        /// OpenZFS or Lustre.
        fsx_type: FsxType,
        /// Existing file system id, if the company uses one.
        existing_file_system_id: Option<String>,
        /// Capacity of a created file system, GiB.
        capacity_gib: i32,
        /// Deployment type of a created file system.
        deployment_type: String,
        /// Throughput of a created file system.
        throughput_capacity: i32,
        /// Subnets.
        subnet_ids: Vec<String>,
        /// Security groups.
        security_group_ids: Vec<String>,
        /// KMS key.
        kms_key_id: Option<String>,
    },
    /// One volume per developer from a StorageClass.
    Volume {
        /// The StorageClass.
        storage_class: String,
    },
}

impl StorageKind {
    /// The value recorded in `status.storage.kind`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Fsx { .. } => STORAGE_KIND_FSX,
            Self::Volume { .. } => STORAGE_KIND_VOLUME,
        }
    }
}

/// Database settings after defaults.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSettings {
    /// Dedicated or Shared.
    pub mode: DatabaseMode,
    /// RDS instance class.
    pub instance_class: String,
    /// Engine version.
    pub engine_version: String,
    /// GiB.
    pub allocated_storage_gib: i32,
    /// KMS key, if any.
    pub kms_key_id: Option<String>,
    /// Days.
    pub backup_retention_days: i32,
    /// On deletion.
    pub deletion_policy: DeletionPolicy,
}

/// CPU and memory of a container after defaults.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU request.
    pub cpu_request: String,
    /// CPU limit.
    pub cpu_limit: String,
    /// Memory request.
    pub memory_request: String,
    /// Memory limit.
    pub memory_limit: String,
}

impl Resources {
    fn overlay(&self, over: Option<&ResourceSettings>) -> Self {
        let Some(over) = over else {
            return self.clone();
        };
        let pick = |q: &Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                    d: &String| {
            q.as_ref().map_or_else(|| d.clone(), |q| q.0.clone())
        };
        Self {
            cpu_request: pick(&over.cpu_request, &self.cpu_request),
            cpu_limit: pick(&over.cpu_limit, &self.cpu_limit),
            memory_request: pick(&over.memory_request, &self.memory_request),
            memory_limit: pick(&over.memory_limit, &self.memory_limit),
        }
    }
}

/// A company's effective settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompanySettings {
    /// Company name.
    pub company: String,
    /// Namespace.
    pub namespace: String,
    /// Namespace CPU.
    pub cpu: String,
    /// Namespace memory.
    pub memory: String,
    /// Namespace pods.
    pub pods: i32,
    /// Namespace storage.
    pub storage_quota: String,
    /// Size of a developer's directory or volume when the Developer names
    /// none: `spec.storage.volume.size`, else the operator's default.
    pub developer_quota: String,
    /// Namespaces that may reach workspaces.
    pub ingress_namespaces: Vec<String>,
    /// Extra egress of the company.
    pub egress: Vec<EgressRule>,
    /// Database.
    pub database: DatabaseSettings,
    /// Storage.
    pub storage: StorageKind,
    /// On deletion of storage.
    pub storage_deletion_policy: DeletionPolicy,
    /// On deletion of the Company (shared secrets) or a Developer (personal).
    pub secrets_deletion_policy: DeletionPolicy,
    /// Default workspace image.
    pub workspace_image: String,
    /// Further images Developers may choose (exact, or prefixes ending in `/`).
    pub allowed_images: Vec<String>,
    /// Default workspace resources.
    pub workspace_resources: Resources,
    /// Repository cloned into new workspaces.
    pub git_repository: Option<String>,
    /// Company controller image, if any.
    pub controller_image: Option<String>,
    /// Deletion held while true.
    pub deletion_protection: bool,
}

impl CompanySettings {
    /// Merges `company`'s spec with `config` and what was `observed`.
    pub fn resolve(
        company: &Company,
        config: &OperatorConfig,
        names: &CompanyNames,
        observed: &Observed,
    ) -> Self {
        let spec = &company.spec;
        let quota = spec.quota.clone().unwrap_or_default();
        let network = spec.network.clone().unwrap_or_default();
        let db = &spec.database;
        let dbc = &config.database;
        let sc = &config.storage;
        // A Company that names no backend keeps the one recorded at its
        // first reconcile: changing the operator's default must not move data.
        let default_backend = observed.storage_backend.unwrap_or(sc.default_backend);
        let storage = match (&spec.storage.fsx, &spec.storage.volume, default_backend) {
            (Some(fsx), _, _) => StorageKind::Fsx {
                fsx_type: fsx.fsx_type,
                existing_file_system_id: fsx.file_system_id.clone(),
                capacity_gib: fsx.storage_capacity_gi_b.unwrap_or(match fsx.fsx_type {
                    FsxType::OpenZfs => sc.fsx_capacity_gib,
                    FsxType::Lustre => 1200,
                }),
                deployment_type: fsx.deployment_type.clone().unwrap_or_else(|| {
                    match fsx.fsx_type {
                        FsxType::OpenZfs => "SINGLE_AZ_HA_2",
                        FsxType::Lustre => "PERSISTENT_2",
                    }
                    .to_owned()
                }),
                throughput_capacity: fsx.throughput_capacity.unwrap_or(match fsx.fsx_type {
                    FsxType::OpenZfs => 160,
                    FsxType::Lustre => 125,
                }),
                subnet_ids: non_empty_or(&fsx.subnet_ids, &sc.fsx_subnet_ids),
                security_group_ids: non_empty_or(
                    &fsx.security_group_ids,
                    &sc.fsx_security_group_ids,
                ),
                kms_key_id: fsx.kms_key_id.clone(),
            },
            (None, Some(volume), _) => StorageKind::Volume {
                storage_class: volume
                    .storage_class_name
                    .clone()
                    .unwrap_or_else(|| sc.storage_class.clone()),
            },
            (None, None, DefaultStorage::Fsx) => StorageKind::Fsx {
                fsx_type: FsxType::OpenZfs,
                existing_file_system_id: None,
                capacity_gib: sc.fsx_capacity_gib,
                deployment_type: "SINGLE_AZ_HA_2".into(),
                throughput_capacity: 160,
                subnet_ids: sc.fsx_subnet_ids.clone(),
                security_group_ids: sc.fsx_security_group_ids.clone(),
                kms_key_id: None,
            },
            (None, None, DefaultStorage::Volume) => StorageKind::Volume {
                storage_class: sc.storage_class.clone(),
            },
        };
        let wc = &config.workspace;
        let defaults = Resources {
            cpu_request: wc.cpu_request.clone(),
            cpu_limit: wc.cpu_limit.clone(),
            memory_request: wc.memory_request.clone(),
            memory_limit: wc.memory_limit.clone(),
        };
        let workspace = spec.workspace.clone().unwrap_or_default();
        Self {
            company: names.company().to_owned(),
            namespace: names.namespace().to_owned(),
            developer_quota: spec
                .storage
                .volume
                .as_ref()
                .and_then(|v| v.size.as_ref())
                .map_or_else(|| sc.developer_quota.clone(), |q| q.0.clone()),
            cpu: quota.cpu.map_or_else(|| config.tenant.cpu.clone(), |q| q.0),
            memory: quota
                .memory
                .map_or_else(|| config.tenant.memory.clone(), |q| q.0),
            pods: quota.pods.unwrap_or(config.tenant.pods),
            storage_quota: quota
                .storage
                .map_or_else(|| config.tenant.storage.clone(), |q| q.0),
            ingress_namespaces: non_empty_or(
                &network.ingress_namespaces,
                &config.network.ingress_namespaces,
            ),
            egress: network.egress,
            database: DatabaseSettings {
                mode: db.mode,
                instance_class: db
                    .instance_class
                    .clone()
                    .unwrap_or_else(|| dbc.instance_class.clone()),
                engine_version: db
                    .engine_version
                    .clone()
                    .unwrap_or_else(|| dbc.engine_version.clone()),
                allocated_storage_gib: db
                    .allocated_storage_gi_b
                    .unwrap_or(dbc.allocated_storage_gib),
                kms_key_id: db
                    .kms_key_id
                    .clone()
                    .or_else(|| (!dbc.kms_key_id.is_empty()).then(|| dbc.kms_key_id.clone())),
                backup_retention_days: db
                    .backup_retention_days
                    .unwrap_or(dbc.backup_retention_days),
                deletion_policy: db.deletion_policy,
            },
            storage_deletion_policy: spec.storage.deletion_policy.unwrap_or(match storage {
                StorageKind::Fsx { .. } => DeletionPolicy::Snapshot,
                StorageKind::Volume { .. } => DeletionPolicy::Retain,
            }),
            storage,
            secrets_deletion_policy: spec
                .secrets
                .as_ref()
                .and_then(|s| s.deletion_policy)
                .unwrap_or(DeletionPolicy::Retain),
            workspace_image: workspace.image.unwrap_or_else(|| wc.image.clone()),
            allowed_images: workspace.allowed_images,
            workspace_resources: defaults.overlay(workspace.resources.as_ref()),
            git_repository: workspace.git_repository,
            controller_image: spec.controller.as_ref().map(|c| c.image.clone()),
            deletion_protection: spec.deletion_protection,
        }
    }
}

impl CompanySettings {
    /// Whether a Developer may run `image`: the company's workspace image,
    /// or one its allow-list names.
    pub fn image_allowed(&self, image: &str) -> bool {
        image == self.workspace_image
            || self
                .allowed_images
                .iter()
                .any(|a| a == image || (a.ends_with('/') && image.starts_with(a.as_str())))
    }

    /// Why the resolved settings cannot be carried out, if they cannot:
    /// what the CRD cannot check because it depends on the operator's
    /// configuration.
    pub fn problem(&self) -> Option<String> {
        (matches!(self.storage, StorageKind::Volume { .. })
            && self.storage_deletion_policy == DeletionPolicy::Snapshot)
            .then(|| {
                "spec.storage.deletionPolicy Snapshot archives directories on FSx, but this Company's storage is a per-developer volume (the operator's default backend), which cannot be archived: set it to Retain or Delete".to_owned()
            })
    }
}

fn non_empty_or(value: &[String], default: &[String]) -> Vec<String> {
    if value.is_empty() {
        default.to_vec()
    } else {
        value.to_vec()
    }
}

/// A developer's effective settings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperSettings {
    /// Developer name.
    pub name: String,
    /// Admin or Developer.
    pub role: DeveloperRole,
    /// Workspace image.
    pub image: String,
    /// Workspace resources.
    pub resources: Resources,
    /// Scaled to zero.
    pub suspended: bool,
    /// Branch checked out on first clone.
    pub git_branch: Option<String>,
    /// Size of the private directory.
    pub quota: String,
    /// POSIX uid and gid.
    pub posix_id: i64,
}

impl DeveloperSettings {
    /// Why this Developer's workspace may not run as specified: an image
    /// outside its company's allow-list.
    pub fn image_problem(&self, company: &CompanySettings) -> Option<String> {
        (!company.image_allowed(&self.image)).then(|| {
            format!(
                "spec.workspace.image {} is neither the company's workspace image ({}) nor in its spec.workspace.allowedImages; the platform team allows images on the Company",
                self.image, company.workspace_image
            )
        })
    }

    /// Merges `developer`'s spec with its company's settings.
    pub fn resolve(
        company: &CompanyContext<'_>,
        developer: &Developer,
        names: &DeveloperNames,
        posix_id: i64,
    ) -> Self {
        let spec = &developer.spec;
        let workspace = spec.workspace.clone().unwrap_or_default();
        Self {
            name: names.name().to_owned(),
            role: spec.role,
            image: workspace
                .image
                .unwrap_or_else(|| company.settings.workspace_image.clone()),
            resources: company
                .settings
                .workspace_resources
                .overlay(workspace.resources.as_ref()),
            suspended: workspace.suspended,
            git_branch: spec.git.as_ref().and_then(|g| g.branch.clone()),
            quota: spec
                .storage
                .as_ref()
                .and_then(|s| s.quota.as_ref())
                .map_or_else(|| company.settings.developer_quota.clone(), |q| q.0.clone()),
            posix_id,
        }
    }
}
