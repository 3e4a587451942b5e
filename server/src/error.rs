//! [`ServerError`] and its one mapping to `tonic::Status`.

use std::sync::Arc;

use ministore::MiniStoreError;
use tonic::{Code, Status};

/// Everything an RPC can fail with. Converted to a gRPC status in exactly one place
/// (`From<ServerError> for Status`), with a message a person can act on.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The journal name is not 1 to 64 characters of `[A-Za-z0-9._-]` not starting with '.'.
    #[error(
        "invalid journal name {name:?}: {reason}; use 1 to 64 characters from A-Z a-z 0-9 . _ - not starting with '.'"
    )]
    InvalidJournalName {
        /// The name as given (truncated for the message).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Replay or Stream of a journal that has never been written.
    #[error("journal {0:?} does not exist; it is created by its first Append")]
    JournalNotFound(String),

    /// A request field is missing or out of range.
    #[error("{0}")]
    InvalidArgument(String),

    /// A record larger than `--max-payload-bytes`.
    #[error(
        "record is {size} bytes of JSON, more than this server's limit of {max} bytes (--max-payload-bytes)"
    )]
    PayloadTooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// `from_seq` beyond the end of the journal.
    #[error(
        "from_seq {from_seq} is past the end of journal {journal:?}: its last record is {last_seq}, so from_seq may be at most {}",
        last_seq + 1
    )]
    PastEnd {
        /// The journal.
        journal: String,
        /// What was asked for.
        from_seq: u64,
        /// The last durable record.
        last_seq: u64,
    },

    /// No valid token was presented.
    #[error("{0}")]
    Unauthenticated(&'static str),

    /// The token does not allow this operation on this journal.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// A server limit (streams, journals) is reached.
    #[error("{0}")]
    LimitReached(String),

    /// A journal's directory or one of its files is a symlink leading out of the data
    /// directory; ministore does not follow it.
    #[error(
        "{path} leads out of the data directory through a symlink; ministore does not follow symlinks out of its data directory"
    )]
    OutsideDataDir {
        /// The offending path.
        path: String,
    },

    /// The server is stopping: new work is refused, streams end.
    #[error("the server is shutting down; retry against a running server")]
    ShuttingDown,

    /// Another server holds the data directory.
    #[error(
        "data directory {path} is in use by another ministore-server (its lock file {lock} is held)"
    )]
    DataDirLocked {
        /// The data directory.
        path: std::path::PathBuf,
        /// The lock file.
        lock: std::path::PathBuf,
    },

    /// The data directory was removed or replaced while the server ran: nothing written
    /// now would survive a restart, so nothing more is acknowledged.
    #[error(
        "the data directory {path} was removed or replaced while the server ran; nothing more is acknowledged or served: restore it and restart the server"
    )]
    DataDirLost {
        /// The data directory.
        path: std::path::PathBuf,
    },

    /// The data directory could not be listed (ListJournals): a condition of this server
    /// that an operator can clear, such as its permissions.
    #[error("listing the data directory {path}: {source}")]
    Listing {
        /// The data directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },

    /// The server could not start: bind, create the data directory, ...
    #[error("{op} {path}: {source}")]
    Startup {
        /// What was being done.
        op: &'static str,
        /// The file or address involved.
        path: String,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },

    /// The NATS JetStream cluster of a `nats://` backend failed or did not answer.
    #[error("journal {journal:?}: JetStream cluster: {message}")]
    Cluster {
        /// The journal.
        journal: String,
        /// What failed, and what to do.
        message: String,
        /// The cluster could not be reached or did not answer in time (an election, a
        /// node down): retrying later may succeed.
        unavailable: bool,
    },
    /// The NATS stream named after a journal (or its subject) belongs to something else, or
    /// was changed so that it cannot keep the journal's promises: nothing is written to it
    /// or read from it as the journal's.
    #[error("journal {journal:?}: the NATS stream {stream} cannot hold it: {reason}")]
    ForeignStream {
        /// The journal.
        journal: String,
        /// The stream's name.
        stream: String,
        /// What about it does not fit, and what to do about it.
        reason: String,
    },
    /// A request of a stream could not be read (over `--max-message-bytes`, or not a valid
    /// message): tonic's status for it, passed on as it is.
    #[error("{}", .0.message())]
    Unreadable(Status),

    /// The journal store refused or failed.
    #[error("journal {journal:?}: {source}")]
    Store {
        /// The journal.
        journal: String,
        /// What the store said.
        source: Arc<MiniStoreError>,
    },
}

impl ServerError {
    pub(crate) fn store(journal: &str, source: MiniStoreError) -> Self {
        ServerError::Store {
            journal: journal.to_owned(),
            source: Arc::new(source),
        }
    }
}

impl ServerError {
    /// Whether this is a fault of the one request (its record, name, key or expectation)
    /// rather than of its journal or the server: another request may well succeed. An
    /// AppendStream answers such a request with an error and goes on.
    pub fn is_request_error(&self) -> bool {
        match self {
            ServerError::InvalidJournalName { .. }
            | ServerError::InvalidArgument(_)
            | ServerError::PayloadTooLarge { .. }
            | ServerError::PermissionDenied(_)
            | ServerError::LimitReached(_)
            | ServerError::OutsideDataDir { .. }
            | ServerError::ForeignStream { .. } => true,
            ServerError::Store { source, .. } => matches!(
                source.as_ref(),
                MiniStoreError::InvalidJson(_)
                    | MiniStoreError::Serialize(_)
                    | MiniStoreError::InvalidArgument(_)
                    | MiniStoreError::RecordTooLarge { .. }
                    | MiniStoreError::KeyReused { .. }
                    | MiniStoreError::LastSeqMismatch { .. }
            ),
            _ => false,
        }
    }
}

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Status {
        let code = match &err {
            ServerError::InvalidJournalName { .. } | ServerError::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            ServerError::JournalNotFound(_) => Code::NotFound,
            ServerError::Unauthenticated(_) => Code::Unauthenticated,
            ServerError::PermissionDenied(_) => Code::PermissionDenied,
            ServerError::LimitReached(_) => Code::ResourceExhausted,
            ServerError::OutsideDataDir { .. } | ServerError::ForeignStream { .. } => {
                Code::FailedPrecondition
            }
            ServerError::PayloadTooLarge { .. } => Code::ResourceExhausted,
            ServerError::PastEnd { .. } => Code::OutOfRange,
            ServerError::ShuttingDown
            | ServerError::DataDirLost { .. }
            | ServerError::Listing { .. } => Code::Unavailable,
            ServerError::DataDirLocked { .. } | ServerError::Startup { .. } => Code::Internal,
            ServerError::Store { source, .. } => store_code(source),
            ServerError::Cluster { unavailable, .. } => match unavailable {
                true => Code::Unavailable,
                false => Code::Internal,
            },
            ServerError::Unreadable(status) => client_code(status.code(), status.message()),
        };
        let mut status = Status::new(code, with_hint(&err));
        // Where a reader overtaken by retention can resume, for programs: a trailer.
        if let ServerError::Store { source, .. } = &err
            && let MiniStoreError::Truncated { oldest, .. } = source.as_ref()
            && let Ok(value) = oldest.to_string().parse()
        {
            status.metadata_mut().insert(FIRST_SEQ_TRAILER, value);
        }
        // The journal's last seq after a failed expectation, for programs: a trailer.
        if let ServerError::Store { source, .. } = &err
            && let MiniStoreError::LastSeqMismatch { last_seq, .. } = source.as_ref()
            && let Ok(value) = last_seq.to_string().parse()
        {
            status.metadata_mut().insert(LAST_SEQ_TRAILER, value);
        }
        status
    }
}

/// The code for a client's own mistake that tonic reports before our code runs, corrected:
/// a message over the size limit is OUT_OF_RANGE there, and bytes that are not a valid
/// protobuf message are INTERNAL. gRPC's status-code guide says RESOURCE_EXHAUSTED and
/// INVALID_ARGUMENT, and INTERNAL must mean a bug of ours. Other codes stay as they are.
pub(crate) fn client_code(code: Code, message: &str) -> Code {
    match code {
        Code::OutOfRange if message.contains("message length too large") => Code::ResourceExhausted,
        Code::Internal if message.contains("failed to decode Protobuf message") => {
            Code::InvalidArgument
        }
        other => other,
    }
}

pub use ministore::proto::{FIRST_SEQ_TRAILER, LAST_SEQ_TRAILER};

fn store_code(err: &MiniStoreError) -> Code {
    match err {
        MiniStoreError::InvalidJson(_) | MiniStoreError::Serialize(_) => Code::InvalidArgument,
        MiniStoreError::InvalidArgument(_) => Code::InvalidArgument,
        MiniStoreError::Truncated { .. } => Code::OutOfRange,
        MiniStoreError::Corrupt { .. }
        | MiniStoreError::Missing { .. }
        | MiniStoreError::Checksum { .. } => Code::DataLoss,
        MiniStoreError::RecordTooLarge { .. } => Code::ResourceExhausted,
        MiniStoreError::BadHeader { .. }
        | MiniStoreError::BadMeta { .. }
        | MiniStoreError::Locked { .. } => Code::FailedPrecondition,
        MiniStoreError::KeyReused { .. } => Code::AlreadyExists,
        MiniStoreError::LastSeqMismatch { .. } => Code::Aborted,
        MiniStoreError::Io { source, .. } if is_full(source) => Code::ResourceExhausted,
        // Other I/O failures (read-only or unwritable directory, EIO) and a writer waiting
        // to be reopened are conditions of this server that an operator can clear:
        // retrying later may succeed.
        MiniStoreError::Io { .. } | MiniStoreError::Poisoned { .. } => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// ENOSPC, EDQUOT or EFBIG: no room for the record.
fn is_full(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    // std maps ENOSPC to StorageFull, EDQUOT to QuotaExceeded, EFBIG to FileTooLarge.
    matches!(
        err.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge
    )
}

/// The message, with what to do about it where the error alone does not say.
fn with_hint(err: &ServerError) -> String {
    let hint = match err {
        ServerError::Store { source, .. } => match source.as_ref() {
            MiniStoreError::Io { source, .. } if is_full(source) => {
                " (no space for the record: free disk space or raise the file-size limit; nothing was written)"
            }
            MiniStoreError::Io { .. } => " (nothing was written; check the data directory)",
            MiniStoreError::Truncated { .. } => {
                " (restart from the oldest retained seq, or raise --max-segments)"
            }
            MiniStoreError::Corrupt { .. }
            | MiniStoreError::BadHeader { .. }
            | MiniStoreError::BadMeta { .. } => {
                " (move the damaged file out of the data directory to serve the rest)"
            }
            MiniStoreError::Missing { .. } => {
                " (the files are left as they are; read on from the next retained seq, or restore the missing records from a backup)"
            }
            MiniStoreError::RecordTooLarge { .. } => {
                " (it is larger than --max-payload-bytes; restart the server with a larger limit to read it)"
            }
            _ => "",
        },
        _ => "",
    };
    format!("{err}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(code: i32) -> ServerError {
        ServerError::store(
            "j",
            MiniStoreError::Io {
                op: "writing to",
                path: "/data/j/journal.jsonl".into(),
                source: std::io::Error::from_raw_os_error(code),
            },
        )
    }

    #[test]
    fn full_disk_and_file_size_limit_are_resource_exhausted() {
        for code in [28, 122, 27] {
            let status = Status::from(io(code));
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(
                status.message().contains("nothing was written"),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn read_only_file_system_is_unavailable_not_internal() {
        assert_eq!(Status::from(io(30)).code(), Code::Unavailable);
    }

    #[test]
    fn bad_json_is_invalid_argument_with_the_parse_error() {
        let status = Status::from(ServerError::store(
            "j",
            MiniStoreError::InvalidJson("expected value at line 1 column 1".into()),
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("line 1 column 1"));
    }
}
