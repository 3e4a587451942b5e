//! [`Durable`]: how far a journal is durable, as its writer publishes it to readers, and
//! [`DurableWatch`], what a reader in the writer's process is given to follow it.

use tokio::sync::watch;

use crate::index::ActiveIndex;

/// How far a journal is durable: what readers in the writer's process may read.
///
/// Every record with `seq <= last_seq` is on disk and fsynced. Obtain it from
/// [`MiniStore::durable`](crate::MiniStore::durable) or
/// [`MiniStore::watch_durable`](crate::MiniStore::watch_durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The last durable sequence number; 0 when the journal has no records yet.
    pub last_seq: u64,
    /// The oldest retained sequence number (`last_seq + 1` when there are no records).
    pub first_seq: u64,
    /// Files on disk: the rotated segments and the active one.
    pub segments: usize,
    /// The first seq from which records carry metadata (a CRC32C checked by every reader,
    /// a commit time): `first_seq` when all retained records do. Records before it were
    /// written by the published crate or an earlier version, and are read unverified.
    pub checksums_from: u64,
    /// First sequence number of the active segment.
    pub(crate) active_first_seq: u64,
    /// Bytes of the active segment that are durable; readers never read past this, so they
    /// never see a record that is written but not yet fsynced (or a failed write's bytes).
    pub(crate) active_len: u64,
}

/// What the writer of a journal gives the readers in its process
/// ([`JournalReader::with_durable`](crate::JournalReader::with_durable)): how far the journal
/// is durable, to read up to and to wait on, and where they find the index of its active
/// segment. A [`MiniStore`](crate::MiniStore) makes one with
/// [`watch_durable`](crate::MiniStore::watch_durable); a program that keeps its own watch
/// across reopens of a store (as ministore-server does) pairs it with the handle it opens
/// the store with ([`MiniStoreOptions::active_index`](crate::MiniStoreOptions::active_index)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ministore::MiniStoreError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let mut store = ministore::MiniStore::open(dir.path().join("j.jsonl")).await?;
/// let mut watch = store.watch_durable();
/// store.append(&"a").await?;
/// watch.durable.changed().await.unwrap();
/// assert_eq!(watch.durable.borrow().last_seq, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DurableWatch {
    /// Every change of the durable position; it reports the writer closed once the sender
    /// (the store's, or the program's own) is dropped.
    pub durable: watch::Receiver<Durable>,
    /// The index of the active segment, while a writer in this process fills it.
    pub index: ActiveIndex,
}
