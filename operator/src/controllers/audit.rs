//! The audit trail: every change the operator makes outside the object
//! itself is one JSON log line (target `enclave::audit`: what, which
//! tenant, why, outcome) and a Kubernetes Event on the object it serves.
//! An unchanged tenant produces neither. A failed reconcile is a Warning
//! Event on the object it failed for (and a log line), not an audit line:
//! it changed nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Writes audit lines and Events.
pub struct Audit {
    recorder: Recorder,
    /// Failure Events in flight: an outage that fails every tenant at
    /// once queues its Events here, not on the API server.
    failing: tokio::sync::Semaphore,
}

/// The `action` of a failure's Warning Event (before the note's hash): what
/// tells it from an audit line's Event.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// One change.
pub struct Change<'a> {
    /// The tenant (company name).
    pub tenant: &'a str,
    /// PascalCase, e.g. `VaultPolicyWritten`; the Event's reason.
    pub action: &'static str,
    /// Why, in words a person can act on.
    pub why: &'a str,
    /// Whether it worked.
    pub ok: bool,
}

impl Audit {
    /// Events are reported as controller `enclave`, instance `identity`.
    pub fn new(client: Client, identity: &str) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "enclave".into(),
                    instance: Some(identity.to_owned()),
                },
            ),
            failing: tokio::sync::Semaphore::new(4),
        }
    }

    /// Records `change` made for `object`.
    pub async fn record<K>(&self, object: &K, change: &Change<'_>)
    where
        K: Resource<DynamicType = ()>,
    {
        let reference = object.object_ref(&());
        let name = reference.name.clone().unwrap_or_default();
        let kind = reference.kind.clone().unwrap_or_default();
        tracing::info!(
            target: "enclave::audit",
            audit = true,
            tenant = change.tenant,
            object = %format!("{kind}/{name}"),
            action = change.action,
            why = change.why,
            outcome = if change.ok { "success" } else { "failure" },
            "{}", change.action
        );
        self.publish(
            &reference,
            if change.ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            change.action,
            change.action,
            change.why,
        )
        .await;
    }

    /// Publishes a Warning Event on `reference`: a reconcile failed with
    /// `reason` (e.g. `VaultFailed`) and `message` (what to do).
    pub async fn failure(&self, reference: &ObjectReference, reason: &str, message: &str) {
        // Never closed: the semaphore lives as long as `self`.
        let Ok(_permit) = self.failing.acquire().await else {
            return;
        };
        self.publish(
            reference,
            EventType::Warning,
            reason,
            RECONCILE_FAILED,
            message,
        )
        .await;
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1024).collect()),
            // The recorder folds Events of one object, reason and action
            // into a series that keeps the first note: a second, different
            // change (the database Creating, then Available) would read as
            // a repeat of the first. The note's hash keeps them apart; a
            // true repeat still joins its series.
            action: format!("{action}-{}", crate::names::short_hash(&[note])),
            secondary: None,
        };
        // The recorder keys a series by the whole reference: without its
        // version, a repeat after a status write still joins the series.
        let reference = ObjectReference {
            resource_version: None,
            ..reference.clone()
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an Event (the log line above stands)");
        }
    }
}
