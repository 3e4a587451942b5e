//! [`MiniStore`]: the single writer of a journal — open and repair, append, rotate, retain.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::watch;

use crate::index::{self, SharedIndex, SparseIndex};
use crate::json::JsonLine;
use crate::read::{JournalReader, JournalStream};
use crate::segment::{self, Segment};
use crate::{MiniStoreError, MiniStoreOptions, Result};

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
        let buf = encode_lines(lines);
        let Some(writer) = self.writer.as_mut() else {
            return Err(self.cancelled());
        };
        let result = writer.commit(&buf, lines.len() as u64);
        self.durable.send_replace(writer.durable());
        result
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
            let result = writer.commit(&buf, count);
            Ok((writer, result))
        })
        .await?;
        self.durable.send_replace(writer.durable());
        self.writer = Some(writer);
        result
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
        let body = segment::scan_body(
            &file,
            &active.path,
            active.header_len,
            true,
            Some(&mut active_index),
        )?;
        if body.end < body.file_len {
            cut_torn_tail(&file, &active.path, body)?;
        }
        // Indexes are never trusted, so a stale one is harmless; but it is clutter.
        if let Err(e) = index::remove_orphans(&base) {
            tracing::warn!(journal = %base.display(), error = %e, "could not look for stale segment indexes");
        }
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
            _lock: lock,
        })
    }

    fn durable(&self) -> Durable {
        Durable {
            last_seq: self.next_seq - 1,
            first_seq: self.rotated.front().map_or(self.active_first_seq, |r| r.1),
            segments: self.rotated.len() + 1,
            active_first_seq: self.active_first_seq,
            active_len: self.len,
        }
    }

    /// Writes `count` encoded records (`buf`, one `\n`-terminated line each) and fsyncs.
    fn commit(&mut self, buf: &[u8], count: u64) -> Result<Range<u64>> {
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
        let first = self.next_seq;
        if count == 0 {
            return Ok(first..first);
        }
        let end = self.len + buf.len() as u64;
        if end > self.allocated && self.opts.preallocate {
            self.preallocate(end);
        }
        // 1. Write at the end of the durable data (over zeros written ahead, if any). If the
        //    write fails part-way (ENOSPC, EFBIG, EIO), cut the file back to its durable
        //    length so no partial record stays behind and the store goes on once the
        //    condition clears; the zeros ahead go too.
        let io = &self.opts.faults;
        if let Err(e) = io.write_all_at(&self.file, &self.base, buf, self.len) {
            self.restore_durable_length("a failed write");
            return Err(MiniStoreError::io("writing to", &self.base, e));
        }
        self.allocated = self.allocated.max(end);
        // 2. fdatasync: the records (and the file size, when this commit extended it: the
        //    zeros ahead are made durable by the same call) are on stable storage. On
        //    failure the kernel may have dropped the pages and marked them clean, and a
        //    later fsync would "succeed" over them (fsyncgate): they are never trusted.
        //    What is durable is what the last successful fsync covered, `self.len`; the
        //    file is cut back to it, and that made durable, before anything else reads or
        //    appends. Readers never saw the lost bytes: they read up to `self.len` only.
        if let Err(e) = io.sync_data(&self.file, &self.base) {
            self.restore_durable_length("a failed fsync");
            return Err(MiniStoreError::io("fsyncing", &self.base, e));
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
        index::lock(&self.index).note_lines(first, self.len, buf);
        self.len = end;
        self.next_seq += count;
        if self.len >= self.opts.max_bytes_per_segment {
            // The records are durable whatever happens here; a failed rotation stops
            // further writes, and a reopen finishes it (see `create_active`).
            if let Err(e) = self.rotate() {
                tracing::error!(journal = %self.base.display(), error = %e, "segment rotation failed");
                self.poisoned = Some(format!("segment rotation failed: {e}"));
            }
        }
        Ok(first..self.next_seq)
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
        match self
            .opts
            .faults
            .truncate_durably(&self.file, &self.base, self.len)
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
        // 6. Retention: delete the oldest segments beyond max_segments (the active one
        //    counts), each after its index, then fsync the directory. Crash here: extra
        //    old segments remain until the next rotation deletes them (an index whose
        //    segment is gone is ignored, and removed by the next open). Sequence numbers
        //    do not move: each segment's header holds its own first seq.
        let keep = self.opts.max_segments - 1;
        let mut deleted = false;
        while self.rotated.len() > keep {
            let (_, first_seq, path) = self.rotated.pop_front().expect("len > keep >= 0");
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
