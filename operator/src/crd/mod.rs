//! Custom resource types: `Company` (cluster-scoped) and `Developer` (namespaced).
//!
//! Schema rules live on the types so the API server rejects bad input before
//! the operator sees it; `enclave plan` evaluates the very same rules offline.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};

mod common;
mod company;
mod condition;
mod developer;

pub use common::{DeletionPolicy, ResourceSettings};
pub use company::{
    Company, CompanySpec, CompanyStatus, ControllerSpec, DatabaseMode, DatabaseSpec,
    DatabaseStatus, DeletionPolicies, EgressRule, FsxSpec, FsxType, NetworkSpec, QuotaSpec,
    SecretsSpec, StorageSpec, StorageStatus, VolumeSpec, WorkspaceDefaults,
};
pub use condition::{Condition, Text};
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

/// Declares `metadata.name` in a CRD's root schema, so that the root rules
/// on the name may report at `fieldPath: .metadata.name` (the API server
/// accepts a fieldPath only into declared properties; `name` is one of the
/// two metadata fields a CRD may declare, and `metadata` itself may carry
/// nothing else, not even a description).
pub fn declare_metadata_name(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let name = JSONSchemaProps {
                type_: Some("string".into()),
                description: Some(
                    "Name of the object: lowercase letters, digits and single hyphens, starting with a letter (see the rules on the object)."
                        .into(),
                ),
                ..Default::default()
            };
            let metadata = JSONSchemaProps {
                type_: Some("object".into()),
                properties: Some([("name".to_owned(), name)].into()),
                ..Default::default()
            };
            root.properties
                .get_or_insert_with(Default::default)
                .insert("metadata".into(), metadata);
        }
    }
    crd
}
