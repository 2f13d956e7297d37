//! Side effects outside the cluster, each behind a small trait so every
//! reconcile step can be tested against the real service and its failures
//! injected.

pub mod aws_calls;
pub mod database;
pub mod storage;
pub mod vault;
