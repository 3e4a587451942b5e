//! [`Connection`]: tonic's channel, with transport failures that say where and why.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::Channel;

/// The client's connection to one server: tonic's [`Channel`], whose transport failures
/// (refused, reset, timed out, a keepalive ping unanswered) become `UNAVAILABLE` statuses
/// that name the server's address and the reason down to the operating system's, in one
/// line: `cannot reach ministore-server at 127.0.0.1:50051: transport error: tcp connect
/// error: Connection refused (os error 111)`, instead of tonic's bare `tcp connect error`.
/// `UNAVAILABLE` is what [`ClientError::is_retryable`](crate::ClientError::is_retryable)
/// retries.
#[derive(Debug, Clone)]
pub struct Connection {
    channel: Channel,
    addr: Arc<str>,
}

impl Connection {
    pub(crate) fn new(channel: Channel, addr: &str) -> Self {
        Connection {
            channel,
            addr: addr.into(),
        }
    }
}

/// The status of a transport failure reaching `addr`, with every cause in its chain.
fn unreachable(addr: &str, err: tonic::transport::Error) -> tonic::Status {
    tonic::Status::unavailable(format!(
        "cannot reach ministore-server at {addr}: {}",
        with_causes(&err)
    ))
}

/// `err` and every cause in its chain, in one line.
pub(crate) fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Causes often repeat their source's text: keep each piece once.
        if !reason.ends_with(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        cause = c.source();
    }
    reason
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.channel, cx)
            .map_err(|e| unreachable(&self.addr, e))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let addr = self.addr.clone();
        let response = tower_service::Service::call(&mut self.channel, request);
        Box::pin(async move { response.await.map_err(|e| unreachable(&addr, e)) })
    }
}
