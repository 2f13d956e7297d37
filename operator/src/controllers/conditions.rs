//! Conditions, built in one place; a transition time changes only when the
//! status does, so an unchanged state writes an identical status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::Condition;

/// Reasons, as constants a user can search for.
pub mod reasons {
    /// Everything is in place.
    pub const READY: &str = "Ready";
    /// The namespace exists and is not Enclave's.
    pub const CONFLICT: &str = "Conflict";
    /// Deletion is held by `spec.deletionProtection`.
    pub const DELETION_PROTECTED: &str = "DeletionProtected";
    /// A Developer lives in a namespace no Company owns.
    pub const NO_COMPANY: &str = "NoCompany";
    /// The database backend refused or failed.
    pub const DATABASE_ERROR: &str = "DatabaseError";
    /// Vault refused or failed.
    pub const VAULT_ERROR: &str = "VaultError";
    /// The storage backend refused or failed.
    pub const STORAGE_ERROR: &str = "StorageError";
    /// FSx describes the file system without a lifecycle.
    pub const FSX_LIFECYCLE_MISSING: &str = "FsxLifecycleMissing";
    /// The storage-prep Job failed.
    pub const STORAGE_PREP_FAILED: &str = "StoragePrepFailed";
    /// The storage cleanup Job failed; deletion waits.
    pub const STORAGE_CLEANUP_FAILED: &str = "StorageCleanupFailed";
    /// A deleted Developer's workspace pod was orphaned from its
    /// StatefulSet; deletion waits for a person to delete it.
    pub const WORKSPACE_ORPHANED: &str = "WorkspaceOrphaned";
    /// Something else is not ready.
    pub const WAITING: &str = "Waiting";
    /// The spec asks for something the operator cannot do; the message says
    /// what to change.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A Developer's workspace image is not one its Company allows.
    pub const IMAGE_NOT_ALLOWED: &str = "ImageNotAllowed";
}

/// Whether condition `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// A step deferred by the AWS call budget: a condition that is not there
/// yet says it waits for its turn; one that is stays as it was (the pacing
/// is not an outcome, and saying so on every turn would be a write each).
pub fn deferred(conditions: &mut Vec<Condition>, type_: &str, generation: Option<i64>) {
    if !conditions.iter().any(|c| c.type_ == type_) {
        set(
            conditions,
            type_,
            None,
            reasons::WAITING,
            "waiting for a turn within the operator's AWS call budget (aws.maxCallsPerSecond)",
            generation,
        );
    }
}

/// Sets condition `type_` in `conditions`, keeping its transition time when
/// its status is unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

/// Sets condition `type_` from the outcome of a step: True with
/// `ok_message`, or False with `reason` and the error, which says what to do.
pub fn set_outcome(
    conditions: &mut Vec<Condition>,
    type_: &str,
    outcome: &Result<(), super::Error>,
    ok_message: &str,
    reason: &str,
    generation: Option<i64>,
) {
    match outcome {
        Ok(()) => set(
            conditions,
            type_,
            Some(true),
            reasons::READY,
            ok_message,
            generation,
        ),
        Err(e) => set(
            conditions,
            type_,
            Some(false),
            reason,
            &e.to_string(),
            generation,
        ),
    }
}

/// Reasons no retry can clear: a person must change something.
const TERMINAL: &[&str] = &[
    reasons::CONFLICT,
    reasons::NO_COMPANY,
    reasons::IMAGE_NOT_ALLOWED,
    reasons::INVALID_SPEC,
    reasons::STORAGE_PREP_FAILED,
    reasons::STORAGE_CLEANUP_FAILED,
];

/// Sets `Stalled=True` (kstatus: Flux and Argo CD stop waiting and report
/// it) while a condition is False for a reason no retry can clear, with
/// that reason and message; removes it otherwise.
pub fn set_stalled(conditions: &mut Vec<Condition>, generation: Option<i64>) {
    let terminal = conditions
        .iter()
        .find(|c| {
            c.type_ != "Ready"
                && c.type_ != "Stalled"
                && c.status == "False"
                && TERMINAL.contains(&&*c.reason)
        })
        .map(|c| (c.reason.clone(), format!("{}: {}", c.type_, c.message)));
    match terminal {
        Some((reason, message)) => set(
            conditions,
            "Stalled",
            Some(true),
            &reason,
            &message,
            generation,
        ),
        None => conditions.retain(|c| c.type_ != "Stalled"),
    }
}

/// Sets `Ready`: True with `ready_message` when nothing is `pending`,
/// otherwise False, naming what it waits for.
pub fn set_ready(
    conditions: &mut Vec<Condition>,
    pending: &[&str],
    ready_message: &str,
    generation: Option<i64>,
) {
    if pending.is_empty() {
        set(
            conditions,
            "Ready",
            Some(true),
            reasons::READY,
            ready_message,
            generation,
        );
    } else {
        let message = format!("waiting for {}", pending.join(", "));
        set(
            conditions,
            "Ready",
            Some(false),
            reasons::WAITING,
            &message,
            generation,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{reasons, set, set_stalled};

    #[test]
    fn a_terminal_reason_stalls_and_clearing_it_unstalls() {
        let mut conditions = Vec::new();
        set(
            &mut conditions,
            "StorageReady",
            Some(false),
            reasons::WAITING,
            "creating",
            Some(1),
        );
        set_stalled(&mut conditions, Some(1));
        assert!(
            conditions.iter().all(|c| c.type_ != "Stalled"),
            "waiting is progress"
        );
        set(
            &mut conditions,
            "WorkspaceReady",
            Some(false),
            reasons::IMAGE_NOT_ALLOWED,
            "image x",
            Some(2),
        );
        set_stalled(&mut conditions, Some(2));
        let stalled = conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (&*stalled.status, &*stalled.reason),
            ("True", reasons::IMAGE_NOT_ALLOWED)
        );
        assert!(
            stalled.message.starts_with("WorkspaceReady: "),
            "{}",
            stalled.message
        );
        set(
            &mut conditions,
            "WorkspaceReady",
            Some(true),
            reasons::READY,
            "ok",
            Some(3),
        );
        set_stalled(&mut conditions, Some(3));
        assert!(conditions.iter().all(|c| c.type_ != "Stalled"));
    }
}
