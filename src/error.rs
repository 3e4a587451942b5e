//! [`MiniStoreError`]: everything the store can refuse or fail at.

use std::path::{Path, PathBuf};

/// A specialized [`Result`](std::result::Result) for `ministore` operations.
pub type Result<T, E = MiniStoreError> = std::result::Result<T, E>;

/// Every way a journal operation can fail.
///
/// Each variant carries what a person needs to act: the file, the line, the reason.
/// Match on the variant to tell bad input (`InvalidJson`, `Serialize`), a damaged or
/// foreign file (`BadHeader`, `Corrupt`), and the environment (`Io`, `Poisoned`, `Locked`)
/// apart.
///
/// ```
/// use ministore::{MiniStore, MiniStoreError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("notes.txt");
/// std::fs::write(&path, "shopping list\n").unwrap();
///
/// // A file that is not a journal is refused, never overwritten.
/// match MiniStore::open(&path).await {
///     Err(MiniStoreError::BadHeader { path: p, .. }) => assert_eq!(p, path),
///     other => panic!("expected BadHeader, got {other:?}"),
/// }
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "shopping list\n");
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MiniStoreError {
    /// A file-system operation failed (permission denied, disk full, file too large, ...).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing to".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file's first line is not a ministore journal header: it is not a journal,
    /// or it is damaged. The file is left untouched.
    #[error(
        "{path} is not a ministore journal: its first line must start with \"// MINISTORE JOURNAL v\" ({reason})"
    )]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// A line of the journal is not valid JSON, or not a valid record of the requested type.
    #[error("{path}:{line}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// The 1-based line number in that file (the header is line 1).
        line: u64,
        /// The parse error.
        reason: String,
    },

    /// A record could not be serialized to JSON (for example a map with non-string keys).
    #[error("record cannot be serialized as JSON: {0}")]
    Serialize(#[source] serde_json::Error),

    /// Bytes given as a record are not exactly one valid JSON value.
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),

    /// An option or argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The journal is held by another open `MiniStore` (in this or another process).
    #[error(
        "journal {path} is already open for writing by another MiniStore (lock file {lock} is held)"
    )]
    Locked {
        /// The journal's active file.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },

    /// An earlier failure (an fsync error, a failed rotation, a cancelled append) left the
    /// writer in a state that cannot be trusted; reopen the journal to re-read its tail.
    #[error(
        "journal {path} refuses writes after an earlier failure ({reason}); reopen it to recover"
    )]
    Poisoned {
        /// The journal's active file.
        path: PathBuf,
        /// The failure that poisoned it.
        reason: String,
    },

    /// A reader asked for records that retention has already deleted.
    #[error(
        "records from seq {requested} of {path} were deleted by retention; the oldest retained is {oldest}"
    )]
    Truncated {
        /// The journal's active file.
        path: PathBuf,
        /// The sequence number the reader needed next.
        requested: u64,
        /// The oldest sequence number still on disk.
        oldest: u64,
    },

    /// Records that should be on disk are not: a segment was deleted from the middle of
    /// the journal, lost lines, or ends before the next one starts, or the active file is
    /// shorter than what was made durable. Nothing is repaired: the files are left as they
    /// are for inspection.
    #[error("{path}: record {expected} is missing: {reason}")]
    Missing {
        /// The journal's active file.
        path: PathBuf,
        /// The sequence number that could not be found where it belongs.
        expected: u64,
        /// Which file ends where, and which starts where.
        reason: String,
    },

    /// A record is larger than the reader was allowed to hold in memory.
    #[error(
        "{path}: record {seq} is longer than {max} bytes, the most this reader holds in memory"
    )]
    RecordTooLarge {
        /// The segment file.
        path: PathBuf,
        /// The record's sequence number.
        seq: u64,
        /// The limit it exceeds.
        max: usize,
    },

    /// A record's bytes are not those written: its CRC32C (kept in the segment's metadata
    /// file) does not match, or its metadata entry is damaged or missing. Nothing is
    /// repaired: the files are left as they are for inspection.
    #[error("{path}: record {seq} at byte {offset} {reason}; the files are left as they are")]
    Checksum {
        /// The segment file.
        path: PathBuf,
        /// The record's sequence number.
        seq: u64,
        /// Where its line starts in the file.
        offset: u64,
        /// What does not match.
        reason: String,
    },

    /// A metadata file (`journal.jsonl.from-<seq>.meta`, the keys, batch boundaries and
    /// checksums beside a segment) is damaged or not one. It is left untouched.
    #[error("{path} is not a usable ministore metadata file: {reason}")]
    BadMeta {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The idempotency key of an append was already committed with different records: the
    /// append is refused (nothing written). A retry of the same records gets the original
    /// seqs instead ([`Appended::duplicate`](crate::Appended::duplicate)).
    #[error(
        "idempotency key {key:?} was already used for different records, committed at seq {first_seq}; use a new key for a new append"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The first seq of the records committed with it.
        first_seq: u64,
    },

    /// An append's `expected_last_seq` is not the journal's last seq: another writer got
    /// there first. Nothing was written.
    #[error(
        "expected the journal's last seq to be {expected}, but it is {last_seq}; nothing was written (read from {next} and decide again)", next = last_seq + 1
    )]
    LastSeqMismatch {
        /// What the append expected.
        expected: u64,
        /// The journal's last seq when the append's turn came (0: no records).
        last_seq: u64,
    },
}

impl MiniStoreError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        MiniStoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The operating system error behind an [`Io`](MiniStoreError::Io) failure, if that is what this is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = ministore::MiniStore::stream::<u32>("/nonexistent/journal.jsonl").await.err().unwrap();
    /// assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound));
    /// # }
    /// ```
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            MiniStoreError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// The raw OS error number behind an [`Io`](MiniStoreError::Io) failure (for example
    /// `ENOSPC` or `EFBIG`), if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            MiniStoreError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
