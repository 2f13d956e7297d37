use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{POSITIVE_QUANTITY, POSITIVE_QUANTITY_MESSAGE, ResourceSettings};
use super::condition::Condition;

/// A person working for a company: one isolated workspace pod, a private
/// directory and Vault secrets only they can read. The company is the
/// namespace the Developer lives in.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "enclave.dev",
    version = "v1alpha1",
    kind = "Developer",
    namespaced,
    shortname = "dev",
    category = "enclave",
    status = "DeveloperStatus",
    derive = "PartialEq",
    doc = "A developer of the company that owns this namespace: one isolated workspace pod, a private directory and personal Vault secrets.",
    cel,
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.workspace.suspended"),
    printcolumn(name = "UID", type_ = "integer", json_path = ".status.uid", priority = "1"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".status.podName", priority = "1"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 30").message("Developer name must be at most 30 characters (it is part of the pod, ServiceAccount and Vault names)").field_path(".metadata.name"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-]?[a-z0-9])*$')").message("Developer name must start with a lowercase letter and contain only lowercase letters, digits and single hyphens, not ending in a hyphen").field_path(".metadata.name"),
)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperSpec {
    /// Opaque identity-provider id of the person (for example an OIDC `sub`).
    /// No e-mail and no name: only an identifier is stored. Personal data
    /// (directory, secrets) is keyed to it. Immutable: a different person is a
    /// new Developer.
    #[schemars(length(min = 1, max = 255), pattern(r"^[A-Za-z0-9][A-Za-z0-9._:|-]*$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("subject is immutable: delete the Developer and create a new one for a different person"))]
    pub subject: String,

    /// `Developer` (default) or `Admin`: also manages the company's
    /// Developers and, as a person (their own identity-provider login, with
    /// the operator's `vault.personAuthMount`), writes the company's shared
    /// secrets. Every workspace, an Admin's too, reads only the development
    /// secrets and its owner's own.
    #[serde(default)]
    pub role: DeveloperRole,

    /// Overrides of the company's workspace defaults.
    // Boxed: most Developers have none, and the watch holds every one
    // (120 bytes less each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Box<DeveloperWorkspace>>,

    /// Git settings of the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<DeveloperGit>,

    /// The developer's private directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<DeveloperStorage>,
}

/// What a Developer may do with the company's shared secrets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeveloperRole {
    /// Reads the company's development secrets and its own.
    #[default]
    Developer,
    /// Also writes the company's shared secrets and reads production ones.
    Admin,
}

/// Workspace overrides for one developer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperWorkspace {
    /// Container image; overrides the company default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    )]
    pub image: Option<String>,
    /// CPU and memory; override the company default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSettings>,
    /// Scale the workspace to zero and keep its data.
    #[serde(default)]
    pub suspended: bool,
}

/// Git settings of a workspace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperGit {
    /// Branch checked out on first clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), pattern(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$"))]
    #[x_kube(validation = Rule::new("!self.contains('..') && !self.endsWith('/') && !self.endsWith('.lock')").message("must be a valid git branch name"))]
    pub branch: Option<String>,
}

/// The developer's private directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperStorage {
    /// Size of the directory's volume (quota), e.g. `50Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub quota: Option<Quantity>,
}

/// Observed state of a Developer. Never holds a credential.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeveloperStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `VaultReady`, `StorageReady`, `WorkspaceReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// POSIX user id allocated to this developer (stable, never reused while its data exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<i64>,
    /// POSIX group id allocated to this developer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<i64>,
    /// Name of the workspace pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Path of the private directory below the company root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_path: Option<String>,
    /// Vault Kubernetes-auth role the workspace logs in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_role: Option<String>,
    /// Vault policy attached to that role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_policy: Option<String>,
    /// Vault JWT-auth role an Admin person logs in to with their own
    /// identity-provider token, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_vault_role: Option<String>,
    /// The JWT auth mount of that role (so it is removed there even after
    /// the operator's configuration names another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_vault_mount: Option<String>,
}
