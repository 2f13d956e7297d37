//! What the company database must be: resolved once, used by the database
//! backend and shown by `enclave plan`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{CompanyContext, cloud::aws_tags};
use crate::crd::{DatabaseMode, DeletionPolicy};

/// Settings of a dedicated RDS instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSettings {
    /// DB instance identifier.
    pub identifier: String,
    /// Instance class.
    pub instance_class: String,
    /// PostgreSQL version.
    pub engine_version: String,
    /// GiB.
    pub allocated_storage_gib: i32,
    /// KMS key; the AWS-managed key when unset.
    pub kms_key_id: Option<String>,
    /// Days of automated backups.
    pub backup_retention_days: i32,
    /// DB subnet group.
    pub subnet_group: String,
    /// VPC security groups.
    pub security_group_ids: Vec<String>,
    /// Identifier of the final snapshot (deletion policy `Snapshot`).
    pub final_snapshot: String,
}

/// Everything the database backend needs for one company.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRequest {
    /// Company name.
    pub company: String,
    /// Company uid, recorded in tags and comments: adoption requires it.
    pub company_uid: String,
    /// Dedicated or Shared.
    pub mode: DatabaseMode,
    /// KV path (below the mount) of the credentials.
    pub credentials_path: String,
    /// Login name: the RDS master user, or the company's role in the shared instance.
    pub username: String,
    /// Database name.
    pub database_name: String,
    /// The RDS instance (Dedicated mode).
    pub instance: InstanceSettings,
    /// Tags on every AWS resource of the company.
    pub tags: BTreeMap<String, String>,
    /// On deletion.
    pub deletion_policy: DeletionPolicy,
}

/// The database `ctx`'s Company implies.
pub fn database_request(ctx: &CompanyContext<'_>) -> DatabaseRequest {
    let db = &ctx.settings.database;
    let dbc = &ctx.config.database;
    let username = match db.mode {
        DatabaseMode::Dedicated => ctx.names.rds_master_user().to_owned(),
        DatabaseMode::Shared => ctx.names.postgres_role(),
    };
    DatabaseRequest {
        company: ctx.names.company().to_owned(),
        company_uid: ctx.uid().to_owned(),
        mode: db.mode,
        credentials_path: ctx.names.kv_database_credentials(),
        username,
        database_name: ctx.names.postgres_database(),
        instance: InstanceSettings {
            identifier: ctx.names.rds_instance(),
            instance_class: db.instance_class.clone(),
            engine_version: db.engine_version.clone(),
            allocated_storage_gib: db.allocated_storage_gib,
            kms_key_id: db.kms_key_id.clone(),
            backup_retention_days: db.backup_retention_days,
            subnet_group: dbc.subnet_group.clone(),
            security_group_ids: dbc.security_group_ids.clone(),
            final_snapshot: ctx.names.rds_final_snapshot(ctx.uid()),
        },
        tags: aws_tags(ctx),
        deletion_policy: db.deletion_policy,
    }
}
