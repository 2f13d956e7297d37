//! Enclave: a Kubernetes operator that turns `Company` and `Developer`
//! resources into isolated tenants.
//!
//! The layout follows the architecture: [`crd`] (types) → [`names`] (every
//! derived identifier) → [`builders`] (pure desired state) → [`plan`] (offline
//! view of what tenants imply) → [`cli`].

pub mod crd;
pub mod names;
