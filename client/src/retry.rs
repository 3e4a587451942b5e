//! Retrying an append with its idempotency key: which failures, how often, for how long.
//!
//! Every append carries an idempotency key, so sending it again is safe whatever became of
//! the attempt before: if that one was written, the server answers with its sequence
//! number(s) and writes nothing. That makes every failure that may be an outage worth
//! another attempt ([`is_retryable`](crate::error::is_retryable) says which), and leaves
//! only the question of how long to try.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::is_retryable;
use crate::{Backoff, ClientError};

/// How long an append keeps trying by default: inside [`FAILS_WITHIN`](crate::FAILS_WITHIN),
/// so that bound still holds for a call to a server that stopped answering, with room for
/// scheduling.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(25);

/// An append's retry policy: the client's backoff and budget, and the address its errors
/// name.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    pub backoff: Backoff,
    /// From the first attempt; zero: one attempt, never cut short.
    pub budget: Duration,
    pub addr: Arc<str>,
}

/// A fresh idempotency key: 128 random bits from the thread's CSPRNG (seeded by the
/// operating system), as 32 hex digits. Keys of different clients, processes and hosts
/// must never meet: a key the journal has seen with the same records would be answered
/// as a duplicate and not written.
pub(crate) fn new_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Retry {
    /// Runs `attempt` until it succeeds, fails in a way no retry cures, or the budget runs
    /// out; the outcome, and how many attempts were sent. Each call of `attempt` must send
    /// the identical request with `key`. `shared` says the key is a batch's that several
    /// callers share, so a [`GaveUp`](ClientError::GaveUp) cannot offer it to one of them.
    ///
    /// Waits between attempts double from `backoff.first` up to `backoff.max`, each a
    /// random point in its upper half (so clients cut off together do not come back
    /// together). The budget also cuts short an attempt still waiting when it runs out:
    /// a server that stopped answering would otherwise hold it until the keepalive fails.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        key: &str,
        shared: bool,
        mut attempt: F,
    ) -> (Result<T, ClientError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.budget;
        let mut delay = self.backoff.first;
        let mut attempts = 0;
        let mut last = None;
        loop {
            attempts += 1;
            let outcome = if self.budget.is_zero() {
                Ok(attempt().await)
            } else {
                tokio::time::timeout_at(deadline, attempt()).await
            };
            let gave_up = |last| ClientError::GaveUp {
                key: (!shared).then(|| key.to_owned()),
                attempts,
                elapsed: started.elapsed(),
                last,
            };
            let status = match outcome {
                Ok(Ok(value)) => return (Ok(value), attempts),
                Ok(Err(status)) if !is_retryable(&status) => {
                    return (Err(ClientError::Rpc(status)), attempts);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    let last = last.unwrap_or_else(|| {
                        tonic::Status::deadline_exceeded(format!(
                            "no answer from ministore-server at {} within the retry budget of {:?}",
                            self.addr, self.budget
                        ))
                    });
                    return (Err(gave_up(last)), attempts);
                }
            };
            let pause = delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0);
            delay = (delay * 2).min(self.backoff.max);
            if Instant::now() + pause >= deadline {
                return (Err(gave_up(status)), attempts);
            }
            tracing::debug!(key, attempts, error = %status, ?pause, "append failed; retrying with its key");
            last = Some(status);
            tokio::time::sleep(pause).await;
        }
    }
}
