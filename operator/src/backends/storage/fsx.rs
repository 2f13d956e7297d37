//! The FSx backend on `aws-sdk-fsx`.

use aws_sdk_fsx::{
    config::retry::RetryConfig,
    error::SdkError,
    operation::describe_file_systems::DescribeFileSystemsOutput,
    types::{
        CreateFileSystemLustreConfiguration, CreateFileSystemOpenZfsConfiguration,
        DeleteFileSystemLustreConfiguration, DeleteFileSystemOpenZfsConfiguration, FileSystem,
        FileSystemLifecycle, FileSystemType, LustreDeploymentType, OpenZfsDeploymentType, Tag,
    },
};
use aws_sdk_resourcegroupstagging::{
    operation::get_resources::GetResourcesOutput, types::TagFilter,
};

use super::{FileSystemBackend, FileSystemState, FsDeletion, FsPhase, StorageError};
use crate::{
    backends::aws_calls::{CallGate, CallLimits, CallStats, GateError, describe, is_retryable},
    builders::FileSystemRequest,
    crd::{DeletionPolicy, FsxType},
    names::LABEL_COMPANY,
};

/// The tagging API's name for an FSx file system.
const FILE_SYSTEM_RESOURCE_TYPE: &str = "fsx:file-system";

/// The id in a file system's ARN (`arn:aws:fsx:REGION:ACCOUNT:file-system/fs-…`).
fn file_system_id(arn: &str) -> Option<String> {
    let (_, id) = arn.split_once(":file-system/")?;
    (!id.is_empty()).then(|| id.to_owned())
}

/// [`FileSystemBackend`] on FSx.
pub struct FsxFileSystems {
    fsx: aws_sdk_fsx::Client,
    /// Finds file systems by tag (FSx's own API lists the whole account).
    tagging: aws_sdk_resourcegroupstagging::Client,
    gate: CallGate,
    crash_after_create: bool,
}

fn aws<E: aws_sdk_fsx::error::ProvideErrorMetadata + std::fmt::Debug>(
    operation: &'static str,
) -> impl FnOnce(GateError<E>) -> StorageError {
    move |e| match e {
        GateError::Busy(busy) => StorageError::Busy(busy),
        GateError::Sdk(e) => StorageError::Aws {
            operation,
            transient: is_retryable(&e),
            message: describe(&e),
        },
    }
}

fn tags(req: &FileSystemRequest) -> Vec<Tag> {
    req.tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

/// Whether `fs` carries every tag of `req` (it is this Company's).
fn carries_tags(fs: &FileSystem, req: &FileSystemRequest) -> bool {
    req.tags.iter().all(|(k, v)| {
        fs.tags()
            .iter()
            .any(|t| t.key() == Some(k) && t.value() == Some(v))
    })
}

/// Whether `fs` is not being deleted.
fn live(fs: &FileSystem) -> bool {
    fs.lifecycle() != Some(&FileSystemLifecycle::Deleting)
}

/// This Company's file system among `candidates` (tagged for its name):
/// the one carrying all its tags. One tagged for the company name without
/// the rest is a conflict.
fn ours(
    candidates: Vec<FileSystem>,
    req: &FileSystemRequest,
) -> Result<Option<FileSystem>, StorageError> {
    let (ours, others): (Vec<_>, Vec<_>) =
        candidates.into_iter().partition(|fs| carries_tags(fs, req));
    let mut ours: Vec<_> = ours.into_iter().filter(live).collect();
    if ours.len() > 1 {
        return Err(StorageError::Duplicate {
            ids: ours
                .iter()
                .filter_map(|f| f.file_system_id().map(str::to_owned))
                .collect(),
        });
    }
    if ours.is_empty()
        && let Some(other) = others.iter().find(|fs| live(fs))
    {
        let have: Vec<String> = other
            .tags()
            .iter()
            .filter_map(|t| Some(format!("{}={}", t.key()?, t.value()?)))
            .collect();
        return Err(StorageError::Conflict {
            id: other.file_system_id().unwrap_or_default().to_owned(),
            company: req.company.clone(),
            reason: format!("its tags are {have:?}"),
        });
    }
    Ok(ours.pop())
}

fn state(fs: &FileSystem, owned: bool) -> FileSystemState {
    let phase = match fs.lifecycle() {
        Some(FileSystemLifecycle::Available) => FsPhase::Available,
        Some(
            FileSystemLifecycle::Creating
            | FileSystemLifecycle::Updating
            | FileSystemLifecycle::Misconfigured,
        ) => FsPhase::Creating,
        Some(FileSystemLifecycle::Deleting) => FsPhase::Deleting,
        Some(FileSystemLifecycle::Failed) => FsPhase::Failed(
            fs.failure_details()
                .and_then(|d| d.message())
                .unwrap_or("FSx reports FAILED")
                .to_owned(),
        ),
        Some(other) => FsPhase::Failed(format!("FSx reports {}", other.as_str())),
        None => FsPhase::Unknown,
    };
    FileSystemState {
        file_system_id: fs.file_system_id().unwrap_or_default().to_owned(),
        dns_name: fs.dns_name().map(str::to_owned),
        mount_name: fs
            .lustre_configuration()
            .and_then(|l| l.mount_name())
            .map(str::to_owned),
        phase,
        owned,
    }
}

impl FsxFileSystems {
    /// A backend on the FSx and tagging APIs configured by `sdk` (their own
    /// retries are replaced by the gate's, which both share).
    pub fn new(sdk: &aws_config::SdkConfig, limits: CallLimits) -> Self {
        let sdk = sdk
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            fsx: aws_sdk_fsx::Client::new(&sdk),
            tagging: aws_sdk_resourcegroupstagging::Client::new(&sdk),
            gate: CallGate::new("FSx", limits),
            crash_after_create: false,
        }
    }

    /// Simulates a crash right after CreateFileSystem (tests).
    #[must_use]
    pub fn crashing_after_create(mut self) -> Self {
        self.crash_after_create = true;
        self
    }

    /// The gate's counters.
    pub fn calls(&self) -> CallStats {
        self.gate.stats()
    }

    /// Every file system tagged for this company (by name). The tagging API
    /// filters by tag, so the lookup costs the same in an account of ten
    /// file systems or ten thousand; DescribeFileSystems cannot filter and
    /// would page through the whole account.
    async fn tagged_for_company(&self, company: &str) -> Result<Vec<FileSystem>, StorageError> {
        let pages = self
            .gate
            .pages(
                |token| {
                    self.tagging
                        .get_resources()
                        .resource_type_filters(FILE_SYSTEM_RESOURCE_TYPE)
                        .tag_filters(
                            TagFilter::builder()
                                .key(LABEL_COMPANY)
                                .values(company)
                                .build(),
                        )
                        .set_pagination_token(token)
                        .send()
                },
                GetResourcesOutput::pagination_token,
            )
            .await
            .map_err(aws("GetResources"))?;
        let ids = pages
            .iter()
            .flat_map(GetResourcesOutput::resource_tag_mapping_list)
            .filter_map(|m| file_system_id(m.resource_arn()?));
        // The tagging API also names file systems deleted a while ago, and
        // its tags may lag: each is read back from FSx by id.
        let mut found = Vec::new();
        for id in ids {
            match self.describe_existing(&id).await {
                Ok(fs) => found.push(fs),
                Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Every file system tagged for this company (by name), from FSx itself:
    /// pages through the account. Only a deletion that has no recorded id
    /// and finds nothing by tag asks this, once, before it lets the
    /// Company go: the tagging API may not show a file system created
    /// moments before (a crash after CreateFileSystem, then the deletion).
    async fn scanned_for_company(&self, company: &str) -> Result<Vec<FileSystem>, StorageError> {
        let pages = self
            .gate
            .pages(
                |token| {
                    self.fsx
                        .describe_file_systems()
                        .set_next_token(token)
                        .send()
                },
                DescribeFileSystemsOutput::next_token,
            )
            .await
            .map_err(aws("DescribeFileSystems"))?;
        Ok(pages
            .iter()
            .flat_map(DescribeFileSystemsOutput::file_systems)
            .filter(|fs| {
                fs.tags()
                    .iter()
                    .any(|t| t.key() == Some(LABEL_COMPANY) && t.value() == Some(company))
            })
            .cloned()
            .collect())
    }

    /// This Company's file system, found by its tags.
    async fn find_ours(&self, req: &FileSystemRequest) -> Result<Option<FileSystem>, StorageError> {
        ours(self.tagged_for_company(&req.company).await?, req)
    }

    /// This Company's file system: by its recorded id when that one is
    /// still ours and not being deleted (one call), else by its tags.
    async fn find(&self, req: &FileSystemRequest) -> Result<Option<FileSystem>, StorageError> {
        if let Some(id) = &req.recorded_file_system_id {
            match self.describe_existing(id).await {
                Ok(fs) if carries_tags(&fs, req) && live(&fs) => return Ok(Some(fs)),
                Ok(_) | Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.find_ours(req).await
    }

    async fn describe_existing(&self, id: &str) -> Result<FileSystem, StorageError> {
        let result = self
            .gate
            .call(|| self.fsx.describe_file_systems().file_system_ids(id).send())
            .await;
        match result {
            Ok(out) => out
                .file_systems()
                .first()
                .cloned()
                .ok_or_else(|| StorageError::NotFound(id.to_owned())),
            Err(GateError::Sdk(SdkError::ServiceError(e)))
                if e.err().is_file_system_not_found() =>
            {
                Err(StorageError::NotFound(id.to_owned()))
            }
            Err(e) => Err(aws("DescribeFileSystems")(e)),
        }
    }

    async fn create(&self, req: &FileSystemRequest) -> Result<FileSystem, StorageError> {
        let request = self
            .fsx
            .create_file_system()
            .client_request_token(&req.request_token)
            .storage_capacity(req.capacity_gib)
            .set_subnet_ids(Some(req.subnet_ids.clone()))
            .set_security_group_ids(
                (!req.security_group_ids.is_empty()).then(|| req.security_group_ids.clone()),
            )
            .set_kms_key_id(req.kms_key_id.clone())
            .set_tags(Some(tags(req)));
        let request = match req.fsx_type {
            FsxType::OpenZfs => request
                .file_system_type(FileSystemType::Openzfs)
                .open_zfs_configuration(
                    CreateFileSystemOpenZfsConfiguration::builder()
                        .deployment_type(OpenZfsDeploymentType::from(req.deployment_type.as_str()))
                        .throughput_capacity(req.throughput_capacity)
                        .build(),
                ),
            FsxType::Lustre => request
                .file_system_type(FileSystemType::Lustre)
                .lustre_configuration(
                    CreateFileSystemLustreConfiguration::builder()
                        .deployment_type(LustreDeploymentType::from(req.deployment_type.as_str()))
                        .per_unit_storage_throughput(req.throughput_capacity)
                        .build(),
                ),
        };
        // Retried only when throttled: an answer lost after FSx created the
        // file system must not make a second one. The next reconcile looks up
        // by tags first; the request token, derived from the Company's uid,
        // covers the moments before the tagging API shows the new file
        // system, and the tags cover the time after the token expires (see
        // aws-fsx-csi-driver #453).
        let out = self
            .gate
            .call_not_idempotent(|| request.clone().send())
            .await
            .map_err(aws("CreateFileSystem"))?;
        out.file_system.ok_or_else(|| StorageError::Aws {
            operation: "CreateFileSystem",
            message: "the answer had no file system".into(),
            transient: true,
        })
    }
}

impl FileSystemBackend for FsxFileSystems {
    async fn ensure(&self, req: &FileSystemRequest) -> Result<FileSystemState, StorageError> {
        if let Some(id) = &req.existing_file_system_id {
            return Ok(state(&self.describe_existing(id).await?, false));
        }
        if let Some(fs) = self.find(req).await? {
            return Ok(state(&fs, true));
        }
        let created = self.create(req).await?;
        if self.crash_after_create {
            return Err(StorageError::Interrupted);
        }
        Ok(state(&created, true))
    }

    async fn delete(&self, req: &FileSystemRequest) -> Result<FsDeletion, StorageError> {
        if req.existing_file_system_id.is_some() || req.deletion_policy == DeletionPolicy::Retain {
            return Ok(FsDeletion::Retained);
        }
        // By the recorded id (a deletion in progress is polled with one
        // call), else by tags.
        let recorded = match &req.recorded_file_system_id {
            Some(id) => match self.describe_existing(id).await {
                Ok(fs) if carries_tags(&fs, req) => Some(fs),
                Ok(_) | Err(StorageError::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        if recorded.as_ref().is_some_and(|fs| !live(fs)) {
            return Ok(FsDeletion::InProgress);
        }
        let found = match recorded {
            Some(fs) => Some(fs),
            None => match self.find_ours(req).await? {
                Some(fs) => Some(fs),
                None if req.recorded_file_system_id.is_none() => {
                    // Boxed: a rare path, kept out of every deletion's future.
                    ours(Box::pin(self.scanned_for_company(&req.company)).await?, req)?
                }
                None => None,
            },
        };
        let Some(fs) = found else {
            return Ok(FsDeletion::Deleted {
                final_backup: req.deletion_policy == DeletionPolicy::Snapshot,
            });
        };
        let id = fs.file_system_id().unwrap_or_default().to_owned();
        let skip = req.deletion_policy != DeletionPolicy::Snapshot;
        let mut backup_tags = tags(req);
        backup_tags.push(
            Tag::builder()
                .key("enclave.dev/final-backup")
                .value("true")
                .build(),
        );
        let request = self
            .fsx
            .delete_file_system()
            .file_system_id(&id)
            .client_request_token(&req.delete_request_token);
        let request = match req.fsx_type {
            FsxType::OpenZfs => request.open_zfs_configuration(
                DeleteFileSystemOpenZfsConfiguration::builder()
                    .skip_final_backup(skip)
                    .set_final_backup_tags((!skip).then(|| backup_tags.clone()))
                    .build(),
            ),
            FsxType::Lustre => request.lustre_configuration(
                DeleteFileSystemLustreConfiguration::builder()
                    .skip_final_backup(skip)
                    .set_final_backup_tags((!skip).then(|| backup_tags.clone()))
                    .build(),
            ),
        };
        match self.gate.call(|| request.clone().send()).await {
            Ok(_) => {}
            Err(GateError::Sdk(SdkError::ServiceError(e)))
                if e.err().is_file_system_not_found() => {}
            Err(e) => return Err(aws("DeleteFileSystem")(e)),
        }
        Ok(match self.describe_existing(&id).await {
            Ok(_) => FsDeletion::InProgress,
            Err(StorageError::NotFound(_)) => FsDeletion::Deleted {
                final_backup: !skip,
            },
            Err(e) => return Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::file_system_id;

    #[test]
    fn a_file_system_arn_gives_its_id_and_others_none() {
        assert_eq!(
            file_system_id("arn:aws:fsx:eu-west-1:123456789012:file-system/fs-0abc").as_deref(),
            Some("fs-0abc")
        );
        assert_eq!(
            file_system_id("arn:aws:fsx:eu-west-1:123456789012:backup/backup-0abc"),
            None
        );
        assert_eq!(
            file_system_id("arn:aws:fsx:eu-west-1:123456789012:file-system/"),
            None
        );
    }
}
