//! Company file systems on FSx (created per company, or an existing one of
//! which only the company's root directory is Enclave's).

mod fsx;

use std::future::Future;

pub use crate::backends::aws_calls::Busy;
pub use fsx::FsxFileSystems;
use thiserror::Error;

use crate::builders::FileSystemRequest;

/// Where a file system is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsPhase {
    /// Being created; ensure again later.
    Creating,
    /// Ready to mount.
    Available,
    /// FSx reported no lifecycle; ensure again later, with backoff (the
    /// controller bounds the attempts).
    Unknown,
    /// FSx reports a failure the company must look at.
    Failed(String),
    /// Being deleted.
    Deleting,
}

/// What ensure found or made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSystemState {
    /// File system id.
    pub file_system_id: String,
    /// DNS name clients mount.
    pub dns_name: Option<String>,
    /// Lustre mount name.
    pub mount_name: Option<String>,
    /// Lifecycle.
    pub phase: FsPhase,
    /// False for an existing file system named in the spec: Enclave never deletes it.
    pub owned: bool,
}

/// What delete did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsDeletion {
    /// Still going; delete again later.
    InProgress,
    /// Gone; with `Snapshot`, FSx took a final backup carrying the company's tags.
    Deleted {
        /// Whether a final backup was requested.
        final_backup: bool,
    },
    /// Left in place (`Retain`, or a file system Enclave does not own).
    Retained,
}

/// Why a file system step failed.
#[derive(Debug, Error)]
pub enum StorageError {
    /// File systems tagged for this company exist that are not this Company's.
    #[error(
        "FSx file system {id} is tagged for company {company} but is not this Company's ({reason}); Enclave will not touch it: remove or retag it; or, if this Company replaces the one it belongs to, annotate this Company with enclave.dev/adopt-uid=<that uid> to take it over"
    )]
    Conflict {
        /// The file system.
        id: String,
        /// The company.
        company: String,
        /// How we know.
        reason: String,
    },
    /// More than one file system carries this Company's tags.
    #[error(
        "FSx file systems {ids:?} all carry this Company's tags; Enclave uses none of them until an administrator deletes the extra ones"
    )]
    Duplicate {
        /// Their ids.
        ids: Vec<String>,
    },
    /// The existing file system named in the spec does not exist.
    #[error(
        "FSx file system {0} (spec.storage.fsx.fileSystemId) does not exist in this account and region"
    )]
    NotFound(String),
    /// An AWS call failed (after retries, if retryable).
    #[error("FSx {operation} failed: {message}")]
    Aws {
        /// The API call.
        operation: &'static str,
        /// What AWS said.
        message: String,
        /// Retrying later may help.
        transient: bool,
    },
    /// Not sent: the operator's FSx call budget is in use.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// A crash was injected after creating (tests).
    #[error("interrupted after CreateFileSystem (injected crash)")]
    Interrupted,
}

impl StorageError {
    /// Whether retrying later may succeed without a person's help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Aws { transient, .. } => *transient,
            Self::Interrupted | Self::Busy(_) => true,
            Self::Conflict { .. } | Self::Duplicate { .. } | Self::NotFound(_) => false,
        }
    }

    /// When the step can run again, if it was deferred by the call budget.
    pub fn busy(&self) -> Option<&Busy> {
        match self {
            Self::Busy(busy) => Some(busy),
            _ => None,
        }
    }
}

/// Company file systems as the controllers use them.
pub trait FileSystemBackend: Send + Sync {
    /// Finds (by tags) or creates the company's file system.
    fn ensure(
        &self,
        req: &FileSystemRequest,
    ) -> impl Future<Output = Result<FileSystemState, StorageError>> + Send;
    /// Carries out the deletion policy.
    fn delete(
        &self,
        req: &FileSystemRequest,
    ) -> impl Future<Output = Result<FsDeletion, StorageError>> + Send;
}
