//! Vault: tenant ACL policies, Kubernetes-auth roles and the write-ahead
//! credential store, on the KV v2 layout of the design.
//!
//! Every step is idempotent: it reads, compares and writes only what
//! differs, so an unchanged tenant costs no writes. Nothing Enclave did not
//! create is ever overwritten: policies carry an ownership marker line,
//! roles an ownership record in KV written before the role.

mod client;
mod credentials;
mod guard;
mod setup;
mod tenant;
mod verified;

use std::future::Future;

pub use client::{VaultAuth, VaultClientBackend, VaultSettings};
pub use credentials::{
    PASSWORD_ALPHABET, PASSWORD_LENGTH, Password, StoredCredentials, generate_password,
};
pub use guard::{check_kv_path, check_person_role, check_platform_path, check_policy, check_role};
pub use setup::{KubernetesAuthConfig, OPERATOR_POLICY, SetupRequest, SetupStep};
pub use tenant::{delete_developer, delete_tenant, ensure_company, ensure_developer};
use thiserror::Error;

use crate::builders::{JwtAuthRole, KubernetesAuthRole, VaultPolicy};

/// What an idempotent step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing: Vault already matched.
    Unchanged,
    /// It did not exist and was written.
    Created,
    /// It drifted and was corrected.
    Updated,
    /// It was removed.
    Deleted,
}

/// Why a Vault step failed.
#[derive(Debug, Error)]
pub enum VaultError {
    /// Something with Enclave's name exists that Enclave did not create.
    #[error(
        "Vault {what} {name:?} exists but was not created by Enclave (it has no ownership marker); \
         Enclave will not overwrite it: remove or rename it, then the tenant converges"
    )]
    NotOwned {
        /// `policy` or `role`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A policy, role or path failed the safety checks and was not written.
    #[error("refused to write Vault {what} {name:?}: {reason} (nothing was written)")]
    Unsafe {
        /// `policy`, `role` or `path`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Which check failed.
        reason: String,
    },
    /// Vault answered with an error or could not be reached.
    #[error(
        "Vault {operation} {path} failed: {source}; check the operator's Vault address, token and policy"
    )]
    Request {
        /// What was attempted, e.g. `write policy`.
        operation: &'static str,
        /// The Vault path.
        path: String,
        /// The client error.
        #[source]
        source: Box<vaultrs::error::ClientError>,
    },
    /// The company's Vault data belongs to an earlier Company of that name.
    #[error(
        "Vault holds the secrets of an earlier Company {company} (uid {owner}), kept by its deletion policy; Enclave will not hand them to this one: to take them over, annotate this Company enclave.dev/adopt-uid={owner}; otherwise remove {path} (and what is below companies/{company}/) from Vault"
    )]
    EarlierTenant {
        /// The company name.
        company: String,
        /// The uid recorded as the owner.
        owner: String,
        /// The ownership record.
        path: String,
    },
    /// Someone else wrote the same secret between our read and our write.
    #[error("{path} changed while Enclave was writing it; the next reconcile retries")]
    Conflict {
        /// The KV path.
        path: String,
    },
    /// The operating system's random source failed.
    #[error("cannot generate a credential: {0}")]
    Entropy(String),
    /// The operator could not authenticate.
    #[error("Vault login failed: {0}")]
    Login(String),
    /// A platform secret the operator needs is not there.
    #[error(
        "Vault has no secret at {path}; write it (see the README's operator configuration) and the tenant converges"
    )]
    Missing {
        /// The KV path.
        path: String,
    },
    /// Stored credentials are not what Enclave writes.
    #[error(
        "credentials at {path} are malformed ({reason}); fix the secret, or delete its metadata so Enclave generates new ones"
    )]
    Malformed {
        /// The KV path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl VaultError {
    /// Whether retrying later may succeed (network, 5xx, a concurrent write),
    /// as opposed to a state a person must fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Request { .. } | Self::Login(_) | Self::Conflict { .. } | Self::Entropy(_)
        )
    }
}

/// Vault as the controllers use it. Paths are below the configured KV v2
/// mount; names are those of the name module.
pub trait VaultBackend: Send + Sync {
    /// Writes `policy` unless Vault already holds exactly it.
    fn ensure_policy(
        &self,
        policy: &VaultPolicy,
    ) -> impl Future<Output = Result<Change, VaultError>> + Send;
    /// Deletes policy `name` if Enclave owns it; absent is fine.
    fn delete_policy(&self, name: &str) -> impl Future<Output = Result<Change, VaultError>> + Send;
    /// Writes `role` of `company` unless Vault already holds exactly it.
    fn ensure_role(
        &self,
        company: &str,
        role: &KubernetesAuthRole,
    ) -> impl Future<Output = Result<Change, VaultError>> + Send;
    /// Deletes role `name` of `company` if Enclave owns it; absent is fine.
    fn delete_role(
        &self,
        company: &str,
        name: &str,
    ) -> impl Future<Output = Result<Change, VaultError>> + Send;
    /// Writes a person's JWT-auth `role` of `company` in `mount` unless Vault
    /// already holds exactly it.
    fn ensure_person_role(
        &self,
        company: &str,
        mount: &str,
        role: &JwtAuthRole,
    ) -> impl Future<Output = Result<Change, VaultError>> + Send;
    /// Deletes person role `name` of `company` in `mount` if Enclave owns
    /// it; absent is fine.
    fn delete_person_role(
        &self,
        company: &str,
        mount: &str,
        name: &str,
    ) -> impl Future<Output = Result<Change, VaultError>> + Send;
    /// The credentials at `path`; generated and written first if there are none.
    fn ensure_credentials(
        &self,
        path: &str,
        username: &str,
    ) -> impl Future<Output = Result<StoredCredentials, VaultError>> + Send;
    /// Writes a new password as a new KV version and returns it.
    fn rotate_credentials(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<StoredCredentials, VaultError>> + Send;
    /// Reads a platform secret the operator needs (e.g. the shared Postgres
    /// admin credentials), below `enclave/`.
    fn read_platform_secret(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<std::collections::HashMap<String, String>, VaultError>> + Send;
    /// Permanently deletes every secret below `prefix`; returns how many.
    fn delete_secrets(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<usize, VaultError>> + Send;
    /// Every uid/gid recorded below `prefix`, by person key, but those of
    /// the keys in `skip` (listed, not read: one request per record read).
    fn recorded_posix_ids(
        &self,
        prefix: &str,
        skip: &std::collections::BTreeSet<String>,
    ) -> impl Future<Output = Result<std::collections::BTreeMap<String, i64>, VaultError>> + Send;
    /// Records `uid` at `path` unless a record exists (check-and-set), and
    /// returns the recorded one: written before anything uses the uid.
    fn record_posix_id(
        &self,
        path: &str,
        uid: i64,
    ) -> impl Future<Output = Result<i64, VaultError>> + Send;
    /// Forgets the uid recorded at `path` (its data is gone).
    fn forget_posix_id(&self, path: &str) -> impl Future<Output = Result<(), VaultError>> + Send;
    /// Records `owner` at `path` unless a record exists (check-and-set), and
    /// returns the recorded owner.
    fn claim(
        &self,
        path: &str,
        owner: &str,
    ) -> impl Future<Output = Result<String, VaultError>> + Send;
}
