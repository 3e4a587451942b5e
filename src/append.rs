//! [`Append`] and [`Appended`]: one append request with its idempotency key and expected
//! last seq, and what became of it.

use std::ops::Range;

use crate::JsonLine;

/// One append request: records committed atomically (all or none, through any crash), with
/// an optional idempotency key and an optional expected last seq. Given to
/// [`MiniStore::append_requests`](crate::MiniStore::append_requests).
///
/// ```
/// use ministore::{Append, JsonLine, MiniStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ministore::MiniStoreError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let mut store = MiniStore::open(dir.path().join("j.jsonl")).await?;
/// let order = vec![JsonLine::from_slice(br#"{"order":42}"#)?];
/// let first = store.append_request(Append::new(order.clone()).key("order-42")).await?;
/// // A retry (the reply was lost, the process restarted...) is answered, not written again.
/// let retry = store.append_request(Append::new(order).key("order-42")).await?;
/// assert_eq!((first.seqs.clone(), first.duplicate), (1..2, false));
/// assert_eq!((retry.seqs, retry.duplicate), (1..2, true));
/// assert_eq!(store.last_seq(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Append {
    /// The records, in order.
    pub lines: Vec<JsonLine>,
    /// A caller-chosen name for this request (at most [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES)
    /// bytes of UTF-8, e.g. a UUID). A request whose key the journal already committed with
    /// the same records is not written again: it is answered with the original seqs and
    /// `duplicate = true`, whether the first attempt's reply was lost, the store was
    /// reopened since, or segments rotated since. With different records it is refused
    /// ([`MiniStoreError::KeyReused`](crate::MiniStoreError::KeyReused)). Keys are
    /// remembered as long as their records are retained, up to
    /// [`MiniStoreOptions::max_keys`](crate::MiniStoreOptions::max_keys) per journal (and
    /// within a shared [`KeyMemory`](crate::KeyMemory), if the journal has one).
    pub key: Option<String>,
    /// When set, the request is written only if the journal's last seq is this (0: the
    /// journal has no records), checked when its turn comes in the commit; otherwise it is
    /// refused with [`MiniStoreError::LastSeqMismatch`](crate::MiniStoreError::LastSeqMismatch)
    /// and nothing is written. A duplicate key is answered before this is checked.
    pub expected_last_seq: Option<u64>,
}

impl Append {
    /// A request for `lines`, with no key and no expectation.
    pub fn new(lines: Vec<JsonLine>) -> Self {
        Append {
            lines,
            key: None,
            expected_last_seq: None,
        }
    }

    /// Sets the idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the expected last seq.
    pub fn expected_last_seq(mut self, seq: u64) -> Self {
        self.expected_last_seq = Some(seq);
        self
    }
}

/// What an [`Append`] became: its records' seqs, and whether it was a retry of a request
/// already committed (then nothing was written, and `seqs` are the original ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The seqs of the request's records (empty for a request without records).
    pub seqs: Range<u64>,
    /// `true` when the key was already committed: the records were not written again.
    pub duplicate: bool,
}
