//! Actions on systems outside the cluster (Vault secrets, RDS, PostgreSQL,
//! FSx), as data: the backends perform them, `enclave plan` shows them.
//! Never a secret value: only where it lives.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{CompanyContext, DeveloperContext, StorageKind};
use crate::{
    crd::{DatabaseMode, DeletionPolicy},
    names::{LABEL_COMPANY, MANAGED_BY},
};

/// The system an action touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub enum System {
    Vault,
    #[serde(rename = "RDS")]
    Rds,
    #[serde(rename = "PostgreSQL")]
    Postgres,
    #[serde(rename = "FSx")]
    Fsx,
    Storage,
}

/// One action on an external system.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAction {
    /// Where.
    pub system: System,
    /// The API call or statement kind, e.g. `CreateDBInstance`.
    pub operation: String,
    /// What it acts on.
    pub target: String,
    /// Its parameters (no secret values).
    pub parameters: BTreeMap<String, Value>,
    /// When or why it happens.
    pub note: String,
}

fn action(
    system: System,
    operation: &str,
    target: String,
    parameters: Value,
    note: &str,
) -> ExternalAction {
    let parameters = match parameters {
        Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    };
    ExternalAction {
        system,
        operation: operation.into(),
        target,
        parameters,
        note: note.into(),
    }
}

/// Tags on every AWS resource of a company: adoption requires all of them.
pub fn aws_tags(ctx: &CompanyContext<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_COMPANY.to_owned(), ctx.names.company().to_owned()),
        ("enclave.dev/managed-by".to_owned(), MANAGED_BY.to_owned()),
        (
            "enclave.dev/cluster".to_owned(),
            ctx.config.cluster_id.clone(),
        ),
        ("enclave.dev/company-uid".to_owned(), ctx.uid().to_owned()),
    ])
}

/// Quotes a PostgreSQL identifier: wrapped in `"`, inner `"` doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn vault_ref(ctx: &CompanyContext<'_>, path: &str) -> String {
    format!("vault:{}/data/{path}", ctx.config.vault.kv_mount)
}

fn deletion(policy: DeletionPolicy, snapshot: &str) -> String {
    match policy {
        DeletionPolicy::Snapshot => format!("on deletion: {snapshot}"),
        DeletionPolicy::Delete => "on deletion: delete without a final copy".into(),
        DeletionPolicy::Retain => "on deletion: retained, Enclave only forgets it".into(),
    }
}

/// The database's credentials, then the database itself.
pub fn database_actions(ctx: &CompanyContext<'_>) -> Vec<ExternalAction> {
    let req = super::database_request(ctx);
    let password = vault_ref(ctx, &req.credentials_path);
    let mut out = vec![action(
        System::Vault,
        "EnsureGeneratedSecret",
        format!(
            "{}/data/{}",
            ctx.config.vault.kv_mount, req.credentials_path
        ),
        json!({"keys": ["username", "password"], "source": "OS CSPRNG, 40 characters"}),
        "written before the database exists; read back on every later reconcile, never regenerated",
    )];
    match req.mode {
        DatabaseMode::Dedicated => {
            let i = &req.instance;
            out.push(action(
                System::Rds,
                "CreateDBInstance",
                i.identifier.clone(),
                json!({
                    "DBInstanceIdentifier": i.identifier,
                    "Engine": "postgres",
                    "EngineVersion": i.engine_version,
                    "DBInstanceClass": i.instance_class,
                    "AllocatedStorage": i.allocated_storage_gib,
                    "DBName": req.database_name,
                    "MasterUsername": req.username,
                    "MasterUserPassword": password,
                    "StorageEncrypted": true,
                    "KmsKeyId": i.kms_key_id,
                    "BackupRetentionPeriod": i.backup_retention_days,
                    "PubliclyAccessible": false,
                    "DBSubnetGroupName": i.subnet_group,
                    "VpcSecurityGroupIds": i.security_group_ids,
                    "Tags": req.tags,
                }),
                &format!(
                    "only when no instance with this identifier exists; one with it is adopted only if its tags match; {}",
                    deletion(req.deletion_policy, &format!("final snapshot {}, then delete", i.final_snapshot))
                ),
            ));
        }
        DatabaseMode::Shared => {
            let shared = &ctx.config.database.shared;
            let role = quote_ident(&req.username);
            let database = quote_ident(&req.database_name);
            out.push(action(
                System::Postgres,
                "CreateDatabase",
                format!("{}:{}/{}", shared.host, shared.port, req.database_name),
                json!({"statements": [
                    format!("CREATE ROLE {role} LOGIN PASSWORD '<{password}>'"),
                    format!("CREATE DATABASE {database} OWNER {role}"),
                    format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"),
                    format!("GRANT CONNECT ON DATABASE {database} TO {role}"),
                ]}),
                &deletion(
                    req.deletion_policy,
                    "keep the database, drop the login role",
                ),
            ));
        }
    }
    out
}

/// The company's file system.
pub fn storage_actions(ctx: &CompanyContext<'_>) -> Vec<ExternalAction> {
    let policy = ctx.settings.storage_deletion_policy;
    match &ctx.settings.storage {
        StorageKind::Fsx {
            existing_file_system_id: Some(id),
            ..
        } => vec![action(
            System::Storage,
            "PrepareCompanyRoot",
            format!("{id}:{}", ctx.names.storage_root()),
            json!({"owner": "root", "mode": "0711"}),
            "existing file system: only the company root directory is Enclave's",
        )],
        StorageKind::Fsx {
            fsx_type,
            capacity_gib,
            deployment_type,
            throughput_capacity,
            subnet_ids,
            security_group_ids,
            kms_key_id,
            ..
        } => vec![
            action(
                System::Fsx,
                "CreateFileSystem",
                format!("tags {LABEL_COMPANY}={}", ctx.names.company()),
                json!({
                    "FileSystemType": match fsx_type { crate::crd::FsxType::OpenZfs => "OPENZFS", crate::crd::FsxType::Lustre => "LUSTRE" },
                    "StorageCapacity": capacity_gib,
                    "DeploymentType": deployment_type,
                    "ThroughputCapacity": throughput_capacity,
                    "SubnetIds": subnet_ids,
                    "SecurityGroupIds": security_group_ids,
                    "KmsKeyId": kms_key_id,
                    "ClientRequestToken": ctx.names.fsx_request_token(ctx.uid()),
                    "Tags": aws_tags(ctx),
                }),
                &format!(
                    "only when no file system with these tags exists; {}",
                    deletion(policy, "final backup, then delete")
                ),
            ),
            action(
                System::Storage,
                "PrepareCompanyRoot",
                ctx.names.storage_root(),
                json!({"owner": "root", "mode": "0711"}),
                "before any developer directory",
            ),
        ],
        StorageKind::Volume { .. } => vec![],
    }
}

/// The developer's private directory.
pub fn developer_actions(ctx: &DeveloperContext<'_>) -> Vec<ExternalAction> {
    let company = ctx.company;
    match &company.settings.storage {
        StorageKind::Fsx { .. } => vec![action(
            System::Storage,
            "PrepareDeveloperDirectory",
            ctx.names.storage_path(),
            json!({
                "uid": ctx.settings.posix_id,
                "gid": ctx.settings.posix_id,
                "mode": "0700",
                "job": format!("{}/{}", company.config.operator_namespace, ctx.names.storage_prep_job()),
            }),
            &deletion(
                company.settings.storage_deletion_policy,
                "archive the directory, then remove it",
            ),
        )],
        StorageKind::Volume { .. } => vec![],
    }
}
