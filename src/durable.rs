//! [`Durable`]: how far a journal is durable, as its writer publishes it to readers.

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
