//! Integration tests: CRDs, `enclave plan`, and the real services the
//! harness (`e2e/run-tests.sh`) starts on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod aws_proxy;
mod bad_input;
mod bench;
mod chart;
mod checkov;
mod control_plane;
mod controller;
mod crds;
mod database;
mod fsx;
mod harness;
mod image;
mod kube_proxy;
mod kubelet;
mod kubernetes_schemas;
mod plan_examples;
mod real_api;
mod resilience;
mod services;
mod storage_objects;
mod storage_prep;
mod support;
mod tenants;
mod vault;
