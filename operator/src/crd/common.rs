use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// CEL rule for a quantity field: a well-formed, positive Kubernetes quantity.
/// `string(self)` because quantities are int-or-string.
pub const POSITIVE_QUANTITY: &str =
    "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))";
/// Message of [`POSITIVE_QUANTITY`].
pub const POSITIVE_QUANTITY_MESSAGE: &str =
    "must be a positive Kubernetes quantity such as 500m, 2 or 4Gi";

/// What happens to data (database, file system, directory, secrets) when the
/// resource that implied it is deleted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Keep a final snapshot or backup, then delete.
    #[default]
    Snapshot,
    /// Delete without a final copy.
    Delete,
    /// Leave the data in place; Enclave only forgets it.
    Retain,
}

/// CPU and memory for one container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSettings {
    /// CPU request, a Kubernetes quantity such as `500m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub cpu_request: Option<Quantity>,
    /// CPU limit, a Kubernetes quantity such as `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub cpu_limit: Option<Quantity>,
    /// Memory request, a Kubernetes quantity such as `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub memory_request: Option<Quantity>,
    /// Memory limit, a Kubernetes quantity such as `4Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(POSITIVE_QUANTITY).message(POSITIVE_QUANTITY_MESSAGE))]
    pub memory_limit: Option<Quantity>,
}
