//! [`ClientError`]: an outage, a refusal, and a record that does not decode, kept apart;
//! and which failures a retry can cure.

use std::time::Duration;

use ministore::proto::LAST_SEQ_TRAILER;

/// Everything a client call can fail with.
///
/// ```
/// use ministore_client::ClientError;
/// let err = ClientError::Rpc(tonic::Status::invalid_argument("payload is not valid JSON"));
/// assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
/// assert!(!err.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address is not a valid `host:port` or URI.
    #[error("invalid server address {0}")]
    InvalidAddress(String),

    /// A client option is unusable: an unreadable CA file, a token that is not ASCII.
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The server could not be reached.
    #[error("cannot connect to {addr}: {}", crate::connection::with_causes(.source))]
    Connect {
        /// The address tried.
        addr: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },

    /// The server answered with an error status: its code and message are kept as sent.
    #[error("server error {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),

    /// A record could not be serialized to JSON before sending.
    #[error("record cannot be serialized as JSON: {0}")]
    Encode(#[source] serde_json::Error),

    /// A record arrived but is not a valid `T`: the data is fine, the type does not match.
    #[error("record {seq} does not decode into the requested type: {source}")]
    Decode {
        /// The record's sequence number.
        seq: u64,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The server sent something this client does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),

    /// An append failed with an outage on every attempt until its retry budget
    /// ([`ClientBuilder::retry_budget`](crate::ClientBuilder::retry_budget)) ran out, so
    /// whether it was written is not known.
    ///
    /// With `key`, appending the same records again with
    /// [`AppendOptions::key`](crate::AppendOptions::key)`(key)` settles it: the server
    /// answers with the original sequence number(s) and `duplicate` if it was written, and
    /// writes it once if not. `key` is `None` for a [`Client::append`](crate::Client::append)
    /// that went out in an `AppendBatch` shared with other callers: that key was the
    /// batch's. A caller that must be able to settle every outcome gives a key of its own,
    /// and such appends are never shared.
    #[error(
        "{} (gave up after {attempts} attempt(s) in {elapsed:.1?}; whether it was written is unknown{})",
        with_message(.last),
        match .key {
            Some(key) => format!(": append it again with idempotency key {key:?} to find out"),
            None => String::new(),
        }
    )]
    GaveUp {
        /// The idempotency key every attempt carried, unless shared with other callers.
        key: Option<String>,
        /// How many attempts were sent.
        attempts: u32,
        /// From the first attempt to giving up.
        elapsed: Duration,
        /// The last attempt's failure (`DEADLINE_EXCEEDED` if the budget ran out during
        /// the first attempt).
        #[source]
        last: tonic::Status,
    },
}

/// `status` as [`ClientError::Rpc`] displays it.
fn with_message(status: &tonic::Status) -> String {
    format!("server error {}: {}", status.code(), status.message())
}

impl ClientError {
    /// The gRPC status code, for errors the server sent.
    /// For [`GaveUp`](ClientError::GaveUp), the last attempt's.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc(status) | ClientError::GaveUp { last: status, .. } => {
                Some(status.code())
            }
            _ => None,
        }
    }

    /// Whether the failure is an outage worth retrying (unreachable server, shutdown,
    /// dropped connection), as opposed to a refusal that will fail again. An append that
    /// [gave up](ClientError::GaveUp) is retryable too: again with its key, it is safe.
    ///
    /// ```
    /// use ministore_client::ClientError;
    /// assert!(ClientError::Rpc(tonic::Status::unavailable("shutting down")).is_retryable());
    /// assert!(!ClientError::Rpc(tonic::Status::already_exists("key used")).is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::GaveUp { .. } => true,
            ClientError::Rpc(status) => is_retryable(status),
            _ => false,
        }
    }

    /// The journal's last sequence number, from an `ABORTED` append whose
    /// [`expected_last_seq`](crate::AppendOptions::expected_last_seq) did not hold: read
    /// from there, then try again expecting it.
    ///
    /// ```
    /// use ministore_client::ClientError;
    /// let mut status = tonic::Status::aborted("the journal's last seq is 9, not 7");
    /// status.metadata_mut().insert("ministore-last-seq", "9".parse().unwrap());
    /// assert_eq!(ClientError::Rpc(status).last_seq(), Some(9));
    /// ```
    pub fn last_seq(&self) -> Option<u64> {
        let ClientError::Rpc(status) = self else {
            return None;
        };
        if status.code() != tonic::Code::Aborted {
            return None;
        }
        status
            .metadata()
            .get(LAST_SEQ_TRAILER)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

impl ClientError {
    /// A copy of an error an RPC produced, for each caller of a shared batch.
    pub(crate) fn for_each_caller(&self) -> ClientError {
        match self {
            ClientError::Rpc(status) => ClientError::Rpc(status.clone()),
            ClientError::GaveUp {
                key,
                attempts,
                elapsed,
                last,
            } => ClientError::GaveUp {
                key: key.clone(),
                attempts: *attempts,
                elapsed: *elapsed,
                last: last.clone(),
            },
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// Whether a retry may cure `status`: "the server or the connection is not there right
/// now", or "the connection broke before the answer arrived".
///
/// - `UNAVAILABLE`: unreachable, refused, reset, a keepalive ping unanswered, a server
///   shutting down, or one whose disk needs an operator.
/// - `DEADLINE_EXCEEDED`: a deadline ran out, perhaps after the server wrote the record.
/// - `UNKNOWN` and `CANCELLED`: ministore-server never answers an RPC with them; tonic
///   makes them when the connection breaks after the request went out ("connection
///   closed before message completed", an HTTP/2 stream reset, a client-side timeout).
/// - Any other code that tonic made from a local transport failure rather than read from
///   the server's trailers: such a status carries the transport error as its `source`
///   (tonic maps a broken pipe to `INTERNAL` and a connection aborted to `ABORTED`). A
///   status the server sent never has a source.
///
/// Everything else is the server's verdict on the request and is never retried:
/// `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, `ALREADY_EXISTS` (the key was used for other
/// records), `ABORTED` (an expectation that did not hold), `NOT_FOUND`, `UNAUTHENTICATED`,
/// `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `DATA_LOSS` and `INTERNAL`.
pub(crate) fn is_retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    ) || std::error::Error::source(status).is_some()
}
