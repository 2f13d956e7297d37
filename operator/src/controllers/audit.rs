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
}

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
            change.why,
        )
        .await;
    }

    /// Publishes a Warning Event on `reference`: a reconcile failed with
    /// `reason` (e.g. `VaultFailed`) and `message` (what to do).
    pub async fn failure(&self, reference: &ObjectReference, reason: &str, message: &str) {
        self.publish(reference, EventType::Warning, reason, message)
            .await;
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
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
            action: format!("{reason}-{}", crate::names::short_hash(&[note])),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::debug!(error = %e, "could not publish an Event (the log line above stands)");
        }
    }
}
