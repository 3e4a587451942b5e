//! [`MiniStore`]: the journal's public front — open, append, read — over its writer
//! (`writer.rs`), which commits, rotates and retains, and the repair at open
//! (`recovery.rs`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::watch;

use crate::blocking::blocking;
use crate::durable::{Durable, DurableWatch};
use crate::index::ActiveIndex;
use crate::json::JsonLine;
use crate::read::JournalReader;
use crate::stream::JournalStream;
use crate::warm::WarmJournal;
use crate::writer::{Lines, Request, Writer};
use crate::{Append, Appended, MiniStoreError, MiniStoreOptions, Result};

/// A durable, append-only log store for serializable records.
///
/// `MiniStore` manages a journal file (or set of rotated segments) on disk.
/// It provides two core operations:
/// - [`append`](Self::append): write a record and guarantee durability.
/// - [`replay`](Self::replay): read all records in order (static method).
///
/// and, beyond those: [`append_batch`](Self::append_batch) (many records, one fsync),
/// [`append_json`](Self::append_json) (raw JSON text), sequence numbers
/// ([`last_seq`](Self::last_seq)), and readers from any sequence number that see only
/// durable records and can wait for new ones ([`reader`](Self::reader)).
///
/// # Concurrency
///
/// `MiniStore` is not thread-safe by itself. To share it across tasks, wrap it in a
/// synchronization primitive like `Arc<RwLock<MiniStore>>` (for write-heavy workloads)
/// or `Arc<Mutex<MiniStore>>`, or give it to one task that owns it (as ministore-server
/// does, to commit many callers' records with one fsync). Only one `MiniStore` may hold a
/// journal open at a time, in any process: a lock file (`journal.jsonl.lock`) enforces it.
///
/// # Durability & Rotation
///
/// - Every `append()` performs an `fsync` (`fdatasync`) before returning.
/// - While open, the active file is extended with zeros ahead of the records, which makes
///   those fsyncs cheaper; dropping the store cuts them (see the [crate docs](crate)).
/// - When the active segment reaches `max_bytes_per_segment`, it is rotated:
///   - Closed, renamed to `journal.jsonl.000001`, etc.
///   - A new active file is created.
/// - Only `max_segments` files are kept (the active one included); older ones are deleted.
/// - `replay()` automatically reads all segments in correct order.
///
/// See the [crate documentation](crate) for the file format and the exact crash guarantees.
///
/// ```
/// use ministore::MiniStore;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Event { id: u32 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ministore::MiniStoreError> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("events.log");
///
/// let mut store = MiniStore::open(&path).await?;
/// store.append(&Event { id: 1 }).await?;
/// let seqs = store.append_batch(&[Event { id: 2 }, Event { id: 3 }]).await?;
/// assert_eq!(seqs, 2..4);
/// drop(store);
///
/// let events: Vec<Event> = MiniStore::replay(&path).await?;
/// assert_eq!(events, vec![Event { id: 1 }, Event { id: 2 }, Event { id: 3 }]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MiniStore {
    path: PathBuf,
    /// `None` while a write runs on the blocking pool, or for good after a cancelled one.
    writer: Option<Box<Writer>>,
    durable: watch::Sender<Durable>,
    /// Where its readers find the writer's index of the active segment.
    index: ActiveIndex,
    damage: Option<String>,
}

impl MiniStore {
    /// Opens a ministore journal at the given path with default options.
    ///
    /// Equivalent to `MiniStoreOptions::new().open(path)`.
    ///
    /// # Behavior
    ///
    /// - If the file does not exist, it is created and initialized with the magic header
    ///   (parent directories are created too).
    /// - If the file exists and is empty, the magic header is written.
    /// - If the file exists and is non-empty, it must be a journal: its header is checked
    ///   (a foreign file is refused with [`MiniStoreError::BadHeader`] and never touched),
    ///   and its tail is repaired: an incomplete last line left by a crash is cut off (and
    ///   logged; anything more than a partial line is also saved next to the journal as
    ///   `journal.jsonl.broken-<offset>`). So are the zeros a writer that did not close
    ///   cleanly left after the last record (see the crate docs, "File format").
    ///   Acknowledged records are never cut.
    /// - Journals written by the published `ministore` crate (no `first_seq` in their
    ///   headers) are opened too; their segments' headers are rewritten once, atomically,
    ///   to record their sequence numbers.
    ///
    /// # Errors
    ///
    /// Returns an error if:
    /// - The path is not writable.
    /// - Parent directories cannot be created.
    /// - Disk I/O fails during magic header write.
    /// - The file is not a journal, or is damaged before its last line.
    /// - Another `MiniStore` holds the journal open ([`MiniStoreError::Locked`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = ministore::MiniStore::open(dir.path().join("a/b/journal.jsonl")).await?;
    /// assert_eq!(store.last_seq(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open<P: AsRef<Path>>(path: P) -> Result<Self> {
        MiniStoreOptions::new().open(path).await
    }

    pub(crate) fn with_writer(path: &Path, writer: Writer) -> Self {
        let (durable, _) = watch::channel(writer.durable());
        MiniStore {
            path: path.to_path_buf(),
            damage: writer.damage.clone(),
            index: writer.active_index.clone(),
            writer: Some(Box::new(writer)),
            durable,
        }
    }

    /// Appends a serializable record to the journal and ensures it is durably stored.
    ///
    /// The record is serialized as a single JSON line and immediately fsynced to disk.
    /// This operation is atomic: either the entire record is written, or nothing is (a
    /// failed write is truncated away, and the store stays usable).
    ///
    /// If the active segment exceeds `max_bytes_per_segment`, it is rotated before return.
    /// The record's sequence number is then [`last_seq`](Self::last_seq).
    ///
    /// # Guarantees
    ///
    /// After this method returns `Ok(())`:
    /// - The record is visible in subsequent [`replay`](Self::replay) calls.
    /// - The record will survive process termination or system crash.
    ///
    /// # Errors
    ///
    /// Returns an error if:
    /// - Serialization fails (e.g., unsupported type).
    /// - Disk write fails (e.g., full disk).
    /// - `fsync` fails (e.g., I/O error). The kernel may have dropped the unwritten data, so
    ///   the store never retries it into success: it cuts the file back to what the last
    ///   successful fsync covered, and the next append goes there.
    ///
    /// # Performance
    ///
    /// This is a slow operation due to the fsync. Use it for critical metadata, not
    /// high-frequency data, or batch with [`append_batch`](Self::append_batch).
    pub async fn append<R>(&mut self, record: &R) -> Result<()>
    where
        R: Serialize,
    {
        self.append_batch(std::slice::from_ref(record))
            .await
            .map(|_| ())
    }

    /// Appends many records with one write and one fsync, atomically: after `Ok` all are
    /// durable; after `Err` none is visible (a crash during the call may leave a prefix of
    /// them on disk, which the next open keeps; see the crate docs).
    ///
    /// Returns the sequence numbers given to the records, in order (empty for no records).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let mut store = ministore::MiniStore::open(dir.path().join("j.jsonl")).await?;
    /// assert_eq!(store.append_batch(&["a", "b", "c"]).await?, 1..4);
    /// assert_eq!(store.append_batch::<&str>(&[]).await?, 4..4);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_batch<R>(&mut self, records: &[R]) -> Result<Range<u64>>
    where
        R: Serialize,
    {
        let mut buf = Vec::with_capacity(records.len() * 64);
        for record in records {
            serde_json::to_writer(&mut buf, record).map_err(MiniStoreError::Serialize)?;
            buf.push(b'\n');
        }
        self.commit(buf, records.len() as u64).await
    }

    /// Appends records given as JSON text (validated and compacted by [`JsonLine`]) with
    /// one write and one fsync, atomically, like [`append_batch`](Self::append_batch).
    ///
    /// ```
    /// use ministore::{JsonLine, MiniStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let mut store = MiniStore::open(dir.path().join("j.jsonl")).await?;
    /// let line = JsonLine::from_slice(br#"{ "user": "alice" }"#)?;
    /// assert_eq!(store.append_json(&[line]).await?, 1..2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_json(&mut self, lines: &[JsonLine]) -> Result<Range<u64>> {
        self.commit(encode_lines(lines), lines.len() as u64).await
    }

    /// [`append_json`](Self::append_json) on the calling thread, for a thread that does
    /// nothing but write (the server's journal writers): it saves the two hand-offs to and
    /// from tokio's blocking pool that every async append pays. It blocks for the write and
    /// the fsync, so never call it from async code.
    ///
    /// ```
    /// use ministore::{JsonLine, MiniStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let mut store = MiniStore::open(dir.path().join("j.jsonl")).await?;
    /// let line = JsonLine::from_slice(br#"{"user":"alice"}"#)?;
    /// let seqs = std::thread::spawn(move || store.blocking_append_json(&[line]))
    ///     .join()
    ///     .unwrap()?;
    /// assert_eq!(seqs, 1..2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn blocking_append_json(&mut self, lines: &[JsonLine]) -> Result<Range<u64>> {
        let request = Request {
            lines: Lines::Json(lines),
            key: None,
            expected_last_seq: None,
        };
        let mut results = self.blocking_commit(std::slice::from_ref(&request))?;
        results
            .pop()
            .expect("one result per request")
            .map(|a| a.seqs)
    }

    /// Commits append requests, each with its optional idempotency key and expected last
    /// seq (see [`Append`]), with one write and one fsync of the records and of their
    /// metadata: each request is atomic (all its records or none, through any crash), and
    /// its key is committed with its records. Requests are taken in order: one that expects
    /// a last seq sees the requests before it in `requests`.
    ///
    /// The outer `Err` is a failure of the commit itself (a failed write or fsync): no
    /// request of the group is acknowledged. Otherwise each request has its own result:
    /// [`Appended`] (written, or `duplicate`), or why it was refused without writing
    /// anything ([`MiniStoreError::KeyReused`], [`MiniStoreError::LastSeqMismatch`],
    /// [`MiniStoreError::InvalidArgument`] for a key longer than
    /// [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES)).
    ///
    /// ```
    /// use ministore::{Append, JsonLine, MiniStore, MiniStoreError};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let mut store = MiniStore::open(dir.path().join("j.jsonl")).await?;
    /// let line = |text: &str| JsonLine::from_slice(text.as_bytes()).unwrap();
    /// let results = store
    ///     .append_requests(vec![
    ///         Append::new(vec![line("1"), line("2")]).expected_last_seq(0),
    ///         Append::new(vec![line("3")]).expected_last_seq(0), // seq 2 is last by now
    ///     ])
    ///     .await?;
    /// assert_eq!(results[0].as_ref().unwrap().seqs, 1..3);
    /// assert!(matches!(results[1], Err(MiniStoreError::LastSeqMismatch { expected: 0, last_seq: 2 })));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_requests(
        &mut self,
        requests: Vec<Append>,
    ) -> Result<Vec<Result<Appended>>> {
        let Some(mut writer) = self.writer.take() else {
            return Err(self.cancelled());
        };
        let (writer, result) = blocking(move || {
            let refs: Vec<Request<'_>> = requests.iter().map(Request::from).collect();
            let result = writer.commit_group(&refs);
            Ok((writer, result))
        })
        .await?;
        self.durable.send_replace(writer.durable());
        self.writer = Some(writer);
        result
    }

    /// One request: [`append_requests`](Self::append_requests) with one [`Append`], its
    /// refusal as the error.
    pub async fn append_request(&mut self, request: Append) -> Result<Appended> {
        let mut results = self.append_requests(vec![request]).await?;
        results.pop().expect("one result per request")
    }

    /// [`append_requests`](Self::append_requests) on the calling thread, for a thread that
    /// does nothing but write (see [`blocking_append_json`](Self::blocking_append_json)).
    pub fn blocking_append_requests(
        &mut self,
        requests: &[Append],
    ) -> Result<Vec<Result<Appended>>> {
        let refs: Vec<Request<'_>> = requests.iter().map(Request::from).collect();
        self.blocking_commit(&refs)
    }

    fn blocking_commit(&mut self, requests: &[Request<'_>]) -> Result<Vec<Result<Appended>>> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(self.cancelled());
        };
        let result = writer.commit_group(requests);
        self.durable.send_replace(writer.durable());
        result
    }

    /// Closes the journal (its files and its lock, like dropping the store) but keeps what
    /// its writer knew of it, for [`WarmJournal::blocking_reopen`]: a reopen that finds the
    /// files unchanged costs a few system calls instead of a full open. `None` when the
    /// store cannot vouch for its files (a failed write or fsync it could not repair, an
    /// append cancelled mid-way): it is then closed as a drop closes it, and the next open
    /// is a full one. Blocks (a `fstat` of each file, and with preallocation the cut of
    /// the zeros and its fsync): never call it on an async worker.
    pub fn blocking_close_warm(mut self) -> Option<WarmJournal> {
        let (state, seen) = self.writer.take()?.park()?;
        Some(WarmJournal::new(state, seen))
    }

    /// How many idempotency keys the journal remembers now (at most
    /// [`MiniStoreOptions::max_keys`]).
    pub fn remembered_keys(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.keys.len())
    }

    /// The memory the remembered keys take, in bytes (from the index's capacities).
    pub fn remembered_keys_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.keys.heap_bytes())
    }

    /// The sequence number of the last appended record (0 if the journal has none).
    pub fn last_seq(&self) -> u64 {
        self.durable.borrow().last_seq
    }

    /// The journal's durable position now.
    pub fn durable(&self) -> Durable {
        *self.durable.borrow()
    }

    /// What a reader that outlives a borrow of the store is given
    /// ([`JournalReader::with_durable`]): a receiver that sees every change of the durable
    /// position (wait on it with `changed()` to learn of new records; it reports the writer
    /// closed once the store is dropped), and the handle of the active segment's index.
    pub fn watch_durable(&self) -> DurableWatch {
        DurableWatch {
            durable: self.durable.subscribe(),
            index: self.index.clone(),
        }
    }

    /// Where records are missing between the journal's segments, as found when it was
    /// opened (a segment deleted from the middle, or one that lost or gained lines): `None`
    /// for a journal whose segments chain. Appends go on; readers that cross the damage get
    /// [`MiniStoreError::Missing`]. Open repairs only what a crash can leave, so this is
    /// reported, never repaired.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = ministore::MiniStore::open(dir.path().join("j.jsonl")).await?;
    /// assert_eq!(store.damage(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// The path of the journal's active file, as given to `open`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader from sequence number `from_seq` across all retained segments that returns
    /// only durable records and can [`wait`](JournalReader::wait) for new ones.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let mut store = ministore::MiniStore::open(dir.path().join("j.jsonl")).await?;
    /// store.append_batch(&[10, 20, 30]).await?;
    /// let mut reader = store.reader(2);
    /// let records = reader.next_batch(100).await?;
    /// assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    /// assert_eq!(records[0].json, "20");
    /// # Ok(())
    /// # }
    /// ```
    pub fn reader(&self, from_seq: u64) -> JournalReader {
        let reader = JournalReader::with_durable(&self.path, from_seq, self.watch_durable());
        match &self.writer {
            Some(writer) => reader.with_faults(writer.faults()),
            None => reader,
        }
    }

    /// Replays all records from a journal (including rotated segments) as a `Vec` of
    /// strongly-typed values.
    ///
    /// This is a static method: it does not require an open `MiniStore` instance.
    ///
    /// # Behavior
    ///
    /// - Scans the directory for files matching `base.001`, `base.002`, etc. (any number
    ///   of digits, ordered numerically: `.999` before `.1000`).
    /// - Reads segments in ascending order (`.001` → `.002` → … → active file).
    /// - Validates magic header in each file.
    /// - If the journal does not exist or is empty, returns an empty `Vec`.
    /// - An incomplete last line (a write cut short by a crash, never acknowledged) is not
    ///   a record and is skipped.
    ///
    /// # Errors
    ///
    /// Returns an error if:
    /// - Any segment has a missing or invalid magic header ([`MiniStoreError::BadHeader`]).
    /// - Any line fails to deserialize as type `R` ([`MiniStoreError::Corrupt`], naming
    ///   the file and line).
    /// - File I/O fails (e.g., permission denied).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use ministore::MiniStore;
    /// # #[derive(serde::Deserialize)] struct Event { id: u32 }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let events: Vec<Event> = MiniStore::replay("/tmp/events.log").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn replay<R, P: AsRef<Path>>(path: P) -> Result<Vec<R>>
    where
        R: serde::de::DeserializeOwned,
    {
        let mut reader = JournalReader::new(path.as_ref(), 1);
        let mut out = Vec::new();
        loop {
            let batch = reader.next_batch(4096).await?;
            if batch.is_empty() {
                return Ok(out);
            }
            for record in batch {
                out.push(reader.parse(&record)?);
            }
        }
    }

    /// Returns a stream (line iterator) over the records in a single journal file.
    ///
    /// Each line is parsed on-demand as `Result<T, MiniStoreError>`.
    /// This avoids loading the entire journal into memory.
    ///
    /// Note: this function reads only one file, not rotated segments.
    /// Use [`replay`](Self::replay) to read the full journal history, or
    /// [`read_from`](Self::read_from) to read it from any sequence number.
    ///
    /// [`JournalStream`] implements `tokio_stream::Stream`:
    ///
    /// ```
    /// use tokio_stream::StreamExt;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("j.jsonl");
    /// let mut store = ministore::MiniStore::open(&path).await?;
    /// store.append_batch(&[1, 2, 3]).await?;
    ///
    /// let stream = ministore::MiniStore::stream::<u32>(&path).await?;
    /// let values: Vec<u32> = stream.map(|r| r.unwrap()).collect().await;
    /// assert_eq!(values, vec![1, 2, 3]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stream<T>(path: impl AsRef<Path>) -> Result<JournalStream<T>>
    where
        T: for<'de> serde::Deserialize<'de>,
    {
        JournalStream::open(path.as_ref()).await
    }

    /// A reader of the journal at `path` from sequence number `from_seq` across all
    /// retained segments, as it is on disk (without a `MiniStore`, e.g. in another process).
    /// It finds its start from the segments' headers without reading earlier segments, and
    /// from the segment's index within it (less than 64 KiB read before the first record);
    /// its memory stays flat however large the journal. Starting before the oldest retained
    /// record starts at the oldest.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ministore::MiniStoreError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("j.jsonl");
    /// # let mut store = ministore::MiniStore::open(&path).await?;
    /// # store.append_batch(&["a", "b", "c"]).await?;
    /// let mut reader = ministore::MiniStore::read_from(&path, 3);
    /// let batch = reader.next_batch(10).await?;
    /// assert_eq!((batch[0].seq, batch[0].parse::<String>().unwrap()), (3, "c".to_string()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_from(path: impl AsRef<Path>, from_seq: u64) -> JournalReader {
        JournalReader::new(path.as_ref(), from_seq)
    }

    async fn commit(&mut self, buf: Vec<u8>, count: u64) -> Result<Range<u64>> {
        let Some(mut writer) = self.writer.take() else {
            return Err(self.cancelled());
        };
        let (writer, result) = blocking(move || {
            let request = Request {
                lines: Lines::Encoded { buf: &buf, count },
                key: None,
                expected_last_seq: None,
            };
            let result = writer.commit_group(std::slice::from_ref(&request));
            Ok((writer, result))
        })
        .await?;
        self.durable.send_replace(writer.durable());
        self.writer = Some(writer);
        let mut results = result?;
        results
            .pop()
            .expect("one result per request")
            .map(|a| a.seqs)
    }

    /// Why a store whose writer is gone (an async append dropped mid-way) refuses appends.
    fn cancelled(&self) -> MiniStoreError {
        MiniStoreError::Poisoned {
            path: self.path.clone(),
            reason: "an earlier append was cancelled before it finished".into(),
        }
    }
}

/// Opening, here beside the store it makes: `options.rs` knows nothing of the store.
impl MiniStoreOptions {
    /// Opens (or creates) the journal at `path` with these options. See [`MiniStore::open`].
    pub async fn open<P: AsRef<Path>>(self, path: P) -> Result<MiniStore> {
        let path = path.as_ref().to_path_buf();
        blocking(move || self.blocking_open(path)).await
    }

    /// [`open`](Self::open) on the calling thread, for a thread that does its own blocking
    /// I/O (ministore-server's writer threads reopen idle journals this way, without two
    /// hand-offs to the blocking pool and back). Never call it on an async worker.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = ministore::MiniStoreOptions::new()
    ///     .blocking_open(dir.path().join("j.jsonl"))
    ///     .unwrap();
    /// assert_eq!(store.last_seq(), 0);
    /// ```
    pub fn blocking_open<P: AsRef<Path>>(self, path: P) -> Result<MiniStore> {
        self.validate()?;
        let writer = Writer::open(path.as_ref().to_path_buf(), self)?;
        Ok(MiniStore::with_writer(path.as_ref(), writer))
    }
}

/// JSON lines as the file holds them: each followed by a newline.
fn encode_lines(lines: &[JsonLine]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.as_bytes().len() + 1).sum());
    Lines::Json(lines).encode_into(&mut buf);
    buf
}
