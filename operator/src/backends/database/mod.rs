//! The company database: a dedicated RDS instance ([`RdsDatabase`]) or a
//! database and login role in the shared PostgreSQL instance
//! ([`SharedPostgres`]), with credentials from the Vault credential store
//! written before anything uses them.

mod rds;
mod shared;
mod sql;

use std::{fmt, future::Future, sync::Arc};

pub use crate::backends::aws_calls::{Busy, CallGate, CallLimits, CallStats};
pub use rds::RdsDatabase;
pub use shared::SharedPostgres;
pub use sql::{quote_ident, quote_literal};
use thiserror::Error;

use super::vault::VaultError;
use crate::builders::DatabaseRequest;

/// An external step after which a crash can be injected in tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The credentials are in Vault.
    CredentialsWritten,
    /// The RDS instance was created.
    InstanceCreated,
    /// A rotated password was applied to the instance or role.
    PasswordApplied,
    /// The login role was created (Shared).
    RoleCreated,
    /// The database was created (Shared).
    DatabaseCreated,
    /// PUBLIC lost access to the database (Shared).
    Granted,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Called after each external step; returning `true` simulates a crash
/// right there (tests only; production passes none).
pub type CrashHook = Arc<dyn Fn(Step) -> bool + Send + Sync>;

/// Where the database is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Being created; ensure again later.
    Creating,
    /// Being changed; ensure again later.
    Modifying,
    /// Ready for clients.
    Available,
    /// Being deleted; delete again later.
    Deleting,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What ensure found or made; the controller records it in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseState {
    /// RDS identifier, or the shared instance's name.
    pub identifier: String,
    /// Host clients connect to, once known.
    pub endpoint: Option<String>,
    /// Port, once known.
    pub port: Option<i32>,
    /// Database name.
    pub database_name: String,
    /// Vault KV path of the credentials.
    pub credentials_path: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// KV version of the credentials the database uses; `None` until applied.
    pub credentials_version: Option<u64>,
    /// Spec changes the database cannot apply, for a condition.
    pub unapplied: Vec<String>,
}

/// What delete did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Still going; delete again later.
    InProgress,
    /// Gone; the final snapshot (if the policy asked for one) is named here.
    Deleted {
        /// Final snapshot identifier, for `Snapshot` in Dedicated mode.
        snapshot: Option<String>,
    },
    /// The login role is gone, the database and its data are kept (Shared, `Snapshot`).
    RoleDropped,
    /// Left in place (`Retain`).
    Retained,
}

/// Why a database step failed.
#[derive(Debug, Error)]
pub enum DatabaseError {
    /// A resource with Enclave's name exists that is not this Company's.
    #[error(
        "{what} {name:?} exists but is not this Company's ({reason}); Enclave will not touch it: remove or rename it; or, if this Company replaces the one it belongs to, annotate this Company with enclave.dev/adopt-uid=<that uid> to take it over"
    )]
    Conflict {
        /// `RDS instance`, `role`, `database`.
        what: &'static str,
        /// Its name.
        name: String,
        /// How we know.
        reason: String,
    },
    /// A name failed the safety checks.
    #[error("refused {what} name {name:?}: {reason}")]
    Unsafe {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// An AWS call failed (after retries, if it was retryable).
    #[error("RDS {operation} failed: {message}")]
    Aws {
        /// The API call.
        operation: &'static str,
        /// What AWS said.
        message: String,
        /// Throttling, 5xx or network: retrying later may help.
        transient: bool,
    },
    /// Not sent: the operator's RDS call budget is in use.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// A PostgreSQL statement failed.
    #[error("PostgreSQL {operation} failed: {source}")]
    Postgres {
        /// What was attempted.
        operation: String,
        /// The driver's error (with SQLSTATE).
        #[source]
        source: tokio_postgres::Error,
    },
    /// The operator configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// A crash was injected after this step (tests).
    #[error("interrupted after {0} (injected crash)")]
    Interrupted(Step),
}

impl DatabaseError {
    /// Whether retrying later may succeed without a person's help.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Aws { transient, .. } => *transient,
            Self::Vault(e) => e.is_transient(),
            Self::Postgres { .. } | Self::Interrupted(_) | Self::Busy(_) => true,
            Self::Conflict { .. } | Self::Unsafe { .. } | Self::Config(_) => false,
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

/// The company database as the controllers use it.
pub trait DatabaseBackend: Send + Sync {
    /// Converges the database to `req`. `applied_version` is the credentials
    /// version recorded in status: a newer one in Vault (a rotation) is
    /// applied to the database.
    fn ensure(
        &self,
        req: &DatabaseRequest,
        applied_version: Option<u64>,
    ) -> impl Future<Output = Result<DatabaseState, DatabaseError>> + Send;
    /// Carries out `req`'s deletion policy.
    fn delete(
        &self,
        req: &DatabaseRequest,
    ) -> impl Future<Output = Result<Deletion, DatabaseError>> + Send;
    /// Takes the reconcile's place at the backend's call budget before a
    /// change that its next `ensure` must follow at once (a rotation
    /// written to Vault); [`DatabaseError::Busy`] when it would wait.
    fn reserve(&self) -> Result<(), DatabaseError> {
        Ok(())
    }
}

pub(crate) fn checkpoint(hook: Option<&CrashHook>, step: Step) -> Result<(), DatabaseError> {
    match hook {
        Some(hook) if hook(step) => Err(DatabaseError::Interrupted(step)),
        _ => Ok(()),
    }
}
