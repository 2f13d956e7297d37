//! Operator configuration: the defaults a Company does not state, and where
//! the platform's shared services are. Loaded from YAML (`--config`); every
//! field has a default so `enclave plan` works without one.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read operator configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid configuration.
    #[error("invalid operator configuration {path}: {message} (see the README for the fields)")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid operator configuration: {0}")]
    Invalid(String),
}

/// Everything the operator needs to know beyond the custom resources.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// Namespace the operator runs in; storage-prep Jobs run here too.
    pub operator_namespace: String,
    /// Identifies this cluster in AWS tags, so two clusters never adopt each other's resources.
    pub cluster_id: String,
    /// Image of the operator itself (workspace init step, storage-prep Job).
    pub operator_image: String,
    /// Vault settings.
    pub vault: VaultConfig,
    /// Namespace defaults.
    pub tenant: TenantDefaults,
    /// Workspace defaults.
    pub workspace: WorkspaceConfig,
    /// Network defaults.
    pub network: NetworkConfig,
    /// Database defaults.
    pub database: DatabaseConfig,
    /// Storage defaults.
    pub storage: StorageConfig,
    /// How people are named in RBAC.
    pub rbac: RbacConfig,
    /// Where the AWS APIs are.
    pub aws: AwsConfig,
    /// How the controllers schedule their work.
    pub controller: ControllerConfig,
}

/// How the controllers schedule their work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// Seconds between drift checks of a converged tenant (each once per
    /// interval, the tenants spread over it so that thousands do not
    /// resync at once).
    pub resync_seconds: u64,
    /// Reconciles in flight at once, per kind.
    pub max_concurrent_reconciles: u16,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resync_seconds: 600,
            max_concurrent_reconciles: 8,
        }
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            operator_namespace: "enclave-system".into(),
            cluster_id: "default".into(),
            operator_image: "ghcr.io/enclave-dev/enclave:0.1.0".into(),
            vault: VaultConfig::default(),
            tenant: TenantDefaults::default(),
            workspace: WorkspaceConfig::default(),
            network: NetworkConfig::default(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            rbac: RbacConfig::default(),
            aws: AwsConfig::default(),
            controller: ControllerConfig::default(),
        }
    }
}

impl OperatorConfig {
    /// Reads and checks a YAML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config: Self = serde_saphyr::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.check()?;
        // Unreadable here (a plan on a laptop) is no error yet; `enclave
        // run` refuses to start without it.
        if !config.vault.ca_file.is_empty() {
            config.vault.ca_pem = std::fs::read_to_string(&config.vault.ca_file).ok();
        }
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let ids = &self.workspace.posix_ids;
        if ids.first < 1000 || ids.first > ids.last {
            return Err(ConfigError::Invalid(format!(
                "workspace.posixIds must satisfy 1000 <= first <= last, got {}..{}",
                ids.first, ids.last
            )));
        }
        // These end up in Vault policies, names and tags: keep them plain.
        let plain = |s: &str| {
            !s.is_empty()
                && s.split('/').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        for (field, value) in [
            ("vault.kvMount", &self.vault.kv_mount),
            ("vault.authMount", &self.vault.auth_mount),
            ("clusterId", &self.cluster_id),
        ] {
            if !plain(value) || value.len() > 64 {
                return Err(ConfigError::Invalid(format!(
                    "{field} must be letters, digits, '-', '_' (and '/' between parts), at most 64, got {value:?}"
                )));
            }
        }
        let person_mount = &self.vault.person_auth_mount;
        if !person_mount.is_empty() && (!plain(person_mount) || person_mount.len() > 64) {
            return Err(ConfigError::Invalid(format!(
                "vault.personAuthMount must be empty or letters, digits, '-', '_' (and '/' between parts), at most 64, got {person_mount:?}"
            )));
        }
        if !crate::validation::is_dns_label(&self.operator_namespace) {
            return Err(ConfigError::Invalid(format!(
                "operatorNamespace must be a DNS-1123 label, got {:?}",
                self.operator_namespace
            )));
        }
        if !(0.1..=100.0).contains(&self.aws.max_calls_per_second)
            || !(1..=64).contains(&self.aws.max_concurrent_calls)
        {
            return Err(ConfigError::Invalid(format!(
                "aws.maxCallsPerSecond must be between 0.1 and 100 and aws.maxConcurrentCalls between 1 and 64, got {} and {}",
                self.aws.max_calls_per_second, self.aws.max_concurrent_calls
            )));
        }
        if !(60..=86_400).contains(&self.vault.token_ttl_seconds) {
            return Err(ConfigError::Invalid(format!(
                "vault.tokenTtlSeconds must be between 60 and 86400, got {}",
                self.vault.token_ttl_seconds
            )));
        }
        Ok(())
    }
}

/// Vault settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Address workspaces use to reach Vault.
    pub address: String,
    /// KV v2 mount holding all tenant secrets.
    pub kv_mount: String,
    /// Kubernetes auth mount.
    pub auth_mount: String,
    /// Audience of the projected token workspaces log in with.
    pub audience: String,
    /// TTL of tokens issued to workspaces (at most one hour is recommended).
    pub token_ttl_seconds: u32,
    /// Where the operator finds its own Vault token (development); empty:
    /// `VAULT_TOKEN`, else Kubernetes auth with its ServiceAccount.
    pub token_file: String,
    /// The operator's own role in the Kubernetes auth mount.
    pub operator_role: String,
    /// PEM bundle of the CAs that sign Vault's certificate; empty: system roots.
    pub ca_file: String,
    /// JWT/OIDC auth mount that trusts the identity provider people log in
    /// with (its issuer and keys are that mount's configuration). Each Admin
    /// person gets a role there, bound to their `spec.subject` (the `sub`
    /// claim), that writes the company's shared secrets. Empty: no person
    /// roles, so nobody writes shared secrets through Enclave.
    pub person_auth_mount: String,
    /// Audience (`aud`) the identity provider's tokens carry for Vault.
    pub person_audience: String,
    /// How long the operator trusts what it last read or wrote in Vault (a
    /// policy, a role, an ownership record) before reading it again: until
    /// then a resync of an unchanged tenant reads nothing from Vault. A
    /// change made in Vault by hand is corrected within this time, and at
    /// every operator start; what the operator changes itself is known at
    /// once. 0 reads everything on every reconcile.
    pub reverify_seconds: u32,
    /// The PEM text of `caFile`, read when the configuration is loaded (the
    /// operator gives it to every init step through a ConfigMap in each
    /// company namespace). Not a configuration key.
    #[serde(skip)]
    #[schemars(skip)]
    pub ca_pem: Option<String>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            address: "https://vault.vault.svc:8200".into(),
            kv_mount: "secret".into(),
            auth_mount: "kubernetes".into(),
            audience: "vault".into(),
            token_ttl_seconds: 3600,
            token_file: String::new(),
            operator_role: "enclave".into(),
            ca_file: String::new(),
            person_auth_mount: String::new(),
            person_audience: "vault".into(),
            reverify_seconds: 3600,
            ca_pem: None,
        }
    }
}

/// Defaults for a company namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TenantDefaults {
    /// Total CPU of a company.
    pub cpu: String,
    /// Total memory of a company.
    pub memory: String,
    /// Most pods of a company.
    pub pods: i32,
    /// Total persistent storage of a company.
    pub storage: String,
    /// Pod Security Admission level enforced on company namespaces.
    pub pod_security: String,
}

impl Default for TenantDefaults {
    fn default() -> Self {
        Self {
            cpu: "32".into(),
            memory: "128Gi".into(),
            pods: 50,
            storage: "2Ti".into(),
            pod_security: "restricted".into(),
        }
    }
}

/// Range of POSIX ids given to developers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PosixIdRange {
    /// First id.
    pub first: i64,
    /// Last id.
    pub last: i64,
}

/// Workspace defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkspaceConfig {
    /// Image used when neither Company nor Developer names one.
    pub image: String,
    /// Port the workspace serves (the platform's ingress connects here).
    pub port: i32,
    /// CPU request of a workspace.
    pub cpu_request: String,
    /// CPU limit of a workspace.
    pub cpu_limit: String,
    /// Memory request of a workspace.
    pub memory_request: String,
    /// Memory limit of a workspace.
    pub memory_limit: String,
    /// Range developer uids/gids are allocated from.
    pub posix_ids: PosixIdRange,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        Self {
            image: "ghcr.io/enclave-dev/workspace:0.1.0".into(),
            port: 8080,
            cpu_request: "500m".into(),
            cpu_limit: "2".into(),
            memory_request: "1Gi".into(),
            memory_limit: "4Gi".into(),
            posix_ids: PosixIdRange {
                first: 200_000,
                last: 299_999,
            },
        }
    }
}

/// A destination every tenant may reach (Vault, the database network).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformEgress {
    /// Why this egress exists, shown in the plan.
    pub name: String,
    /// Destination CIDR.
    pub cidr: String,
    /// Destination TCP ports.
    pub ports: Vec<i32>,
}

/// Network defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Namespaces that may reach workspaces when a Company names none.
    pub ingress_namespaces: Vec<String>,
    /// Namespace of the cluster DNS.
    pub dns_namespace: String,
    /// Label selector (key=value) of the cluster DNS pods.
    pub dns_pod_label: (String, String),
    /// Destinations every tenant needs: Vault, the database subnets.
    pub platform_egress: Vec<PlatformEgress>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ingress_namespaces: vec!["ingress-nginx".into()],
            dns_namespace: "kube-system".into(),
            dns_pod_label: ("k8s-app".into(), "kube-dns".into()),
            platform_egress: vec![
                PlatformEgress {
                    name: "vault".into(),
                    cidr: "10.0.0.0/16".into(),
                    ports: vec![8200],
                },
                PlatformEgress {
                    name: "database".into(),
                    cidr: "10.0.0.0/16".into(),
                    ports: vec![5432],
                },
            ],
        }
    }
}

/// Database defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Instance class of dedicated instances.
    pub instance_class: String,
    /// PostgreSQL version of dedicated instances.
    pub engine_version: String,
    /// Allocated storage of dedicated instances, GiB.
    pub allocated_storage_gib: i32,
    /// Backup retention of dedicated instances, days.
    pub backup_retention_days: i32,
    /// KMS key used when a Company names none (empty: the AWS-managed key).
    pub kms_key_id: String,
    /// DB subnet group of dedicated instances.
    pub subnet_group: String,
    /// Security groups of dedicated instances.
    pub security_group_ids: Vec<String>,
    /// The shared PostgreSQL instance (Shared mode).
    pub shared: SharedDatabase,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            instance_class: "db.t4g.medium".into(),
            engine_version: "16".into(),
            allocated_storage_gib: 20,
            backup_retention_days: 7,
            kms_key_id: String::new(),
            subnet_group: "enclave-databases".into(),
            security_group_ids: vec![],
            shared: SharedDatabase::default(),
        }
    }
}

/// The shared PostgreSQL instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SharedDatabase {
    /// Name used in status and plans.
    pub name: String,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// KV path (below the mount, under `enclave/`) of the admin credentials
    /// (`username`, `password`).
    pub admin_credentials_path: String,
    /// Require TLS to the instance (turn off only for loopback tests).
    pub tls: bool,
    /// PEM bundle of the CAs that sign the instance's certificate (e.g. the
    /// RDS CA bundle); the system's roots when empty.
    pub ca_file: String,
}

impl Default for SharedDatabase {
    fn default() -> Self {
        Self {
            name: "shared".into(),
            host: "postgres.enclave-system.svc".into(),
            port: 5432,
            admin_credentials_path: "enclave/shared-postgres-admin".into(),
            tls: true,
            ca_file: String::new(),
        }
    }
}

/// Which storage backend a Company without `storage.fsx`/`storage.volume` gets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DefaultStorage {
    /// An FSx file system per company.
    #[default]
    Fsx,
    /// A volume per developer from a StorageClass.
    Volume,
}

/// Storage defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Backend of Companies that name none.
    pub default_backend: DefaultStorage,
    /// Capacity of created file systems, GiB.
    pub fsx_capacity_gib: i32,
    /// Subnets of created file systems.
    pub fsx_subnet_ids: Vec<String>,
    /// Security groups of created file systems.
    pub fsx_security_group_ids: Vec<String>,
    /// StorageClass of developer volumes (volume backend).
    pub storage_class: String,
    /// Size of a developer directory when the Developer names none.
    pub developer_quota: String,
    /// Treat an FSx file system whose description carries no `Lifecycle` as
    /// available. Only for AWS API emulators (moto) that omit it; against
    /// AWS leave it false, and a missing lifecycle is reported as Unknown.
    pub fsx_missing_lifecycle_is_available: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            default_backend: DefaultStorage::Fsx,
            fsx_capacity_gib: 64,
            fsx_subnet_ids: vec!["subnet-0123456789abcdef0".into()],
            fsx_security_group_ids: vec!["sg-0123456789abcdef0".into()],
            storage_class: "gp3".into(),
            developer_quota: "50Gi".into(),
            fsx_missing_lifecycle_is_available: false,
        }
    }
}

/// How the cluster's authenticator names people and groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RbacConfig {
    /// Prefix the API server's OIDC authenticator puts before a subject
    /// (`--oidc-username-prefix`); an Admin developer is bound as `<prefix><subject>`.
    pub user_prefix: String,
    /// Group `<prefix><company>-admins` is bound to the company-admin ClusterRole.
    pub admin_group_prefix: String,
    /// The ClusterRole the chart installs for company admins. The operator
    /// only binds it inside company namespaces (it holds `bind` on this one
    /// name), so it never needs the admins' permissions itself.
    pub company_admin_cluster_role: String,
    /// The ClusterRole the chart installs with the access a person gets to
    /// their own workspace pod. The operator binds it to itself inside
    /// company namespaces only, so that it holds (there) the rules of the
    /// per-person Roles it writes: the API server lets nobody grant what
    /// they do not hold.
    pub workspace_access_cluster_role: String,
    /// The operator's ServiceAccount (in `operatorNamespace`).
    pub operator_service_account: String,
}

impl Default for RbacConfig {
    fn default() -> Self {
        Self {
            user_prefix: "oidc:".into(),
            admin_group_prefix: "oidc:enclave-".into(),
            company_admin_cluster_role: "enclave-company-admin".into(),
            workspace_access_cluster_role: "enclave-workspace-access".into(),
            operator_service_account: "enclave".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<OperatorConfig, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "enclave-config-{}-{}.yaml",
            std::process::id(),
            yaml.len()
        ));
        std::fs::write(&path, yaml).unwrap();
        let result = OperatorConfig::load(&path);
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn defaults_are_valid_and_partial_files_keep_them() {
        OperatorConfig::default().check().unwrap();
        let config = load("clusterId: prod-eu\nvault:\n  kvMount: tenants\n").unwrap();
        assert_eq!(config.cluster_id, "prod-eu");
        assert_eq!(config.vault.kv_mount, "tenants");
        assert_eq!(config.vault.auth_mount, "kubernetes");
    }

    #[test]
    fn bad_values_are_refused_with_the_field_name() {
        let err =
            load("vault:\n  kvMount: 'secret\" { capabilities = [\"sudo\"] }'\n").unwrap_err();
        assert!(err.to_string().contains("vault.kvMount"), "{err}");
        let err = load("operatorNamespace: Not_A_Label\n").unwrap_err();
        assert!(err.to_string().contains("operatorNamespace"), "{err}");
        let err = load("vault:\n  tokenTtlSeconds: 5\n").unwrap_err();
        assert!(err.to_string().contains("tokenTtlSeconds"), "{err}");
        let err = load("vualt: {}\n").unwrap_err();
        assert!(err.to_string().contains("vualt"), "{err}");
        let err = load("workspace:\n  posixIds: {first: 10, last: 5}\n").unwrap_err();
        assert!(err.to_string().contains("posixIds"), "{err}");
        let err = load("aws:\n  maxCallsPerSecond: 0\n").unwrap_err();
        assert!(err.to_string().contains("aws.maxCallsPerSecond"), "{err}");
    }
}

/// Where the AWS APIs are; credentials come from the usual chain (IRSA,
/// environment, instance metadata).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region of the RDS instances and FSx file systems.
    pub region: String,
    /// Endpoint override (an emulator in tests); empty: AWS.
    pub endpoint_url: String,
    /// Calls per second the operator starts against each AWS service (RDS,
    /// FSx), retries and status polls included. Keep it below the account's
    /// API rate for that service minus what other tools in the account use.
    /// A reconcile whose call cannot start at once is requeued for its turn.
    pub max_calls_per_second: f64,
    /// Calls in flight at once per AWS service.
    pub max_concurrent_calls: usize,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: String::new(),
            max_calls_per_second: 5.0,
            max_concurrent_calls: 4,
        }
    }
}

impl AwsConfig {
    /// The call budget of each AWS service's gate.
    pub fn call_limits(&self) -> crate::backends::aws_calls::CallLimits {
        crate::backends::aws_calls::CallLimits {
            max_concurrent: self.max_concurrent_calls,
            max_per_second: self.max_calls_per_second,
            ..crate::backends::aws_calls::CallLimits::default()
        }
    }
}

/// The `definitions` of the chart's `values.schema.json`: the operator
/// configuration (`OperatorConfig`, what `config:` in the values may hold)
/// and the types it uses, so `helm install` refuses what `enclave run`
/// would. The chart sets `operatorNamespace` and `operatorImage` itself.
pub fn chart_values_definitions() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut root = generator
        .into_root_schema_for::<OperatorConfig>()
        .to_value();
    let mut definitions = root
        .as_object_mut()
        .and_then(|o| o.remove("definitions"))
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(config) = root.as_object_mut() {
        config.remove("$schema");
        if let Some(properties) = config.get_mut("properties").and_then(|p| p.as_object_mut()) {
            properties.remove("operatorNamespace");
            properties.remove("operatorImage");
        }
    }
    if let Some(all) = definitions.as_object_mut() {
        all.insert("OperatorConfig".to_owned(), root);
    }
    definitions
}
