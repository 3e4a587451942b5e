//! Limits that keep clients from holding the server's memory or tasks hostage: open Stream
//! RPCs, in total and per connection, and the bytes of records held for readers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ServerError;

/// Counts open streams; hands out a [`StreamPermit`] per stream, released on drop.
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_connection: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// Keyed by the client's address and port: one entry per TCP connection.
    per_connection: HashMap<Option<SocketAddr>, usize>,
}

/// One open stream's place in the limits.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    peer: Option<SocketAddr>,
}

impl StreamLimits {
    /// At most `max_total` streams at once, and `max_per_connection` on one connection.
    pub fn new(max_total: usize, max_per_connection: usize) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            max_total,
            max_per_connection,
            open: Mutex::new(Open::default()),
        })
    }

    /// A place for one more stream from `peer`, or RESOURCE_EXHAUSTED.
    pub fn acquire(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
    ) -> Result<StreamPermit, ServerError> {
        let mut open = self.open.lock().expect("stream limits lock");
        if open.total >= self.max_total {
            return Err(ServerError::LimitReached(format!(
                "the server already serves {} streams (--max-streams); close some or retry later",
                self.max_total
            )));
        }
        let on_connection = open.per_connection.entry(peer).or_default();
        if *on_connection >= self.max_per_connection {
            return Err(ServerError::LimitReached(format!(
                "this connection already has {} open streams (--max-streams-per-connection)",
                self.max_per_connection
            )));
        }
        *on_connection += 1;
        open.total += 1;
        Ok(StreamPermit {
            limits: self.clone(),
            peer,
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("stream limits lock");
        open.total -= 1;
        if let Some(n) = open.per_connection.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.per_connection.remove(&self.peer);
            }
        }
    }
}

/// The bytes of records held in memory for readers (Replay pages being built, records a
/// Stream has read ahead of its client), across all RPCs. A reader reserves bytes before it
/// reads and gives back what it did not use; when the budget is spent, readers wait: slow
/// readers hold their share, they do not grow the server.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl ReadBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> ReadBudget {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        ReadBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits for `bytes` (at most the whole budget, so a reservation can always be met).
    pub async fn reserve(&self, bytes: usize) -> Held {
        let n = bytes.clamp(1, self.total) as u32;
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("the read budget is never closed");
        Held(Some(permit))
    }

    /// `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Held> {
        let n = bytes.clamp(1, self.total) as u32;
        self.bytes
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(|p| Held(Some(p)))
    }

    /// Bytes not held by any reader now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Bytes of the [`ReadBudget`] held by one reader; given back when dropped.
#[derive(Debug, Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Held {
    /// How many bytes this holds.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives back all but `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        let excess = self.bytes().saturating_sub(keep.max(1));
        if let Some(permit) = &mut self.0 {
            drop(permit.split(excess));
        }
    }

    /// Moves up to `bytes` of this into a `Held` of their own.
    pub fn take(&mut self, bytes: usize) -> Held {
        let n = bytes.min(self.bytes());
        Held(self.0.as_mut().and_then(|p| p.split(n)))
    }

    /// Adds `other`'s bytes to this.
    pub fn merge(&mut self, other: Held) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.0 = theirs,
            (_, None) => {}
        }
    }
}

/// Read budget held by a unary reply until hyper has sent its body: a Replay page lives on
/// in memory, encoded, after its handler returns. Put it in the response's extensions;
/// [`hold_until_sent`] moves it into the body.
#[derive(Debug, Clone)]
pub struct HeldForReply {
    // Extensions must be `Clone`; the budget is given back when the last clone goes.
    _held: Arc<Held>,
}

impl HeldForReply {
    /// Wraps `held` for a response's extensions.
    pub fn new(held: Held) -> Self {
        HeldForReply {
            _held: Arc::new(held),
        }
    }
}

/// A layer function: keeps a response's [`HeldForReply`] until its body is dropped.
pub fn hold_until_sent(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    match response.extensions_mut().remove::<HeldForReply>() {
        Some(held) => response.map(|body| tonic::body::Body::new(Holding { body, _held: held })),
        None => response,
    }
}

struct Holding {
    body: tonic::body::Body,
    _held: HeldForReply,
}

impl http_body::Body for Holding {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_read_budget_is_held_until_dropped_and_shrinks() {
        let budget = ReadBudget::new(100);
        let mut held = budget.reserve(60).await;
        assert!(budget.try_reserve(50).is_none());
        held.shrink_to(20);
        assert_eq!(budget.available(), 80);
        let part = held.take(15);
        assert_eq!((held.bytes(), part.bytes()), (5, 15));
        drop(part);
        assert_eq!(budget.available(), 95);
        // A reservation larger than the budget is the whole budget, never a deadlock.
        drop(held);
        assert_eq!(budget.reserve(1000).await.bytes(), 100);
    }

    #[test]
    fn permits_are_counted_and_released() {
        let limits = StreamLimits::new(3, 2);
        let a: Option<SocketAddr> = Some("127.0.0.1:1000".parse().unwrap());
        let b: Option<SocketAddr> = Some("127.0.0.1:2000".parse().unwrap());
        let a1 = limits.acquire(a).unwrap();
        let _a2 = limits.acquire(a).unwrap();
        assert!(limits.acquire(a).is_err(), "per connection");
        let _b1 = limits.acquire(b).unwrap();
        assert!(limits.acquire(b).is_err(), "in total");
        drop(a1);
        assert!(limits.acquire(b).is_ok());
    }
}
