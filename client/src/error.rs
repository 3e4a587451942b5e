//! [`ClientError`]: an outage, a refusal, and a record that does not decode, kept apart.

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
}

impl ClientError {
    /// The gRPC status code, for errors the server sent.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rpc(status) => Some(status.code()),
            _ => None,
        }
    }

    /// Whether the failure is an outage worth retrying (unreachable server, shutdown,
    /// dropped connection), as opposed to a refusal that will fail again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Rpc(status) => is_retryable(status),
            _ => false,
        }
    }
}

/// Codes that mean "the server or the connection is not there right now".
pub(crate) fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}
