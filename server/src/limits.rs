//! Limits on open Stream RPCs, in total and per connection, so that no client can hold
//! the server's memory or tasks hostage.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;

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
