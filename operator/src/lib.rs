//! Enclave: a Kubernetes operator that turns `Company` and `Developer`
//! resources into isolated tenants.
//!
//! The layout follows the architecture: [`crd`] (types) → [`names`] (every
//! derived identifier) → [`builders`] (pure desired state) → [`plan`] (offline
//! view of what tenants imply) → [`cli`].

pub mod backends;
pub mod builders;
pub mod cli;
pub mod config;
pub mod controllers;
pub mod crd;
pub mod names;
pub mod plan;
pub mod posix_ids;
pub mod storage_prep;
pub mod validation;
pub mod workspace_init;
