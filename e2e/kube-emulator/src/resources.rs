//! The kinds the emulator serves: built-in ones, and CRDs installed through
//! the API.

use serde_json::{Value, json};

/// One served resource (a kind at one group/version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the core group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name in URLs.
    pub plural: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a status subresource (main writes keep status, status writes keep the rest).
    pub status: bool,
    /// Short names, for discovery.
    pub short_names: Vec<String>,
}

impl Resource {
    fn new(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status,
            short_names: vec![],
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`: how errors name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Discovery entry.
    pub fn discovery(&self) -> Value {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        verbs.sort_unstable();
        json!({
            "name": self.plural,
            "singularName": self.kind.to_lowercase(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
        })
    }
}

/// The built-in kinds the operator touches (and a few it may).
pub fn builtins() -> Vec<Resource> {
    vec![
        Resource::new("", "v1", "namespaces", "Namespace", false, true),
        Resource::new("", "v1", "serviceaccounts", "ServiceAccount", true, false),
        Resource::new("", "v1", "resourcequotas", "ResourceQuota", true, true),
        Resource::new("", "v1", "limitranges", "LimitRange", true, false),
        Resource::new(
            "",
            "v1",
            "persistentvolumes",
            "PersistentVolume",
            false,
            true,
        ),
        Resource::new(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            true,
        ),
        Resource::new("", "v1", "pods", "Pod", true, true),
        Resource::new("", "v1", "services", "Service", true, true),
        Resource::new("", "v1", "configmaps", "ConfigMap", true, false),
        Resource::new("", "v1", "secrets", "Secret", true, false),
        Resource::new("", "v1", "events", "Event", true, false),
        Resource::new("apps", "v1", "statefulsets", "StatefulSet", true, true),
        Resource::new("apps", "v1", "deployments", "Deployment", true, true),
        Resource::new("batch", "v1", "jobs", "Job", true, true),
        Resource::new(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            false,
        ),
        Resource::new(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            false,
        ),
        Resource::new(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            false,
        ),
        Resource::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            false,
        ),
        Resource::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            false,
        ),
        Resource::new("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        Resource::new("events.k8s.io", "v1", "events", "Event", true, false),
        Resource::new(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            false,
            false,
        ),
        Resource::new(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
    ]
}

/// The resource a CRD object defines (its first served version).
pub fn from_crd(crd: &Value) -> Option<Resource> {
    let spec = crd.get("spec")?;
    let version = spec["versions"]
        .as_array()?
        .iter()
        .find(|v| v["served"].as_bool().unwrap_or(true))?;
    Some(Resource {
        group: spec["group"].as_str()?.to_owned(),
        version: version["name"].as_str()?.to_owned(),
        plural: spec["names"]["plural"].as_str()?.to_owned(),
        kind: spec["names"]["kind"].as_str()?.to_owned(),
        namespaced: spec["scope"].as_str() == Some("Namespaced"),
        status: version["subresources"].get("status").is_some(),
        short_names: spec["names"]["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}
