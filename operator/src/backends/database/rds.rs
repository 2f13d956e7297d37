//! Dedicated mode: one RDS PostgreSQL instance per company.

use std::{collections::BTreeMap, sync::Arc};

use aws_sdk_rds::{
    config::retry::RetryConfig,
    error::SdkError,
    types::{DbInstance, Tag},
};

use super::{
    CallGate, CallLimits, CrashHook, DatabaseBackend, DatabaseError, DatabaseState, Deletion,
    Phase, Step, checkpoint,
};
use crate::{
    backends::{
        aws_calls::{CallStats, GateError, describe, is_retryable},
        vault::VaultBackend,
    },
    builders::DatabaseRequest,
    crd::DeletionPolicy,
};

/// [`DatabaseBackend`] for `Dedicated` companies.
pub struct RdsDatabase<V> {
    rds: aws_sdk_rds::Client,
    vault: Arc<V>,
    gate: CallGate,
    crash: Option<CrashHook>,
}

fn aws_error<E: aws_sdk_rds::error::ProvideErrorMetadata + std::fmt::Debug>(
    operation: &'static str,
) -> impl FnOnce(GateError<E>) -> DatabaseError {
    move |e| match e {
        GateError::Busy(busy) => DatabaseError::Busy(busy),
        GateError::Sdk(e) => DatabaseError::Aws {
            operation,
            transient: is_retryable(&e),
            message: describe(&e),
        },
    }
}

impl<V: VaultBackend> RdsDatabase<V> {
    /// A backend on the RDS API configured by `config` (its own retries are
    /// replaced by the gate's).
    pub fn new(config: &aws_sdk_rds::Config, vault: Arc<V>, limits: CallLimits) -> Self {
        let config = config
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            rds: aws_sdk_rds::Client::from_conf(config),
            vault,
            gate: CallGate::new("RDS", limits),
            crash: None,
        }
    }

    /// Simulates a crash after the step `hook` picks (tests).
    #[must_use]
    pub fn with_crash_hook(mut self, hook: CrashHook) -> Self {
        self.crash = Some(hook);
        self
    }

    /// The gate's counters.
    pub fn calls(&self) -> CallStats {
        self.gate.stats()
    }

    async fn find(&self, identifier: &str) -> Result<Option<DbInstance>, DatabaseError> {
        let result = self
            .gate
            .call(|| {
                self.rds
                    .describe_db_instances()
                    .db_instance_identifier(identifier)
                    .send()
            })
            .await;
        match result {
            Ok(out) => Ok(out.db_instances().first().cloned()),
            Err(GateError::Sdk(SdkError::ServiceError(e)))
                if e.err().is_db_instance_not_found_fault() =>
            {
                Ok(None)
            }
            Err(e) => Err(aws_error("DescribeDBInstances")(e)),
        }
    }

    /// Adoption requires every tag Enclave sets, with this Company's values.
    fn check_owner(req: &DatabaseRequest, instance: &DbInstance) -> Result<(), DatabaseError> {
        let tags: BTreeMap<&str, &str> = instance
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?, t.value()?)))
            .collect();
        for (key, want) in &req.tags {
            match tags.get(key.as_str()) {
                Some(have) if have == want => {}
                Some(have) => {
                    return Err(DatabaseError::Conflict {
                        what: "RDS instance",
                        name: req.instance.identifier.clone(),
                        reason: format!("tag {key} is {have:?}, this Company's is {want:?}"),
                    });
                }
                None => {
                    return Err(DatabaseError::Conflict {
                        what: "RDS instance",
                        name: req.instance.identifier.clone(),
                        reason: format!("it has no tag {key}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn state(
        req: &DatabaseRequest,
        instance: &DbInstance,
        version: Option<u64>,
        unapplied: Vec<String>,
    ) -> DatabaseState {
        let phase = match instance.db_instance_status() {
            Some("available") => Phase::Available,
            Some("creating" | "backing-up") | None => Phase::Creating,
            Some("deleting") => Phase::Deleting,
            Some(_) => Phase::Modifying,
        };
        DatabaseState {
            identifier: req.instance.identifier.clone(),
            endpoint: instance
                .endpoint()
                .and_then(|e| e.address())
                .map(str::to_owned),
            port: instance
                .endpoint()
                .and_then(aws_sdk_rds::types::Endpoint::port),
            database_name: req.database_name.clone(),
            credentials_path: req.credentials_path.clone(),
            phase,
            credentials_version: version,
            unapplied,
        }
    }

    async fn create(
        &self,
        req: &DatabaseRequest,
        password: &str,
    ) -> Result<DbInstance, DatabaseError> {
        let i = &req.instance;
        let tags: Vec<Tag> = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let out = self
            .gate
            .call(|| {
                self.rds
                    .create_db_instance()
                    .db_instance_identifier(&i.identifier)
                    .engine("postgres")
                    .engine_version(&i.engine_version)
                    .db_instance_class(&i.instance_class)
                    .allocated_storage(i.allocated_storage_gib)
                    .db_name(&req.database_name)
                    .master_username(&req.username)
                    .master_user_password(password)
                    .storage_encrypted(true)
                    .set_kms_key_id(i.kms_key_id.clone())
                    .backup_retention_period(i.backup_retention_days)
                    .publicly_accessible(false)
                    .set_db_subnet_group_name(
                        (!i.subnet_group.is_empty()).then(|| i.subnet_group.clone()),
                    )
                    .set_vpc_security_group_ids(
                        (!i.security_group_ids.is_empty()).then(|| i.security_group_ids.clone()),
                    )
                    .set_tags(Some(tags.clone()))
                    .send()
            })
            .await;
        match out {
            Ok(out) => out.db_instance.ok_or_else(|| DatabaseError::Aws {
                operation: "CreateDBInstance",
                message: "the answer had no instance".into(),
                transient: true,
            }),
            // A create that succeeded before a lost answer: the retry finds it.
            Err(GateError::Sdk(SdkError::ServiceError(e)))
                if e.err().is_db_instance_already_exists_fault() =>
            {
                let found = self
                    .find(&i.identifier)
                    .await?
                    .ok_or_else(|| DatabaseError::Aws {
                        operation: "CreateDBInstance",
                        message: "AWS reports the instance exists but does not describe it".into(),
                        transient: true,
                    })?;
                Self::check_owner(req, &found)?;
                Ok(found)
            }
            Err(e) => Err(aws_error("CreateDBInstance")(e)),
        }
    }
}

impl<V: VaultBackend> DatabaseBackend for RdsDatabase<V> {
    async fn ensure(
        &self,
        req: &DatabaseRequest,
        applied_version: Option<u64>,
    ) -> Result<DatabaseState, DatabaseError> {
        // Write ahead: the password is in Vault before any instance uses it.
        let creds = self
            .vault
            .ensure_credentials(&req.credentials_path, &req.username)
            .await?;
        checkpoint(self.crash.as_ref(), Step::CredentialsWritten)?;

        let Some(instance) = self.find(&req.instance.identifier).await? else {
            let created = self.create(req, creds.password.expose()).await?;
            checkpoint(self.crash.as_ref(), Step::InstanceCreated)?;
            return Ok(Self::state(req, &created, Some(creds.version), vec![]));
        };
        Self::check_owner(req, &instance)?;
        let state = Self::state(req, &instance, applied_version, vec![]);
        if state.phase != Phase::Available {
            return Ok(state); // the controller requeues with backoff
        }

        let i = &req.instance;
        let mut unapplied = Vec::new();
        if instance.storage_encrypted() != Some(true) {
            unapplied.push("the instance is not encrypted at rest; RDS cannot encrypt an existing instance (restore a snapshot into an encrypted one)".to_owned());
        }
        if let Some(want) = &i.kms_key_id
            && instance
                .kms_key_id()
                .is_some_and(|have| have != want && !have.ends_with(want.as_str()))
        {
            unapplied.push(format!("kmsKeyId {want} differs from the instance's; RDS cannot change the key of an instance"));
        }
        let class = (instance.db_instance_class() != Some(i.instance_class.as_str()))
            .then(|| i.instance_class.clone());
        let storage = match instance.allocated_storage() {
            Some(have) if have < i.allocated_storage_gib => Some(i.allocated_storage_gib),
            Some(have) if have > i.allocated_storage_gib => {
                unapplied.push(format!("allocatedStorageGiB {} is below the instance's {have}; RDS cannot shrink storage", i.allocated_storage_gib));
                None
            }
            _ => None,
        };
        let retention = (instance.backup_retention_period() != Some(i.backup_retention_days))
            .then_some(i.backup_retention_days);
        // An instance found (not just created) without a recorded version may
        // have been created with a credential we no longer know is current.
        let password =
            (applied_version != Some(creds.version)).then(|| creds.password.expose().to_owned());
        if class.is_none() && storage.is_none() && retention.is_none() && password.is_none() {
            return Ok(DatabaseState { unapplied, ..state });
        }
        let modified = self
            .gate
            .call(|| {
                self.rds
                    .modify_db_instance()
                    .db_instance_identifier(&i.identifier)
                    .set_db_instance_class(class.clone())
                    .set_allocated_storage(storage)
                    .set_backup_retention_period(retention)
                    .set_master_user_password(password.clone())
                    .apply_immediately(true)
                    .send()
            })
            .await
            .map_err(aws_error("ModifyDBInstance"))?;
        if password.is_some() {
            checkpoint(self.crash.as_ref(), Step::PasswordApplied)?;
        }
        let after = modified.db_instance.unwrap_or(instance);
        Ok(Self::state(req, &after, Some(creds.version), unapplied))
    }

    fn reserve(&self) -> Result<(), DatabaseError> {
        Ok(self.gate.reserve()?)
    }

    async fn delete(&self, req: &DatabaseRequest) -> Result<Deletion, DatabaseError> {
        let i = &req.instance;
        let snapshot =
            (req.deletion_policy == DeletionPolicy::Snapshot).then(|| i.final_snapshot.clone());
        let Some(instance) = self.find(&i.identifier).await? else {
            return Ok(match req.deletion_policy {
                DeletionPolicy::Retain => Deletion::Retained,
                _ => Deletion::Deleted { snapshot },
            });
        };
        Self::check_owner(req, &instance)?;
        match (req.deletion_policy, instance.db_instance_status()) {
            (DeletionPolicy::Retain, _) => return Ok(Deletion::Retained),
            (_, Some("deleting")) => return Ok(Deletion::InProgress),
            _ => {}
        }
        let result = self
            .gate
            .call(|| {
                self.rds
                    .delete_db_instance()
                    .db_instance_identifier(&i.identifier)
                    .skip_final_snapshot(snapshot.is_none())
                    .set_final_db_snapshot_identifier(snapshot.clone())
                    .send()
            })
            .await;
        match result {
            Ok(_) => {}
            Err(GateError::Sdk(SdkError::ServiceError(e)))
                if e.err().is_db_instance_not_found_fault() => {}
            Err(e) => return Err(aws_error("DeleteDBInstance")(e)),
        }
        Ok(match self.find(&i.identifier).await? {
            Some(_) => Deletion::InProgress,
            None => Deletion::Deleted { snapshot },
        })
    }
}
