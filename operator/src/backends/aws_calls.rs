//! Every AWS call (RDS, FSx) goes through a [`CallGate`]: bounded concurrency, a
//! maximum call rate (retries included), and retries of throttling and
//! server errors with full-jitter exponential backoff. The SDK's own retries
//! are off so that every attempt passes the gate.
//!
//! A reconcile must not hold one of the controller's workers while it waits
//! for the gate: inside [`deferring`] (how the controllers run a reconcile)
//! a call that cannot start at once answers [`Busy`] with the time to come
//! back, and the reconcile is requeued for then. Once one of its calls was
//! admitted (at any gate), the reconcile's later calls wait their turn
//! instead, so that a step of several calls, or the storage step after the
//! database's, is not started over and over under load (admission per
//! gate measured a third slower at saturation: thirty companies onboarded
//! in 42 s instead of 27-29 s). Such a wait is short: the turns of the
//! other reconciles admitted at that time, at most one per controller
//! worker (8 × 200 ms at the defaults). A call AWS still throttles after
//! the in-place retries (backoffs of up to a second) is [`Busy`] too: it
//! was not processed. Outside [`deferring`] (tests, the CLI) every call
//! waits its turn.

use std::{
    cell::Cell,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use rand::{TryRng, rngs::SysRng};
use tokio::{sync::Semaphore, time::Instant};

/// Error codes AWS uses for throttling.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
];

/// The longest a deferring reconcile sleeps in the gate: for its turn at
/// the rate (at most one interval), or before retrying an attempt AWS
/// throttled or failed (longer backoffs go back to the reconcile's own).
const MAX_DEFERRING_WAIT: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Whether a call of the current (deferring) reconcile was admitted.
    static ADMITTED: Cell<bool>;
}

/// Runs `reconcile` so that the gates it calls answer [`Busy`] instead of
/// waiting for a turn (see the module documentation).
pub async fn deferring<F: Future>(reconcile: F) -> F::Output {
    ADMITTED.scope(Cell::new(false), reconcile).await
}

/// Whether the current task defers: it runs in [`deferring`] and has had
/// no call admitted yet.
fn defers() -> bool {
    ADMITTED
        .try_with(|admitted| !admitted.get())
        .unwrap_or(false)
}

/// Whether the current task runs in [`deferring`].
fn in_reconcile() -> bool {
    ADMITTED.try_with(|_| ()).is_ok()
}

fn mark_admitted() {
    let _ = ADMITTED.try_with(|admitted| admitted.set(true));
}

/// Limits of one [`CallGate`].
#[derive(Clone, Debug)]
pub struct CallLimits {
    /// Calls in flight at once.
    pub max_concurrent: usize,
    /// Calls started per second, retries included.
    pub max_per_second: f64,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 4,
            max_per_second: 5.0,
            max_attempts: 6,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// What a gate has done, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Attempts started.
    pub attempts: u64,
    /// Attempts answered with throttling or a server error, then retried.
    pub retried: u64,
    /// Calls answered [`Busy`] (not sent): the reconcile comes back later.
    pub deferred: u64,
}

impl CallStats {
    /// What was counted since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            attempts: self.attempts.saturating_sub(earlier.attempts),
            retried: self.retried.saturating_sub(earlier.retried),
            deferred: self.deferred.saturating_sub(earlier.deferred),
        }
    }
}

/// Why a call was [`Busy`].
pub const BUDGET_IN_USE: &str =
    "the operator's call budget is in use (config aws.maxCallsPerSecond, aws.maxConcurrentCalls)";
/// Why a call was [`Busy`].
pub const THROTTLED_BY_AWS: &str = "AWS throttled it after retries (other tools share the account's API rate: lower aws.maxCallsPerSecond if this persists)";

/// A call not sent, or not processed: its step runs again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{service} call paced: {cause}; the step runs again in {} ms", retry_after.as_millis())]
pub struct Busy {
    /// The AWS service.
    pub service: &'static str,
    /// [`BUDGET_IN_USE`] or [`THROTTLED_BY_AWS`].
    pub cause: &'static str,
    /// When to come back.
    pub retry_after: Duration,
}

/// Why a gated call failed.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "the SDK's own error, returned as it was; boxing it would only move the size"
)]
pub enum GateError<E> {
    /// Not sent: the budget is in use.
    Busy(Busy),
    /// Sent (after retries, if retryable), and AWS or the network failed it.
    Sdk(SdkError<E, HttpResponse>),
}

/// Start times handed out at the gate's rate.
struct Pace {
    /// The earliest start of the next admitted call.
    next: Instant,
    /// The time the last deferred caller was told to come back: deferred
    /// callers are spread at the rate instead of all coming back at once.
    promised: Instant,
}

/// See the module documentation.
pub struct CallGate {
    service: &'static str,
    limits: CallLimits,
    in_flight: Semaphore,
    pace: Mutex<Pace>,
    attempts: AtomicU64,
    retried: AtomicU64,
    deferred: AtomicU64,
}
impl CallGate {
    /// A gate for `service` (`RDS`, `FSx`: it names the service in
    /// [`Busy`]) with `limits`.
    pub fn new(service: &'static str, limits: CallLimits) -> Self {
        let now = Instant::now();
        Self {
            service,
            in_flight: Semaphore::new(limits.max_concurrent.max(1)),
            limits,
            pace: Mutex::new(Pace {
                next: now,
                promised: now,
            }),
            attempts: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CallStats {
        CallStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.limits.max_per_second.max(0.001))
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The start of the next turn at the rate; [`Busy`] when `defer` and it
    /// is more than one interval away.
    fn next_turn(&self, pace: &mut Pace, defer: bool) -> Result<Instant, Busy> {
        let now = Instant::now();
        let start = pace.next.max(now);
        if defer && start.duration_since(now) > self.interval().min(MAX_DEFERRING_WAIT) {
            return Err(self.busy(pace, now, start));
        }
        Ok(start)
    }

    /// Takes the next turn (see [`CallGate::next_turn`]).
    fn turn(&self, defer: bool) -> Result<Instant, Busy> {
        let mut pace = self.pace();
        let start = self.next_turn(&mut pace, defer)?;
        pace.next = start + self.interval();
        Ok(start)
    }

    /// [`Busy`] until the first turn not promised to an earlier deferred
    /// caller after `free_at`.
    fn busy(&self, pace: &mut Pace, now: Instant, free_at: Instant) -> Busy {
        let at = pace.promised.max(free_at);
        pace.promised = at + self.interval();
        self.deferred.fetch_add(1, Ordering::Relaxed);
        Busy {
            service: self.service,
            cause: BUDGET_IN_USE,
            retry_after: at.duration_since(now),
        }
    }

    /// [`Busy`] for a call that finds every concurrency slot taken: calls
    /// take about an interval, so come back after the next one.
    fn busy_in_flight(&self) -> Busy {
        let mut pace = self.pace();
        let now = Instant::now();
        let free_at = pace.next.max(now) + self.interval();
        self.busy(&mut pace, now, free_at)
    }

    /// Takes this reconcile's place at the gate before a step that must not
    /// stop between its first change and its first call (a credential
    /// rotation written to Vault before the database applies it): [`Busy`]
    /// unless a call could start within one interval. Its calls then wait
    /// their turn. Outside [`deferring`] it always succeeds.
    pub fn reserve(&self) -> Result<(), Busy> {
        if !defers() {
            return Ok(());
        }
        if self.in_flight.available_permits() == 0 {
            return Err(self.busy_in_flight());
        }
        self.next_turn(&mut self.pace(), true)?;
        mark_admitted();
        Ok(())
    }

    /// The backoff before retry `attempt`, and its ceiling.
    fn backoff(&self, attempt: u32) -> (Duration, Duration) {
        let exp = self
            .limits
            .base_backoff
            .saturating_mul(1 << attempt.min(16));
        let cap = exp.min(self.limits.max_backoff);
        let mut bytes = [0u8; 8];
        let fraction = match SysRng.try_fill_bytes(&mut bytes) {
            Ok(()) => {
                f64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
                    / f64::from(u32::MAX)
            }
            Err(_) => 0.5,
        };
        (cap.mul_f64(fraction), cap)
    }

    /// Runs `call` (one attempt per invocation) under the gate's limits,
    /// retrying throttling, 5xx, timeouts and broken connections.
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, GateError<E>>
    where
        E: ProvideErrorMetadata,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        self.attempts(call, is_retryable).await
    }

    /// Runs a call that is not idempotent: retried only when AWS throttled
    /// it (a throttled request was not processed). After a 5xx or a lost
    /// answer it may have taken effect, so its retry is the next reconcile,
    /// which looks before it creates.
    pub async fn call_not_idempotent<T, E, F, Fut>(&self, call: F) -> Result<T, GateError<E>>
    where
        E: ProvideErrorMetadata,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        self.attempts(call, is_throttling).await
    }

    /// Every page of a paginated call, each page a [`CallGate::call`]:
    /// `page` is called with the previous page's token (`None` first),
    /// `next` reads a page's token; an empty or absent one ends it.
    pub async fn pages<T, E, F, Fut>(
        &self,
        mut page: F,
        next: fn(&T) -> Option<&str>,
    ) -> Result<Vec<T>, GateError<E>>
    where
        E: ProvideErrorMetadata,
        F: FnMut(Option<String>) -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let mut pages = Vec::new();
        let mut token = None;
        loop {
            let got = self.call(|| page(token.clone())).await?;
            token = next(&got).filter(|t| !t.is_empty()).map(str::to_owned);
            pages.push(got);
            if token.is_none() {
                return Ok(pages);
            }
        }
    }

    async fn attempts<T, E, F, Fut>(
        &self,
        mut call: F,
        retry: fn(&SdkError<E, HttpResponse>) -> bool,
    ) -> Result<T, GateError<E>>
    where
        E: ProvideErrorMetadata,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let max_attempts = self.limits.max_attempts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = {
                let defer = defers();
                let _permit = if defer {
                    match self.in_flight.try_acquire() {
                        Ok(permit) => Some(permit),
                        Err(_) => return Err(GateError::Busy(self.busy_in_flight())),
                    }
                } else {
                    // The semaphore is never closed, so this never fails.
                    self.in_flight.acquire().await.ok()
                };
                let start = self.turn(defer).map_err(GateError::Busy)?;
                mark_admitted();
                tokio::time::sleep_until(start).await;
                self.attempts.fetch_add(1, Ordering::Relaxed);
                call().await
            };
            match result {
                Err(e) if attempt < max_attempts && retry(&e) => {
                    let (backoff, ceiling) = self.backoff(attempt);
                    // A reconcile backs off in its own retry, not on a
                    // worker; AWS's throttling (the request was not
                    // processed) is pacing, like the gate's own.
                    if in_reconcile() && ceiling > MAX_DEFERRING_WAIT {
                        if !is_throttling(&e) {
                            return Err(GateError::Sdk(e));
                        }
                        self.deferred.fetch_add(1, Ordering::Relaxed);
                        return Err(GateError::Busy(Busy {
                            service: self.service,
                            cause: THROTTLED_BY_AWS,
                            retry_after: ceiling,
                        }));
                    }
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                }
                other => return other.map_err(GateError::Sdk),
            }
        }
    }
}

/// AWS refused the request for its rate (it was not processed).
pub fn is_throttling<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(ctx) if ctx.err().code().is_some_and(|c| THROTTLING.contains(&c)))
}

/// Throttling, a 5xx answer, a timeout or a broken connection.
pub fn is_retryable<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::ServiceError(ctx) => {
            ctx.err().code().is_some_and(|c| THROTTLING.contains(&c))
                || ctx.raw().status().is_server_error()
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => false,
    }
}

/// A short message for an SDK error.
pub fn describe<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: &SdkError<E, HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(ctx) => format!(
            "{}: {}",
            ctx.err().code().unwrap_or("error"),
            ctx.err().message().unwrap_or("no message")
        ),
        other => format!("{other:?}").chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use aws_smithy_runtime_api::{client::result::SdkError, http::StatusCode};
    use aws_smithy_types::{body::SdkBody, error::ErrorMetadata};
    use tokio::time::Instant;

    use super::{
        BUDGET_IN_USE, CallGate, CallLimits, GateError, HttpResponse, THROTTLED_BY_AWS, deferring,
    };

    type Answer = Result<(), SdkError<ErrorMetadata, HttpResponse>>;

    fn gate(per_second: f64, max_concurrent: usize) -> Arc<CallGate> {
        Arc::new(CallGate::new(
            "test",
            CallLimits {
                max_per_second: per_second,
                max_concurrent,
                ..CallLimits::default()
            },
        ))
    }

    #[allow(clippy::result_large_err, reason = "the SDK's error type")]
    fn throttled() -> Answer {
        let raw = HttpResponse::new(StatusCode::try_from(400).expect("status"), SdkBody::empty());
        Err(SdkError::service_error(
            ErrorMetadata::builder().code("Throttling").build(),
            raw,
        ))
    }

    /// One call through `gate` from a reconcile of its own; how long it
    /// took and how it ended.
    async fn reconcile_call(
        gate: &Arc<CallGate>,
        sent: &Arc<AtomicU32>,
    ) -> (Duration, Result<(), GateError<ErrorMetadata>>) {
        let started = Instant::now();
        let result = deferring(gate.call(|| {
            sent.fetch_add(1, Ordering::SeqCst);
            async { Answer::Ok(()) }
        }))
        .await;
        (started.elapsed(), result)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_is_told_when_to_come_back_instead_of_waiting_for_the_rate() {
        // 2 calls per second: one call at once, the next within the
        // interval (500 ms), any later one deferred, spread at the rate.
        let gate = gate(2.0, 8);
        let sent = Arc::new(AtomicU32::new(0));
        let (first, second, third, fourth) = tokio::join!(
            reconcile_call(&gate, &sent),
            reconcile_call(&gate, &sent),
            reconcile_call(&gate, &sent),
            reconcile_call(&gate, &sent),
        );
        assert!(first.1.is_ok() && second.1.is_ok(), "{first:?} {second:?}");
        assert_eq!(second.0, Duration::from_millis(500), "its turn");
        let busy = |r: &(Duration, Result<(), GateError<ErrorMetadata>>)| match &r.1 {
            Err(GateError::Busy(busy)) => {
                assert_eq!(r.0, Duration::ZERO, "answered at once: {r:?}");
                assert_eq!(busy.cause, BUDGET_IN_USE);
                busy.retry_after
            }
            other => panic!("expected Busy, got {other:?}"),
        };
        assert_eq!(busy(&third), Duration::from_secs(1), "the first free turn");
        assert_eq!(busy(&fourth), Duration::from_millis(1500), "the next");
        assert_eq!(
            sent.load(Ordering::SeqCst),
            2,
            "deferred calls are not sent"
        );
        assert_eq!(gate.stats().deferred, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_whose_call_was_admitted_waits_its_turn_for_the_next() {
        let (rds, fsx) = (gate(4.0, 8), gate(4.0, 8));
        let ok = || async { Answer::Ok(()) };
        let result = deferring(async {
            rds.call(ok).await?;
            // Others took the next three turns at each gate.
            for _ in 0..3 {
                rds.turn(false).expect("a turn");
            }
            let before = Instant::now();
            rds.call(ok).await?;
            let rds_waited = before.elapsed();
            for _ in 0..3 {
                fsx.turn(false).expect("a turn");
            }
            let before = Instant::now();
            fsx.call(ok).await?;
            Ok::<_, GateError<ErrorMetadata>>((rds_waited, before.elapsed()))
        })
        .await;
        let (rds_waited, fsx_waited) = result.expect("the admitted reconcile's calls go through");
        assert_eq!(rds_waited, Duration::from_secs(1), "after the turns taken");
        assert_eq!(
            fsx_waited,
            Duration::from_millis(750),
            "after the turns taken"
        );
        // A reconcile with nothing admitted is deferred at the same moment.
        let sent = Arc::new(AtomicU32::new(0));
        rds.turn(false).expect("a turn");
        rds.turn(false).expect("a turn");
        let (_, fresh) = reconcile_call(&rds, &sent).await;
        assert!(matches!(fresh, Err(GateError::Busy(_))), "{fresh:?}");
        assert_eq!(sent.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_is_reserved_before_a_change_its_call_must_follow() {
        let gate = gate(2.0, 8);
        let ok = || async { Answer::Ok(()) };
        let taken = deferring(async {
            gate.reserve()?;
            gate.turn(false).expect("another's turn");
            gate.turn(false).expect("another's turn");
            // Reserved: the call waits its turn instead of being deferred.
            gate.call(ok).await.map_err(|e| match e {
                GateError::Busy(busy) => busy,
                GateError::Sdk(_) => unreachable!("the call succeeds"),
            })
        })
        .await;
        assert!(taken.is_ok(), "{taken:?}");
        gate.turn(false).expect("another's turn");
        gate.turn(false).expect("another's turn");
        let refused = deferring(async { gate.reserve() }).await;
        assert!(
            matches!(refused, Err(ref b) if b.retry_after > Duration::from_millis(500)),
            "{refused:?}"
        );
        assert!(
            gate.reserve().is_ok(),
            "outside a reconcile nothing is deferred"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_is_deferred_while_every_concurrency_slot_is_taken() {
        let gate = gate(100.0, 1);
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn({
            let gate = Arc::clone(&gate);
            async move {
                gate.call(|| async { Answer::Ok(()) }).await.ok();
                let mut hold = Some(hold);
                gate.call(move || {
                    let hold = hold.take();
                    async move {
                        if let Some(hold) = hold {
                            hold.await.ok();
                        }
                        Answer::Ok(())
                    }
                })
                .await
            }
        });
        // The holder's second call is in flight once its first is done.
        while gate.stats().attempts < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = Arc::new(AtomicU32::new(0));
        let (took, result) = reconcile_call(&gate, &sent).await;
        assert!(matches!(result, Err(GateError::Busy(_))), "{result:?}");
        assert_eq!(took, Duration::ZERO, "answered at once");
        assert_eq!(sent.load(Ordering::SeqCst), 0);
        release.send(()).ok();
        assert!(holder.await.expect("holder").is_ok());
        let (_, result) = reconcile_call(&gate, &sent).await;
        assert!(result.is_ok(), "a free slot admits it: {result:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_retries_throttling_briefly_then_is_paced_by_its_requeue() {
        let limits = CallLimits {
            max_per_second: 100.0,
            base_backoff: Duration::from_millis(100),
            ..CallLimits::default()
        };
        let gate = CallGate::new("test", limits);
        let sent = AtomicU32::new(0);
        let always_throttled = || {
            sent.fetch_add(1, Ordering::SeqCst);
            async { throttled() }
        };
        let result = deferring(gate.call(always_throttled)).await;
        // Backoff ceilings 200, 400, 800 ms stay on the worker; 1.6 s does
        // not, and AWS's throttling (not processed) is pacing, not failure.
        match result {
            Err(GateError::Busy(busy)) => {
                assert_eq!(busy.cause, THROTTLED_BY_AWS);
                assert_eq!(busy.retry_after, Duration::from_millis(1600));
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(sent.load(Ordering::SeqCst), 4);
        assert_eq!(gate.stats().retried, 3);
        sent.store(0, Ordering::SeqCst);
        let outside = gate.call(always_throttled).await;
        assert!(matches!(outside, Err(GateError::Sdk(_))));
        assert_eq!(
            sent.load(Ordering::SeqCst),
            6,
            "outside a reconcile every attempt is made"
        );
    }
}
