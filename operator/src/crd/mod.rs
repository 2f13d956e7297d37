//! Custom resource types: `Company` (cluster-scoped) and `Developer` (namespaced).
//!
//! Schema rules live on the types so the API server rejects bad input before
//! the operator sees it; `enclave plan` evaluates the very same rules offline.

mod common;
mod company;
mod developer;

pub use common::{DeletionPolicy, ResourceSettings};
pub use company::{
    Company, CompanySpec, CompanyStatus, ControllerSpec, DatabaseMode, DatabaseSpec,
    DatabaseStatus, EgressRule, FsxSpec, FsxType, NetworkSpec, QuotaSpec, StorageSpec,
    StorageStatus, VolumeSpec, WorkspaceDefaults,
};
pub use developer::{
    Developer, DeveloperGit, DeveloperRole, DeveloperSpec, DeveloperStatus, DeveloperStorage,
    DeveloperWorkspace,
};

/// API group of every Enclave resource.
pub const GROUP: &str = "enclave.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Regex for a Company or Developer name: a DNS-1123 label that is also a legal
/// RDS identifier fragment (starts with a letter, no `--`, no trailing `-`).
pub const NAME_PATTERN: &str = "^[a-z]([-]?[a-z0-9])*$";
/// Longest Company name; keeps `company-<name>`, `enclave-<name>` and the final
/// snapshot identifier within 63 characters without truncation.
pub const COMPANY_NAME_MAX: usize = 40;
/// Longest Developer name; keeps `workspace-<name>` below the 52 characters a
/// StatefulSet name may have.
pub const DEVELOPER_NAME_MAX: usize = 30;
/// Alphabet of `Developer.spec.subject`: an identity-provider id (OIDC `sub`),
/// never an e-mail address (`@` is refused) and nothing a Vault path could
/// interpret (`*`, `+`, `/`, quotes, braces, whitespace).
pub const SUBJECT_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._:|-]*$";
/// Longest `subject`.
pub const SUBJECT_MAX: usize = 255;
