//! [`MiniStoreOptions`]: segment size, retention and preallocation. (Opening a store with
//! them is in `store.rs`, beside the store.)

use crate::{ActiveIndex, KeyMemory, Result};

/// Default size at which the active segment is rotated: 64 MiB.
pub const DEFAULT_MAX_BYTES_PER_SEGMENT: u64 = 64 * 1024 * 1024;
/// Default number of idempotency keys remembered per journal: 1,000,000.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default number of segment files kept, the active one included: 3.
pub const DEFAULT_MAX_SEGMENTS: usize = 3;

/// Configuration for a [`MiniStore`](crate::MiniStore): when to rotate and how much to keep.
///
/// By default a segment is rotated at 64 MiB and 3 segment files are kept (the active
/// one and the two newest rotated ones), so a journal keeps at most about 192 MiB.
/// Sequence numbers are never affected by retention.
///
/// ```
/// use ministore::MiniStoreOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ministore::MiniStoreError> {
/// let dir = tempfile::tempdir().unwrap();
/// let mut store = MiniStoreOptions::new()
///     .max_bytes_per_segment(1024 * 1024)
///     .max_segments(10)
///     .open(dir.path().join("events.log"))
///     .await?;
/// store.append(&"hello").await?;
/// assert_eq!(store.last_seq(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MiniStoreOptions {
    /// Size in bytes at which the active segment is rotated (checked after each append).
    pub max_bytes_per_segment: u64,
    /// How many segment files to keep, the active one included. At least 1.
    pub max_segments: usize,
    /// Whether the writer writes zeros ahead of its records in the active segment (off by
    /// default), so that a commit's fdatasync does not also commit a change of the file's
    /// size (on ext4, about 10 µs less per append in the README's measurements). While the
    /// journal is open, and after a crash until the next open, its active file then ends
    /// in zeros, which this crate's readers skip but `cat`, `tail -f | jq` and the
    /// published ministore 0.1.7 do not. Off: the active file always ends at its last
    /// record, plain JSON lines at every instant.
    pub preallocate: bool,
    /// How many idempotency keys the journal remembers (default 1,000,000): the newest,
    /// among those of retained records. An older key is forgotten, and a retry with it is
    /// written again. About 120 bytes of memory per remembered key (the benchmark's `keys`
    /// section measures it).
    pub max_keys: usize,
    /// Where the writer shares the index of the active segment with readers in this process
    /// (see [`ActiveIndex`]); `None`, the default, gives each store a handle of its own. See
    /// [`active_index`](Self::active_index).
    pub active_index: Option<ActiveIndex>,
    /// The memory for idempotency keys this journal shares with others (see
    /// [`KeyMemory`]); `None`, the default, bounds its keys by `max_keys` alone. See
    /// [`key_memory`](Self::key_memory).
    pub key_memory: Option<KeyMemory>,
    /// Faults the writer's file operations meet (none by default): for tests of every
    /// failure path. See [`inject_faults`](Self::inject_faults).
    #[doc(hidden)]
    pub faults: crate::io::Faults,
}

impl Default for MiniStoreOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl MiniStoreOptions {
    /// The defaults: 64 MiB segments, 3 segments kept, no preallocation.
    pub fn new() -> Self {
        Self {
            max_bytes_per_segment: DEFAULT_MAX_BYTES_PER_SEGMENT,
            max_segments: DEFAULT_MAX_SEGMENTS,
            preallocate: false,
            max_keys: DEFAULT_MAX_KEYS,
            active_index: None,
            key_memory: None,
            faults: crate::io::Faults::default(),
        }
    }

    /// Sets the size in bytes at which the active segment is rotated.
    pub fn max_bytes_per_segment(mut self, bytes: u64) -> Self {
        self.max_bytes_per_segment = bytes;
        self
    }

    /// Sets how many segment files are kept, the active one included; older ones are deleted
    /// at rotation. Must be at least 1 (1 keeps only the active segment).
    pub fn max_segments(mut self, n: usize) -> Self {
        self.max_segments = n;
        self
    }

    /// Sets whether zeros are written ahead of the records (see the field
    /// [`preallocate`](field@Self::preallocate); off by default). Turn it on for a little
    /// less latency per append when nothing but this crate reads the journal while it is
    /// open.
    ///
    /// ```
    /// let options = ministore::MiniStoreOptions::new();
    /// assert!(!options.preallocate);
    /// assert!(options.preallocate(true).preallocate);
    /// ```
    pub fn preallocate(mut self, on: bool) -> Self {
        self.preallocate = on;
        self
    }

    /// Sets how many idempotency keys the journal remembers (see the field
    /// [`max_keys`](field@Self::max_keys)); 0 remembers none.
    ///
    /// ```
    /// let options = ministore::MiniStoreOptions::new().max_keys(10);
    /// assert_eq!(options.max_keys, 10);
    /// ```
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Makes the store fill `handle` with the index of its active segment, instead of a
    /// handle of its own. For a program that outlives its stores: readers it made with the
    /// handle, for an earlier store of the same journal since closed, find this store's
    /// index (ministore-server reopens idle journals this way, with its own durable watch).
    /// One handle serves one journal: opening with a handle another open store fills is
    /// refused.
    ///
    /// ```
    /// use ministore::{ActiveIndex, MiniStoreError, MiniStoreOptions};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let index = ActiveIndex::default();
    /// let options = MiniStoreOptions::new().active_index(index.clone());
    /// let store = options.clone().open(dir.path().join("a.jsonl")).await?;
    /// let other = options.clone().open(dir.path().join("b.jsonl")).await;
    /// assert!(matches!(other, Err(MiniStoreError::InvalidArgument(_))));
    /// drop(store);
    /// let reopened = options.open(dir.path().join("a.jsonl")).await?;
    /// assert_eq!(reopened.watch_durable().index, index);
    /// # Ok(())
    /// # }
    /// ```
    pub fn active_index(mut self, handle: ActiveIndex) -> Self {
        self.active_index = Some(handle);
        self
    }

    /// Counts this journal's idempotency keys against `memory`, shared with the other
    /// journals opened with it: past it, the journal remembers a new key by forgetting its
    /// own oldest, once it holds [`KEYS_EACH_JOURNAL_KEEPS`](crate::KEYS_EACH_JOURNAL_KEEPS).
    /// For a process with many journals (ministore-server's `--dedupe-key-bytes`).
    ///
    /// ```
    /// use ministore::{KeyMemory, MiniStoreOptions};
    /// let memory = KeyMemory::new(256 * 1024 * 1024);
    /// let options = MiniStoreOptions::new().key_memory(memory.clone());
    /// assert_eq!(options.key_memory, Some(memory));
    /// ```
    pub fn key_memory(mut self, memory: KeyMemory) -> Self {
        self.key_memory = Some(memory);
        self
    }

    /// Makes the writer's file operations fail as `injector` says, for tests of what the
    /// store does on a failed write, fsync, rename or directory fsync (see [`crate::io`]).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # #[derive(Debug)] struct Never;
    /// # impl ministore::io::FaultInjector for Never {
    /// #     fn fault(&self, _: ministore::io::FileOp, _: &std::path::Path) -> Option<ministore::io::Fault> { None }
    /// # }
    /// let options = ministore::MiniStoreOptions::new().inject_faults(Arc::new(Never));
    /// ```
    pub fn inject_faults(mut self, injector: std::sync::Arc<dyn crate::io::FaultInjector>) -> Self {
        self.faults = crate::io::Faults::new(injector);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_segments == 0 {
            return Err(crate::MiniStoreError::InvalidArgument(
                "max_segments must be at least 1".into(),
            ));
        }
        if self.max_bytes_per_segment == 0 {
            return Err(crate::MiniStoreError::InvalidArgument(
                "max_bytes_per_segment must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
