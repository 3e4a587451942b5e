//! [`MiniStore`]: the single writer of a journal — open and repair, append, rotate, retain.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::index::{self, SharedIndex, SparseIndex};
use crate::json::JsonLine;
use crate::keys::{self, Committed, KeyIndex};
use crate::meta::{self, Entry};
use crate::read::{JournalReader, JournalStream};
use crate::recovery;
use crate::segment::{self, Segment};
use crate::syncer::Syncer;
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
    damage: Option<String>,
}

/// How far a journal is durable: what readers in the writer's process may read.
///
/// Every record with `seq <= last_seq` is on disk and fsynced. Obtain it from
/// [`MiniStore::durable`] or [`MiniStore::watch_durable`].
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

    pub(crate) async fn open_with_options(path: &Path, opts: MiniStoreOptions) -> Result<Self> {
        opts.validate()?;
        let base = path.to_path_buf();
        let writer = blocking(move || Writer::open(base, opts)).await?;
        let (durable, _) = watch::channel(writer.durable());
        Ok(MiniStore {
            path: path.to_path_buf(),
            damage: writer.damage.clone(),
            writer: Some(Box::new(writer)),
            durable,
        })
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

    /// How many idempotency keys the journal remembers now (at most
    /// [`MiniStoreOptions::max_keys`]).
    pub fn remembered_keys(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.keys.len())
    }

    /// The sequence number of the last appended record (0 if the journal has none).
    pub fn last_seq(&self) -> u64 {
        self.durable.borrow().last_seq
    }

    /// The journal's durable position now.
    pub fn durable(&self) -> Durable {
        *self.durable.borrow()
    }

    /// A receiver that sees every change of the durable position: wait on it with
    /// `changed()` to learn of new records. It reports the writer closed once the store is
    /// dropped.
    pub fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.durable.subscribe()
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
        JournalReader::with_durable(&self.path, from_seq, self.watch_durable())
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

/// JSON lines as the file holds them: each followed by a newline.
fn encode_lines(lines: &[JsonLine]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.as_bytes().len() + 1).sum());
    for line in lines {
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
    }
    buf
}

/// One request of a commit group, as the writer takes it: its records, already encoded
/// (one `\n`-terminated line each) or as JSON lines, its key and its expectation.
pub(crate) struct Request<'a> {
    lines: Lines<'a>,
    key: Option<&'a str>,
    expected_last_seq: Option<u64>,
}

enum Lines<'a> {
    Encoded { buf: &'a [u8], count: u64 },
    Json(&'a [JsonLine]),
}

impl<'a> From<&'a Append> for Request<'a> {
    fn from(append: &'a Append) -> Self {
        Request {
            lines: Lines::Json(&append.lines),
            key: append.key.as_deref(),
            expected_last_seq: append.expected_last_seq,
        }
    }
}

impl Lines<'_> {
    /// Appends the records to `out`; how many there are.
    fn encode_into(&self, out: &mut Vec<u8>) -> u64 {
        match self {
            Lines::Encoded { buf, count } => {
                out.extend_from_slice(buf);
                *count
            }
            Lines::Json(lines) => {
                for line in lines.iter() {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
                lines.len() as u64
            }
        }
    }
}

/// Most records one request may hold: its metadata entry keeps a CRC of each (4 bytes) in
/// an entry of at most 4 GiB.
const MAX_RECORDS_PER_REQUEST: u64 = 1 << 28;

/// What the writer decided for each request of a group before writing it.
enum Outcome {
    /// Answered without writing: a duplicate, or refused.
    Done(Result<Appended>),
    /// Written at these seqs, if the commit succeeds.
    Written(Range<u64>),
    /// The same key and records as request `n` of this group: its duplicate.
    SameAs(usize),
}

/// Runs blocking file I/O on tokio's blocking pool, keeping the async workers free.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How far the active file is extended with zeros ahead of the records at a time (see
/// `Writer::preallocate`). The commit that extends writes and fsyncs these zeros too: at
/// 1 MiB that cost ~1 ms every ~50 batches of 100 records (append_batch p99 1.55 ms here),
/// at 256 KiB a quarter of it (p99 0.65 ms), while the size change it saves is paid once
/// per ~1,300 records of 200 bytes either way.
const PREALLOCATE: u64 = 256 << 10;

/// The synchronous writer behind a `MiniStore`: the active file and what is known of the
/// rotated ones. Every method documents what a crash at each step leaves behind.
#[derive(Debug)]
struct Writer {
    base: PathBuf,
    opts: MiniStoreOptions,
    /// The active segment, opened read-write (not O_APPEND: a failed write is truncated).
    file: File,
    /// Bytes of the active segment that hold complete, durable records (and the header).
    len: u64,
    /// The active file's size: `len` plus zeros written ahead of the records (see
    /// `preallocate`). Never less than `len`.
    allocated: u64,
    active_first_seq: u64,
    next_seq: u64,
    /// Rotated segments, oldest first: (number, first_seq, path).
    rotated: VecDeque<(u64, u64, PathBuf)>,
    /// The sparse index of the active segment, kept as records are committed; readers in
    /// this process find it through `index::lookup_active`, and rotation writes it beside
    /// the sealed segment.
    index: SharedIndex,
    /// Set when a failure leaves the file in a state we cannot vouch for.
    poisoned: Option<String>,
    /// Set while bytes of a failed commit could not be cut off the active file: nothing is
    /// written after them until a commit manages the cut.
    uncut: Option<String>,
    /// Where records are missing between segments, as found at open.
    damage: Option<String>,
    /// The active segment's metadata file (see `meta`), opened read-write; shared with the
    /// thread that fsyncs it (`syncer`).
    meta_file: Arc<File>,
    meta_path: PathBuf,
    /// The first seq its header covers.
    meta_first_seq: u64,
    /// Bytes of the metadata file that hold durable entries.
    meta_len: u64,
    /// The metadata files of the rotated segments, oldest first: (first seq, path).
    sealed_metas: VecDeque<(u64, PathBuf)>,
    /// The idempotency keys of the retained records.
    keys: KeyIndex,
    /// The newest commit time written: commit times never go back within a journal.
    last_commit_ns: u64,
    /// Fsyncs the metadata file while this thread fsyncs the segment; started by the
    /// first commit (`None` before, or if the OS refused the thread: then one after the
    /// other).
    syncer: Option<Syncer>,
    /// Buffers of the group being committed, kept to reuse their memory.
    group_data: Vec<u8>,
    group_meta: Vec<u8>,
    /// Held for the writer's lifetime: one writer per journal, across processes.
    _lock: File,
}

impl Writer {
    fn open(base: PathBuf, opts: MiniStoreOptions) -> Result<Writer> {
        let dir = segment::dir_of(&base).to_path_buf();
        segment::create_dir_durable(&dir)?;
        if base.is_dir() {
            return Err(MiniStoreError::InvalidArgument(format!(
                "{} is a directory; give the path of the journal file, e.g. {}",
                base.display(),
                base.join("journal.jsonl").display()
            )));
        }
        let lock = lock_journal(&base)?;
        clear_torn_header(&base)?;

        let mut segments = segment::catalog(&base)?;
        let active = match segments.last() {
            Some(s) if s.number.is_none() => segments.pop(),
            _ => None,
        };
        let mut active = match active {
            Some(active) => active,
            None => create_active(&base, &segments)?,
        };
        // Record the derived sequence numbers in segments of the published crate, so they
        // stay stable when retention deletes the segments they were counted from.
        for seg in segments.iter_mut().chain(std::iter::once(&mut active)) {
            if seg.legacy {
                upgrade_legacy(seg)?;
            }
        }

        // Damage before the active file (a segment deleted from the middle, one that lost
        // lines) is not ours to repair: appends go on, readers crossing it get `Missing`,
        // and `MiniStore::damage` says where it is.
        let chain: Vec<Segment> = segments.iter().chain([&active]).cloned().collect();
        let damage = segment::find_gap(&chain)?;
        if let Some(damage) = &damage {
            tracing::error!(journal = %base.display(), %damage, "records are missing between segments");
        }

        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active.path)
            .map_err(|e| MiniStoreError::io("opening", &active.path, e))?;
        // The scan that finds the torn tail also finds where the records start: the active
        // segment's index costs no extra read.
        let mut active_index = SparseIndex::new(active.first_seq, active.header_len);
        let mut body = segment::scan_body(
            &file,
            &active.path,
            active.header_len,
            true,
            Some(&mut active_index),
        )?;
        if body.end < body.file_len {
            cut_torn_tail(&file, &active.path, body)?;
        }
        // The records of an interrupted commit may be complete lines without a complete,
        // valid metadata entry (or part of a batch): never acknowledged, they are cut, so a
        // batch stays all or none (see `recovery::recover_active`).
        let active_meta = recovery::recover_active(&base, &active, &file, body.end, body.records)?;
        if active_meta.covered_end < body.end {
            cut_torn_tail(
                &file,
                &active.path,
                segment::Body {
                    records: 0,
                    end: active_meta.covered_end,
                    file_len: body.end,
                },
            )?;
            active_index = SparseIndex::new(active.first_seq, active.header_len);
            body = segment::scan_body(
                &file,
                &active.path,
                active.header_len,
                true,
                Some(&mut active_index),
            )?;
        }
        if active.first_seq + body.records != active_meta.next_seq {
            return Err(MiniStoreError::BadMeta {
                path: active_meta.path.clone(),
                reason: format!(
                    "its entries end at seq {}, but {} holds records up to seq {}",
                    active_meta.next_seq.saturating_sub(1),
                    active.path.display(),
                    (active.first_seq + body.records).saturating_sub(1)
                ),
            });
        }
        // Indexes are never trusted, so a stale one is harmless; but it is clutter.
        if let Err(e) = index::remove_orphans(&base) {
            tracing::warn!(journal = %base.display(), error = %e, "could not look for stale segment indexes");
        }
        let first_retained = segments.first().map_or(active.first_seq, |s| s.first_seq);
        let (keys, sealed_metas) = recovery::rebuild_keys(
            &base,
            first_retained,
            active.first_seq,
            &active_meta.path,
            &active_meta.entries,
            opts.max_keys,
        )?;
        let index = SharedIndex::new(active_index.into());
        index::publish_active(&base, &index);
        Ok(Writer {
            rotated: segments
                .into_iter()
                .map(|s| (s.number.unwrap_or_default(), s.first_seq, s.path))
                .collect(),
            base,
            opts,
            file,
            len: body.end,
            allocated: body.end,
            active_first_seq: active.first_seq,
            next_seq: active.first_seq + body.records,
            index,
            poisoned: None,
            uncut: None,
            damage,
            meta_file: Arc::new(active_meta.file),
            meta_path: active_meta.path,
            meta_first_seq: active_meta.first_seq,
            meta_len: active_meta.len,
            sealed_metas: sealed_metas.into(),
            keys,
            last_commit_ns: active_meta.last_commit_ns,
            syncer: None,
            group_data: Vec::new(),
            group_meta: Vec::new(),
            _lock: lock,
        })
    }

    fn durable(&self) -> Durable {
        Durable {
            last_seq: self.next_seq - 1,
            first_seq: self.rotated.front().map_or(self.active_first_seq, |r| r.1),
            segments: self.rotated.len() + 1,
            checksums_from: self
                .sealed_metas
                .front()
                .map_or(self.meta_first_seq, |m| m.0)
                .max(self.rotated.front().map_or(self.active_first_seq, |r| r.1)),
            active_first_seq: self.active_first_seq,
            active_len: self.len,
        }
    }

    /// Commits a group of requests: decides each (duplicate key, reused key, expected last
    /// seq), then writes the records of those to be written and their metadata entries with
    /// one write and one fsync per file. See `MiniStore::append_requests`.
    fn commit_group(&mut self, requests: &[Request<'_>]) -> Result<Vec<Result<Appended>>> {
        if let Some(reason) = &self.poisoned {
            return Err(MiniStoreError::Poisoned {
                path: self.base.clone(),
                reason: reason.clone(),
            });
        }
        // Bytes of a failed commit are still there: try the cut again, and write nothing
        // after them until it succeeds. (Not `Poisoned`: a reopen would scan the file and
        // could count those bytes, which may be in the page cache only, as records.)
        if self.uncut.is_some() {
            self.restore_durable_length("an earlier failure");
            if let Some(reason) = &self.uncut {
                return Err(MiniStoreError::io(
                    "cutting a failed write off",
                    &self.base,
                    std::io::Error::other(reason.clone()),
                ));
            }
        }
        let mut data = std::mem::take(&mut self.group_data);
        let mut entries = std::mem::take(&mut self.group_meta);
        data.clear();
        entries.clear();
        let result = self.decide_and_write(requests, &mut data, &mut entries);
        // Keep the buffers' memory for the next group, unless a huge batch grew them.
        if data.capacity() <= 16 << 20 {
            self.group_data = data;
        }
        if entries.capacity() <= 4 << 20 {
            self.group_meta = entries;
        }
        result
    }

    fn decide_and_write(
        &mut self,
        requests: &[Request<'_>],
        data: &mut Vec<u8>,
        entries: &mut Vec<u8>,
    ) -> Result<Vec<Result<Appended>>> {
        let group_first_seq = self.next_seq;
        let commit_unix_ns = meta::now_unix_ns().max(self.last_commit_ns);
        let mut next = self.next_seq;
        let mut outcomes = Vec::with_capacity(requests.len());
        // Keys written by this group: (hash, committed, request index).
        let mut new_keys: Vec<(u128, Committed, usize)> = Vec::new();
        let mut crcs = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let start = data.len();
            let count = request.lines.encode_into(data);
            let refused = |data: &mut Vec<u8>, e| {
                data.truncate(start);
                Outcome::Done(Err(e))
            };
            let mut keyed = None;
            if let Some(key) = request.key {
                if key.len() > meta::MAX_KEY_BYTES {
                    outcomes.push(refused(
                        data,
                        MiniStoreError::InvalidArgument(format!(
                            "an idempotency key is at most {} bytes; this one has {}",
                            meta::MAX_KEY_BYTES,
                            key.len()
                        )),
                    ));
                    continue;
                }
                let hash = keys::hash(key);
                let fingerprint = meta::fingerprint(&data[start..]);
                let earlier = self.keys.get(hash).map(|c| (c, None)).or_else(|| {
                    new_keys
                        .iter()
                        .find(|(h, _, _)| *h == hash)
                        .map(|(_, c, n)| (*c, Some(*n)))
                });
                if let Some((committed, in_group)) = earlier {
                    data.truncate(start);
                    outcomes.push(if committed.fingerprint != fingerprint {
                        Outcome::Done(Err(MiniStoreError::KeyReused {
                            key: key.to_owned(),
                            first_seq: committed.first_seq,
                        }))
                    } else if let Some(n) = in_group {
                        Outcome::SameAs(n)
                    } else {
                        Outcome::Done(Ok(Appended {
                            seqs: committed.seqs(),
                            duplicate: true,
                        }))
                    });
                    continue;
                }
                keyed = Some((key, hash, fingerprint));
            }
            if let Some(expected) = request.expected_last_seq
                && expected != next - 1
            {
                outcomes.push(refused(
                    data,
                    MiniStoreError::LastSeqMismatch {
                        expected,
                        last_seq: next - 1,
                    },
                ));
                continue;
            }
            if count == 0 {
                outcomes.push(Outcome::Done(Ok(Appended {
                    seqs: next..next,
                    duplicate: false,
                })));
                continue;
            }
            if count > MAX_RECORDS_PER_REQUEST {
                outcomes.push(refused(
                    data,
                    MiniStoreError::InvalidArgument(format!(
                        "one append holds at most {MAX_RECORDS_PER_REQUEST} records; this one has {count}"
                    )),
                ));
                continue;
            }
            crcs.clear();
            meta::line_crcs(&data[start..], &mut crcs);
            let entry = Entry {
                first_seq: next,
                count: count as u32,
                group_first_seq,
                data_offset: self.len + start as u64,
                data_len: (data.len() - start) as u64,
                commit_unix_ns,
                fingerprint: keyed.map_or(0, |k| k.2),
                key: keyed.map(|k| k.0.into()),
                record_crcs: std::mem::take(&mut crcs),
            };
            entry.encode_into(entries);
            crcs = entry.record_crcs;
            if let Some((_, hash, fingerprint)) = keyed {
                let committed = Committed {
                    first_seq: next,
                    count: count as u32,
                    fingerprint,
                };
                new_keys.push((hash, committed, i));
            }
            outcomes.push(Outcome::Written(next..next + count));
            next += count;
        }
        if !data.is_empty() {
            self.write_group(data, entries, next - group_first_seq)?;
            self.last_commit_ns = commit_unix_ns;
            for (hash, committed, _) in new_keys {
                self.keys.insert(hash, committed);
            }
        }
        let written: Vec<Option<Range<u64>>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Written(seqs) => Some(seqs.clone()),
                _ => None,
            })
            .collect();
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Done(result) => result,
                Outcome::Written(seqs) => Ok(Appended {
                    seqs,
                    duplicate: false,
                }),
                Outcome::SameAs(n) => Ok(Appended {
                    seqs: written[n].clone().unwrap_or_default(),
                    duplicate: true,
                }),
            })
            .collect();
        if !data.is_empty() && self.len >= self.opts.max_bytes_per_segment {
            // The records are durable whatever happens here; a failed rotation stops
            // further writes, and a reopen finishes it (see `create_active`).
            if let Err(e) = self.rotate() {
                tracing::error!(journal = %self.base.display(), error = %e, "segment rotation failed");
                self.poisoned = Some(format!("segment rotation failed: {e}"));
            }
        }
        Ok(results)
    }

    /// Writes `count` encoded records (`data`, one `\n`-terminated line each) and their
    /// metadata `entries`, and fsyncs both files.
    fn write_group(&mut self, data: &[u8], entries: &[u8], count: u64) -> Result<()> {
        let first = self.next_seq;
        let end = self.len + data.len() as u64;
        if end > self.allocated && self.opts.preallocate {
            self.preallocate(end);
        }
        // 1. Write the records at the end of the durable data (over zeros written ahead,
        //    if any), and their entries at the end of the metadata file's. If a write
        //    fails part-way (ENOSPC, EFBIG, EIO), cut both files back to their durable
        //    lengths so no partial record or entry stays behind, and the store goes on
        //    once the condition clears; the zeros ahead go too. Which file is written first
        //    does not matter: until both are fsynced nothing counts, and a crash leaving
        //    either without the other is cut by open (see `recovery::recover_active`).
        let io = &self.opts.faults;
        if let Err(e) = io.write_all_at(&self.file, &self.base, data, self.len) {
            self.restore_durable_length("a failed write");
            return Err(MiniStoreError::io("writing to", &self.base, e));
        }
        self.allocated = self.allocated.max(end);
        if let Err(e) = io.write_all_at(&self.meta_file, &self.meta_path, entries, self.meta_len) {
            self.restore_durable_length("a failed write");
            return Err(MiniStoreError::io("writing to", &self.meta_path, e));
        }
        // 2. fdatasync both: the records and their entries (and the file sizes, and the
        //    zeros ahead when this commit extended the file) are on stable storage. The
        //    metadata file's flush runs on the syncer thread at the same time as the
        //    segment's here, so a commit waits for the slower flush, not for their sum.
        //    On failure of either, the kernel may have dropped the pages and marked them
        //    clean, and a later fsync would "succeed" over them (fsyncgate): they are
        //    never trusted. What is durable is what the last successful fsyncs covered,
        //    `self.len` and `self.meta_len`; both files are cut back to them, and that
        //    made durable, before anything else reads or appends. Readers never saw the
        //    lost bytes: they read up to `self.len` only.
        if self.syncer.is_none() {
            self.syncer = Syncer::start(&self.base.to_string_lossy())
                .inspect_err(|e| tracing::warn!(journal = %self.base.display(), error = %e, "no thread to fsync the metadata file beside the segment; fsyncing one after the other"))
                .ok();
        }
        let io = &self.opts.faults;
        if let Some(syncer) = &self.syncer {
            syncer.begin(self.meta_file.clone(), self.meta_path.clone(), io.clone());
        }
        let data_synced = io.sync_data(&self.file, &self.base);
        let meta_synced = match &self.syncer {
            Some(syncer) => syncer.wait(),
            None => io.sync_data(&self.meta_file, &self.meta_path),
        };
        let failed = match (data_synced, meta_synced) {
            (Err(e), _) => Some((self.base.clone(), e)),
            (Ok(()), Err(e)) => Some((self.meta_path.clone(), e)),
            (Ok(()), Ok(())) => None,
        };
        if let Some((path, e)) = failed {
            self.restore_durable_length("a failed fsync");
            return Err(MiniStoreError::io("fsyncing", &path, e));
        }
        // 2b. A file deleted while open (its directory removed under the server) takes its
        //    records with it when closed: they are not durable in any way that counts.
        //    Refuse to acknowledge them, and refuse further writes until a reopen.
        if let Ok(meta) = self.file.metadata()
            && std::os::unix::fs::MetadataExt::nlink(&meta) == 0
        {
            self.poisoned = Some("the journal's file was deleted while it was open".into());
            return Err(MiniStoreError::io(
                "appending to",
                &self.base,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the file was deleted while open; its records would be lost",
                ),
            ));
        }
        // 3. Only now do the records count: readers may see them, callers are told. The
        //    index only ever points at durable records.
        index::lock(&self.index).note_lines(first, self.len, data);
        self.len = end;
        self.meta_len += entries.len() as u64;
        self.next_seq += count;
        Ok(())
    }

    /// Extends the active file with written zeros ahead of a commit that would end at `end`,
    /// past the file's size, so that the commits after it overwrite allocated blocks inside
    /// the file: their fdatasync then has no file size or block allocation to commit (on
    /// ext4, no journal commit), which makes it cheaper. The zeros are written, not
    /// `fallocate`d: unwritten extents would be converted at each overwrite, a metadata
    /// change again. The commit that extends pays for it, once per `PREALLOCATE` bytes; its
    /// own fdatasync makes the zeros durable with its records.
    ///
    /// Never beyond what the segment can still take (it rotates once `len` reaches
    /// `max_bytes_per_segment`), so small segments stay small. Best effort: if the zeros
    /// cannot be written (ENOSPC, EFBIG, EPERM), the file is cut back to its size before,
    /// and the commit appends as if there were no preallocation, failing or not exactly as
    /// it would have.
    ///
    /// Zeros are what makes this safe for readers: a JSON line never holds a NUL byte, so
    /// a reader takes the first NUL as the end of what is written, and a crash that leaves
    /// the zeros is repaired by `open` like any torn tail (see `segment::scan_body`).
    fn preallocate(&mut self, end: u64) {
        let target = end.max(
            self.len
                .saturating_add(PREALLOCATE)
                .min(self.opts.max_bytes_per_segment),
        );
        // Zeros are only needed past the commit's own bytes.
        let from = self.allocated.max(end);
        if target <= from {
            return;
        }
        let zeros = vec![0u8; (target - from) as usize];
        match self
            .opts
            .faults
            .write_all_at(&self.file, &self.base, &zeros, from)
        {
            Ok(()) => self.allocated = target,
            Err(e) => {
                tracing::debug!(journal = %self.base.display(), error = %e, bytes = zeros.len(), "could not preallocate; appending");
                // A part of the zeros may have been written: drop them. Should even that
                // fail, they are harmless (readers stop at the first NUL, and the file is
                // cut to `len` at rotation, close and open). The record write that follows
                // meets the same condition and fails or succeeds as it always has.
                if self.file.set_len(self.allocated).is_err() {
                    // The file may now be this long: cut there at rotation and close.
                    self.allocated = target;
                }
            }
        }
    }

    /// Cuts the zeros written ahead of the records, and fsyncs, so that the active file
    /// ends exactly at its last record. A no-op when nothing was preallocated.
    fn cut_preallocated(&mut self) -> Result<()> {
        if self.allocated > self.len {
            self.opts
                .faults
                .truncate_durably(&self.file, &self.base, self.len)
                .map_err(|e| MiniStoreError::io("truncating", &self.base, e))?;
            self.allocated = self.len;
        }
        Ok(())
    }

    /// After a failed write or fsync: cuts the active file back to its durable length and
    /// fsyncs that, so that no byte of the failed commit can be read or kept. If even that
    /// fails, the writer refuses writes until a later commit manages the cut (see
    /// `commit`), so nothing is ever appended after bytes that are not durable.
    fn restore_durable_length(&mut self, after: &str) {
        let io = &self.opts.faults;
        match io
            .truncate_durably(&self.file, &self.base, self.len)
            .and_then(|()| io.truncate_durably(&self.meta_file, &self.meta_path, self.meta_len))
        {
            Ok(()) => {
                self.allocated = self.len;
                self.uncut = None;
            }
            Err(e) => {
                tracing::error!(journal = %self.base.display(), error = %e, durable_len = self.len, "{after}, and cutting the file back to its durable length failed; refusing writes until it succeeds");
                self.uncut = Some(format!("{after} left bytes that could not be cut: {e}"));
            }
        }
    }

    /// Seals the active segment under the next number and starts a new one.
    fn rotate(&mut self) -> Result<()> {
        let dir = segment::dir_of(&self.base).to_path_buf();
        let number = self.rotated.back().map_or(1, |r| r.0 + 1);
        let sealed = segment::rotated_path(&self.base, number);
        // 1. The active file's records were fsynced by every commit. A sealed segment must
        //    end at its last record (its index records that length, and its readers do not
        //    stop at zeros), so cut any zeros written ahead of them and fsync. There are
        //    normally none: `preallocate` stops at max_bytes_per_segment, which the records
        //    have now reached; this keeps the promise whatever led here. Crash before the cut
        //    is durable: the file is still the active one, with a zero tail that open cuts.
        //    A failure here fails the rotation (see `commit`).
        self.cut_preallocated()?;
        // 2. Rename it to its segment name. Crash here: either name exists, both complete.
        let io = &self.opts.faults;
        io.rename(&self.base, &sealed)
            .map_err(|e| MiniStoreError::io("renaming segment to", &sealed, e))?;
        // 3. Make the rename durable. Crash before this: after reboot the file may be back
        //    under the active name, still a valid active segment.
        io.sync_dir(&dir)
            .map_err(|e| MiniStoreError::io("fsyncing directory", &dir, e))?;
        // 4. Write the sealed segment's index beside it (`index::write_sidecar`: derived
        //    data, not fsynced). A failure costs readers a scan, so it is only logged.
        //    Crash here: a segment without an index, or with one that fails its checks.
        let header = segment::header_line(self.next_seq);
        let sealed_index = std::mem::replace(
            &mut *index::lock(&self.index),
            SparseIndex::new(self.next_seq, header.len() as u64),
        );
        if let Err(e) = index::write_sidecar(&sealed, &sealed_index, self.len) {
            tracing::warn!(segment = %sealed.display(), error = %e, "could not write the segment's index; readers will scan it");
        }
        self.rotated
            .push_back((number, self.active_first_seq, sealed));
        // 5. Create the new active segment: header with its first seq, fsync the file and
        //    the directory. Crash here: no active file, or one with a partial header; open
        //    then creates it from the end of the newest rotated segment.
        io.check_create(&self.base)
            .map_err(|e| MiniStoreError::io("creating", &self.base, e))?;
        self.file = segment::write_new_file(&self.base, header.as_bytes())?;
        self.len = header.len() as u64;
        self.allocated = self.len;
        self.active_first_seq = self.next_seq;
        // 5b. Create its metadata file (named by its first seq; the sealed segment's keeps
        //    its name, so no rename can pair a segment with another's metadata), header
        //    fsynced with the directory before any entry goes in. Crash here: an active
        //    segment without metadata, or with a torn header and no entry; open creates it.
        let meta_path = meta::path_for(&self.base, self.next_seq);
        io.check_create(&meta_path)
            .map_err(|e| MiniStoreError::io("creating", &meta_path, e))?;
        let active_meta = recovery::create(&self.base, self.next_seq, self.len)?;
        let sealed_meta = std::mem::replace(&mut self.meta_path, active_meta.path);
        let sealed_meta_seq = std::mem::replace(&mut self.meta_first_seq, active_meta.first_seq);
        self.sealed_metas.push_back((sealed_meta_seq, sealed_meta));
        self.meta_file = Arc::new(active_meta.file);
        self.meta_len = active_meta.len;
        // 6. Retention: delete the oldest segments beyond max_segments (the active one
        //    counts), each after its index and its metadata, then fsync the directory.
        //    Crash here: extra old segments remain until the next rotation deletes them
        //    (an index whose segment is gone is ignored, and removed by the next open; a
        //    segment whose metadata is gone keys nothing, and it was to go anyway).
        //    Sequence numbers do not move: each segment's header holds its own first seq.
        let keep = self.opts.max_segments - 1;
        let mut deleted = false;
        while self.rotated.len() > keep {
            let (_, first_seq, path) = self.rotated.pop_front().expect("len > keep >= 0");
            let retained = self.rotated.front().map_or(self.active_first_seq, |r| r.1);
            while let Some((seq, meta_path)) = self.sealed_metas.front()
                && *seq < retained
            {
                io.remove_file(meta_path)
                    .map_err(|e| MiniStoreError::io("deleting", meta_path, e))?;
                self.sealed_metas.pop_front();
            }
            self.keys.forget_before(retained);
            index::remove_sidecar(&path);
            io.remove_file(&path)
                .map_err(|e| MiniStoreError::io("deleting", &path, e))?;
            tracing::info!(
                segment = %path.display(),
                first_seq,
                last_seq = self.rotated.front().map_or(self.active_first_seq, |r| r.1) - 1,
                max_segments = self.opts.max_segments,
                "retention deleted segment"
            );
            deleted = true;
        }
        if deleted {
            io.sync_dir(&dir)
                .map_err(|e| MiniStoreError::io("fsyncing directory", &dir, e))?;
        }
        Ok(())
    }
}

/// A clean close leaves the journal as it would be without preallocation: the active file
/// ends at its last record, for the published crate and for any reader that does not
/// know about the zeros. Best effort: zeros left behind (a failure here, a crash, a
/// process killed) are cut by the next open.
impl Drop for Writer {
    fn drop(&mut self) {
        // A poisoned writer no longer vouches for the file: leave it to the reopen, as a
        // crash would, which re-reads it and keeps exactly its complete records.
        if self.poisoned.is_some() {
            return;
        }
        if self.uncut.is_some() {
            self.restore_durable_length("closing");
            return;
        }
        if let Err(e) = self.cut_preallocated() {
            tracing::warn!(journal = %self.base.display(), error = %e, "could not cut the preallocated zeros on close; the next open will");
        }
    }
}

/// Takes the journal's lock file, so that two writers never interleave in one file.
fn lock_journal(base: &Path) -> Result<File> {
    let mut lock = base.as_os_str().to_owned();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| MiniStoreError::io("opening lock file", &lock, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(MiniStoreError::Locked {
            path: base.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(MiniStoreError::io("locking", &lock, e)),
    }
}

/// Creates the active file when there is none, or finishes one a crash left without a
/// complete header (during creation or rotation). Its first seq continues the newest
/// rotated segment.
fn create_active(base: &Path, rotated: &[Segment]) -> Result<Segment> {
    let first_seq = match rotated.last() {
        Some(last) => last.first_seq + segment::count_records(last)?,
        None => 1,
    };
    let header = segment::header_line(first_seq);
    match std::fs::metadata(base) {
        // An empty file holds no records (the catalog skipped it): write the header in place.
        Ok(_) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(base)
                .map_err(|e| MiniStoreError::io("opening", base, e))?;
            file.set_len(0)
                .and_then(|_| file.write_all_at(header.as_bytes(), 0))
                .and_then(|_| file.sync_all())
                .map_err(|e| MiniStoreError::io("writing header to", base, e))?;
            segment::sync_dir(segment::dir_of(base))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            segment::write_new_file(base, header.as_bytes())?;
        }
        Err(e) => return Err(MiniStoreError::io("reading metadata of", base, e)),
    }
    Ok(Segment {
        path: base.to_path_buf(),
        number: None,
        first_seq,
        header_len: header.len() as u64,
        legacy: false,
    })
}

/// Empties an active file whose header a crash cut short: no line break, and its bytes are
/// the start of a header, possibly followed by zeros where a crash kept the file's size but
/// not its bytes. It holds no records (every commit fsyncs the header with its records),
/// and `create_active` writes a full header. A file of zeros alone is taken for a torn
/// header only beside rotated segments (a crash mid-rotation, step 5); alone, it could as
/// well be anyone's, and the catalog refuses it. Any other file is left alone.
fn clear_torn_header(base: &Path) -> Result<()> {
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(base)
    else {
        return Ok(()); // missing (created later) or unreadable (the catalog reports it)
    };
    let head = segment::read_head(&file, base)?;
    let torn = !head.is_empty()
        && segment::is_torn_header(&file, base, &head, u64::MAX, || {
            Ok(!segment::list_rotated(base)?.is_empty())
        })?;
    if torn {
        tracing::warn!(
            file = %base.display(),
            header_bytes = memchr::memchr(0, &head).unwrap_or(head.len()),
            file_bytes = file.metadata().map_or(0, |m| m.len()),
            "replacing a header cut short by a crash (the rest of the file is zeros)"
        );
        file.set_len(0)
            .and_then(|_| file.sync_all())
            .map_err(|e| MiniStoreError::io("truncating", base, e))?;
    }
    Ok(())
}

/// Rewrites a segment of the published crate with a header that records its first seq.
/// Write the copy, fsync it, rename it over the original, fsync the directory: a crash
/// leaves either the original or the complete copy (plus at worst a stray `.upgrade` file).
fn upgrade_legacy(seg: &mut Segment) -> Result<()> {
    let mut tmp = seg.path.as_os_str().to_owned();
    tmp.push(".upgrade");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let src = File::open(&seg.path).map_err(|e| MiniStoreError::io("opening", &seg.path, e))?;
    let header = segment::header_line(seg.first_seq);
    let mut out = segment::write_new_file(&tmp, header.as_bytes())?;
    let mut body = std::io::BufReader::new(src);
    std::io::Seek::seek(&mut body, std::io::SeekFrom::Start(seg.header_len))
        .and_then(|_| std::io::copy(&mut body, &mut out))
        .and_then(|_| out.sync_all())
        .map_err(|e| MiniStoreError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &seg.path).map_err(|e| MiniStoreError::io("renaming", &tmp, e))?;
    segment::sync_dir(segment::dir_of(&seg.path))?;
    tracing::info!(segment = %seg.path.display(), first_seq = seg.first_seq, "recorded first_seq in a segment written by the published crate");
    seg.header_len = header.len() as u64;
    seg.legacy = false;
    Ok(())
}

/// Cuts the bytes after the last complete record, which no caller was ever told about.
/// More than a partial line is kept aside as evidence (`<journal>.broken-<offset>`).
///
/// Zeros alone are the normal state after a crash (or a kill) of a writer that had
/// preallocated (see `Writer::preallocate`): they are cut without evidence and logged as
/// information, not as a warning.
fn cut_torn_tail(file: &File, path: &Path, body: segment::Body) -> Result<()> {
    let cut = body.file_len - body.end;
    let mut tail = vec![0u8; cut as usize];
    file.read_exact_at(&mut tail, body.end)
        .map_err(|e| MiniStoreError::io("reading", path, e))?;
    if tail.iter().all(|&b| b == 0) {
        tracing::info!(
            file = %path.display(),
            offset = body.end,
            bytes = cut,
            "cut the unwritten (zero) space after the last record"
        );
    } else {
        let mut evidence = None;
        if tail.contains(&b'\n') {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".broken-{}", body.end));
            let name = PathBuf::from(name);
            let _ = std::fs::remove_file(&name);
            segment::write_new_file(&name, &tail)?;
            evidence = Some(name);
        }
        tracing::warn!(
            file = %path.display(),
            offset = body.end,
            bytes = cut,
            saved_to = ?evidence,
            "cut an incomplete tail left by an interrupted write"
        );
    }
    // Truncate and fsync before any new record goes after it.
    file.set_len(body.end)
        .and_then(|_| file.sync_all())
        .map_err(|e| MiniStoreError::io("truncating", path, e))
}
