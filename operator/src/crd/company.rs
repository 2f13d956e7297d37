use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    DeletionPolicy, POSITIVE_QUANTITY, POSITIVE_QUANTITY_MESSAGE, ResourceSettings,
};
use super::condition::Condition;

/// A customer company: one isolated tenant with its own namespace, database,
/// file system and Vault paths.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "enclave.dev",
    version = "v1alpha1",
    kind = "Company",
    plural = "companies",
    shortname = "co",
    category = "enclave",
    status = "CompanyStatus",
    derive = "PartialEq",
    doc = "A customer company: Enclave gives it an isolated namespace, a Postgres database, a file system and Vault paths.",
    cel,
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(name = "Database", type_ = "string", json_path = ".spec.database.mode"),
    printcolumn(name = "Developers", type_ = "integer", json_path = ".status.developerCount"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = "1"),
    printcolumn(name = "DatabaseDeletion", type_ = "string", json_path = ".status.deletionPolicies.database", priority = "1"),
    printcolumn(name = "StorageDeletion", type_ = "string", json_path = ".status.deletionPolicies.storage", priority = "1"),
    printcolumn(name = "SecretsDeletion", type_ = "string", json_path = ".status.deletionPolicies.secrets", priority = "1"),
    printcolumn(name = "Credentials", type_ = "integer", json_path = ".status.database.credentialsVersion", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message("Company name must be at most 40 characters (it is part of the namespace, RDS and Vault names)").field_path(".metadata.name"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-]?[a-z0-9])*$')").message("Company name must start with a lowercase letter and contain only lowercase letters, digits and single hyphens, not ending in a hyphen (it is part of DNS, RDS and Postgres names)").field_path(".metadata.name"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.__namespace__) ? self.__namespace__ : '') == (has(oldSelf.__namespace__) ? oldSelf.__namespace__ : '')").message("spec.namespace is immutable: create a new Company to move a tenant"))]
pub struct CompanySpec {
    /// Human-readable name of the company, shown in tools; not used in any identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,

    /// Namespace that holds the company's workspaces. Defaults to `company-<name>`.
    /// Immutable. May not be a system namespace (`default`, `kube-*`, `openshift-*`,
    /// `enclave-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("!(self in ['default', 'enclave-system']) && !self.startsWith('kube-') && !self.startsWith('openshift-')").message("must not be a system namespace (default, kube-*, openshift-*, enclave-system)"))]
    pub namespace: Option<String>,

    /// Resource quota of the company namespace. Unset fields take the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,

    /// Which traffic may reach and leave the company's workspaces. Everything else is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,

    /// The company's Postgres database.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// The company's file storage. When neither `fsx` nor `volume` is set, the
    /// operator's default backend is used.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Defaults for the company's developer workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceDefaults>,

    /// The company's secrets in Vault (shared and personal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSpec>,

    /// Optional company-specific controller: gets its own ServiceAccount and a
    /// Vault role limited to this company's secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerSpec>,

    /// While true, deleting the Company is held: the finalizer stays and a
    /// condition says why. Set to false to allow deletion.
    #[serde(default)]
    pub deletion_protection: bool,
}

/// Hard limits of the company namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Total CPU the namespace may request and use, e.g. `16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub cpu: Option<Quantity>,
    /// Total memory the namespace may request and use, e.g. `64Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub memory: Option<Quantity>,
    /// Most pods the namespace may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub pods: Option<i32>,
    /// Total persistent storage the namespace may claim, e.g. `1Ti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub storage: Option<Quantity>,
}

/// Allowed traffic of the company's workspaces on top of default-deny.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Namespaces (for example the platform's ingress controller) that may reach
    /// the workspaces' port. Empty: the operator's default list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub ingress_namespaces: Vec<String>,
    /// Extra destinations the workspaces may reach (warehouse, git host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub egress: Vec<EgressRule>,
}

/// One allowed egress destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination network in CIDR notation, e.g. `10.20.0.0/16`. Link-local
    /// ranges (the cloud metadata endpoint) are refused; wider ranges always
    /// exclude 169.254.169.254.
    #[schemars(length(max = 43))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("must be a CIDR such as 10.20.0.0/16"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || !(cidr('169.254.0.0/16').containsCIDR(self) || (cidr(self).ip().family() == 6 && cidr('fe80::/10').containsCIDR(self)))").message("link-local ranges (cloud metadata endpoint) may not be allowed"))]
    pub cidr: String,
    /// Destination TCP ports; empty means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
}

/// How the company gets its Postgres database.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DatabaseMode {
    /// A dedicated RDS PostgreSQL instance named `enclave-<company>`.
    #[default]
    Dedicated,
    /// A database and login role inside the operator's shared PostgreSQL instance.
    Shared,
}

/// The company's Postgres database. Credentials are generated by the operator
/// and stored only in Vault.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == oldSelf.mode").message("database.mode is immutable: migrate the data to a new Company instead"))]
#[x_kube(validation = Rule::new("self.mode == 'Dedicated' || !(has(self.instanceClass) || has(self.engineVersion) || has(self.allocatedStorageGiB) || has(self.kmsKeyId) || has(self.backupRetentionDays))").message("instanceClass, engineVersion, allocatedStorageGiB, kmsKeyId and backupRetentionDays apply only to mode Dedicated"))]
pub struct DatabaseSpec {
    /// `Dedicated` (an RDS instance per company, the default) or `Shared` (a
    /// database in the operator's shared instance). Immutable.
    #[serde(default)]
    pub mode: DatabaseMode,
    /// RDS instance class, e.g. `db.t4g.medium`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), pattern(r"^db\.[a-z0-9]+\.[a-z0-9]+$"))]
    pub instance_class: Option<String>,
    /// PostgreSQL engine version, e.g. `16` or `16.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), pattern(r"^[0-9]+(\.[0-9]+){0,2}$"))]
    pub engine_version: Option<String>,
    /// Allocated storage in GiB (20 to 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 20, max = 65536))]
    pub allocated_storage_gi_b: Option<i32>,
    /// KMS key (id or ARN) that encrypts the instance at rest. Unset: the
    /// operator's default key, else the AWS-managed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^[A-Za-z0-9:/_+=,.@-]+$"))]
    pub kms_key_id: Option<String>,
    /// Days of automated backups (0 to 35).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 35))]
    pub backup_retention_days: Option<i32>,
    /// What happens to the database when the Company is deleted: `Snapshot`
    /// (default: final snapshot, then delete), `Delete` or `Retain`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Rotate the generated credentials this often, in days (the company
    /// controller restarts onto the new ones). Unset: only when asked with
    /// the `enclave.dev/rotate-credentials` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub rotate_every_days: Option<i32>,
}

/// The company's file storage: an FSx file system or a plain volume per developer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.fsx) && has(self.volume))").message("set at most one of storage.fsx and storage.volume"))]
#[x_kube(validation = Rule::new("has(self.fsx) == has(oldSelf.fsx) && has(self.volume) == has(oldSelf.volume)").message("the storage kind (fsx or volume) is immutable"))]
#[x_kube(validation = Rule::new("!(has(self.volume) && has(self.deletionPolicy) && self.deletionPolicy == 'Snapshot')").message("storage.deletionPolicy Snapshot archives directories on FSx; a per-developer volume cannot be archived: use Retain (the default for volumes) or Delete").field_path(".deletionPolicy"))]
pub struct StorageSpec {
    /// An FSx file system for the company (created, or an existing one given by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsx: Option<FsxSpec>,
    /// One PersistentVolumeClaim per developer from a StorageClass, for clusters without FSx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSpec>,
    /// What happens to the file system and developer directories when they are
    /// no longer implied: `Snapshot` (FSx only, its default: final backup or
    /// archive), `Delete` or `Retain` (the default for volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// FSx file system type.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FsxType {
    /// FSx for OpenZFS, mounted over NFS.
    #[default]
    OpenZfs,
    /// FSx for Lustre, mounted with the FSx CSI driver.
    Lustre,
}

/// An FSx file system for one company.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == oldSelf.type").message("storage.fsx.type is immutable"))]
#[x_kube(validation = Rule::new("(has(self.fileSystemId) ? self.fileSystemId : '') == (has(oldSelf.fileSystemId) ? oldSelf.fileSystemId : '')").message("storage.fsx.fileSystemId is immutable"))]
#[x_kube(validation = Rule::new("self.type != 'Lustre' || !has(self.storageCapacityGiB) || self.storageCapacityGiB >= 1200").message("Lustre file systems need storageCapacityGiB of at least 1200"))]
pub struct FsxSpec {
    /// `OpenZfs` (default) or `Lustre`. Immutable.
    #[serde(default, rename = "type")]
    pub fsx_type: FsxType,
    /// Use this existing file system instead of creating one; only the
    /// company's root directory on it is Enclave's. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^fs-[0-9a-f]{8,21}$"))]
    pub file_system_id: Option<String>,
    /// Capacity in GiB (OpenZFS: 64 to 524288; Lustre: at least 1200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 524_288))]
    pub storage_capacity_gi_b: Option<i32>,
    /// Deployment type, e.g. `SINGLE_AZ_1` (OpenZFS) or `PERSISTENT_2` (Lustre).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Z0-9_]{1,32}$"))]
    pub deployment_type: Option<String>,
    /// Throughput capacity in MB/s (OpenZFS) or per-unit throughput (Lustre).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub throughput_capacity: Option<i32>,
    /// Subnets for the file system. Empty: the operator's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6), inner(pattern(r"^subnet-[0-9a-f]{8,17}$")))]
    pub subnet_ids: Vec<String>,
    /// Security groups for the file system. Empty: the operator's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5), inner(pattern(r"^sg-[0-9a-f]{8,17}$")))]
    pub security_group_ids: Vec<String>,
    /// KMS key (id or ARN) that encrypts the file system at rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(r"^[A-Za-z0-9:/_+=,.@-]+$"))]
    pub kms_key_id: Option<String>,
}

/// Per-developer volumes from a StorageClass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// StorageClass of the developer volumes. Unset: the operator's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub storage_class_name: Option<String>,
    /// Default size of each developer volume, e.g. `50Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub size: Option<Quantity>,
}

/// Defaults for the company's developer workspaces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceDefaults {
    /// Container image of the workspaces, e.g. `registry.example.com/workspace:1.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    )]
    pub image: Option<String>,
    /// Images a Developer may choose for their own workspace
    /// (`Developer.spec.workspace.image`) besides `image`: exact references,
    /// or prefixes ending in `/` (every image below that path). Any other
    /// is refused (`ImageNotAllowed`). Only the platform sets it: a company
    /// admin, who may edit Developers, cannot run arbitrary code as another
    /// person.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 512),
            pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
        )
    )]
    pub allowed_images: Vec<String>,
    /// CPU and memory of each workspace container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSettings>,
    /// Git repository cloned into each developer's folder on first start
    /// (`https://…`, `ssh://…` or `git@host:path`), without credentials:
    /// each developer's git key comes from Vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('^https://[^/]*@') && !self.matches('^ssh://[^/@]*:[^/@]*@')").message("must not carry credentials (user:password@ or token@): the clone uses each developer's key from Vault (secret git, key ssh_private_key)"))]
    #[schemars(
        length(min = 1, max = 2048),
        pattern(r"^(https://|ssh://|git@)[A-Za-z0-9._~:/?#@!$&()*+,;=%-]+$")
    )]
    pub git_repository: Option<String>,
}

/// The company's secrets in Vault.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// What deleting the Company (its shared secrets) or a Developer (their
    /// personal secrets) does to them: `Retain` (default: kept in Vault,
    /// readable by nobody Enclave gave access to) or `Delete` (every version
    /// and the metadata). The database credentials Enclave generated follow
    /// the database's policy instead: they go only with a deleted database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != 'Snapshot'").message("secrets have no snapshot: use Retain or Delete"))]
    pub deletion_policy: Option<DeletionPolicy>,
}

/// The company-specific controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControllerSpec {
    /// Container image of the company's own controller.
    #[schemars(
        length(min = 1, max = 512),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    )]
    pub image: String,
}

/// Observed state of a Company. Never holds a credential: only where it lives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompanyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `NamespaceReady`, `VaultReady`, `DatabaseReady`, `StorageReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The company namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The company database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
    /// The company storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
    /// How many Developers the company has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub developer_count: Option<i32>,
    /// The deletion policies in force (the storage default depends on its kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policies: Option<DeletionPolicies>,
    /// During deletion: the deletion steps already carried out
    /// (`database`, `storage`, `vault`), so a later pass does not repeat them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried_out: Vec<String>,
}

/// What deleting the Company does to its data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionPolicies {
    /// The database's.
    pub database: DeletionPolicy,
    /// The file system's and the developer directories'.
    pub storage: DeletionPolicy,
    /// The shared and personal secrets' in Vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<DeletionPolicy>,
}

/// Where the company database is; the credentials are in Vault at `credentialsPath`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// RDS instance identifier (Dedicated) or shared instance name (Shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// Host name clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Port clients connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Vault KV path of the credentials (never the credentials themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_path: Option<String>,
    /// Lifecycle phase, e.g. `Creating`, `Available`, `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// KV version of the credentials the database uses (rotation raises it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_version: Option<i64>,
    /// The value of the `enclave.dev/rotate-credentials` annotation whose
    /// rotation was carried out last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_for: Option<String>,
    /// When the credentials in use were generated or last rotated (first
    /// seen, for a database older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Where the company storage is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    /// `Fsx` or `Volume`: the backend in use (fixed at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// FSx file system id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_system_id: Option<String>,
    /// Company root directory on the file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_path: Option<String>,
    /// DNS name clients mount the file system by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Lustre mount name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_name: Option<String>,
}
