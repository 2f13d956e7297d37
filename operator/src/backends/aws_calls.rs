//! Every AWS call (RDS, FSx) goes through a [`CallGate`]: bounded concurrency, a
//! maximum call rate (retries included), and retries of throttling and
//! server errors with full-jitter exponential backoff. The SDK's own retries
//! are off so that every attempt passes the gate.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use rand::{TryRng, rngs::SysRng};
use tokio::{
    sync::{Mutex, Semaphore},
    time::Instant,
};

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
}

/// See the module documentation.
pub struct CallGate {
    limits: CallLimits,
    in_flight: Semaphore,
    next_start: Mutex<Instant>,
    attempts: AtomicU64,
    retried: AtomicU64,
}

impl CallGate {
    /// A gate with `limits`.
    pub fn new(limits: CallLimits) -> Self {
        Self {
            in_flight: Semaphore::new(limits.max_concurrent.max(1)),
            limits,
            next_start: Mutex::new(Instant::now()),
            attempts: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CallStats {
        CallStats {
            attempts: self.attempts.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }

    /// Waits for the next start slot allowed by the rate.
    async fn pace(&self) {
        let interval = Duration::from_secs_f64(1.0 / self.limits.max_per_second.max(0.001));
        let mut next = self.next_start.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = (*next).max(now) + interval;
    }

    fn backoff(&self, attempt: u32) -> Duration {
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
        cap.mul_f64(fraction)
    }

    /// Runs `call` (one attempt per invocation) under the gate's limits,
    /// retrying throttling, 5xx, timeouts and broken connections.
    pub async fn call<T, E, F, Fut>(&self, call: F) -> Result<T, SdkError<E, HttpResponse>>
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
    pub async fn call_not_idempotent<T, E, F, Fut>(
        &self,
        call: F,
    ) -> Result<T, SdkError<E, HttpResponse>>
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
    ) -> Result<Vec<T>, SdkError<E, HttpResponse>>
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
    ) -> Result<T, SdkError<E, HttpResponse>>
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
                let _permit = self.in_flight.acquire().await;
                self.pace().await;
                self.attempts.fetch_add(1, Ordering::Relaxed);
                call().await
            };
            match result {
                Err(e) if attempt < max_attempts && retry(&e) => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                other => return other,
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
    use aws_smithy_runtime_api::client::result::SdkError;
    use aws_smithy_types::error::ErrorMetadata;

    use super::{CallGate, CallLimits};

    #[tokio::test]
    async fn pages_follow_the_tokens_until_one_is_empty_or_absent() {
        let gate = CallGate::new(CallLimits {
            max_per_second: 1000.0,
            ..CallLimits::default()
        });
        for last in [None, Some(String::new())] {
            let mut asked = Vec::new();
            let pages = gate
                .pages(
                    |token: Option<String>| {
                        asked.push(token.clone());
                        let next = match token.as_deref() {
                            None => Some("a".to_owned()),
                            Some("a") => Some("b".to_owned()),
                            _ => last.clone(),
                        };
                        async move {
                            Ok::<_, SdkError<ErrorMetadata, super::HttpResponse>>((token, next))
                        }
                    },
                    |(_, next): &(Option<String>, Option<String>)| next.as_deref(),
                )
                .await
                .expect("pages");
            assert_eq!(pages.len(), 3);
            assert_eq!(asked, [None, Some("a".into()), Some("b".into())]);
        }
    }
}
