//! The open journals: name validation, a writer per journal that commits every waiting
//! append with one write and one fsync (group commit) on a small pool of threads shared by
//! all journals, the closing of idle journals' files, and the durable watermark that
//! readers follow.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ministore::{
    ActiveIndex, Append, Appended, Durable, DurableWatch, MiniStore, MiniStoreError,
    MiniStoreOptions, WarmJournal,
};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::error::ServerError;
use crate::lock;
use crate::metrics::Metrics;

/// The name used when a request leaves `journal` empty (the wire contract's).
pub use ministore::proto::DEFAULT_JOURNAL;

/// Longest journal name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Appends waiting for a journal's writer; beyond this, callers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// Most bytes committed by one group commit: bounds the writer's memory and latency.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// Writer threads shared by all journals, unless `--writer-threads` says otherwise.
pub const DEFAULT_WRITER_THREADS: usize = 8;
/// A journal with no append for this long has its files closed, unless configured.
pub const DEFAULT_IDLE_CLOSE: Duration = Duration::from_secs(60);
/// Memory for the state of closed journals, kept to reopen them without a full open
/// (`--warm-journal-bytes`), unless configured.
pub const DEFAULT_WARM_BYTES: usize = 64 << 20;

/// Checks a journal name and resolves the empty name to [`DEFAULT_JOURNAL`].
///
/// Names are 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with '.'; so a name
/// can never be a path (`..`, `/`), hidden, or a different name after Unicode
/// normalization. Checked before anything touches the file system.
///
/// ```
/// use ministore_server::journals::validate_name;
/// assert_eq!(validate_name("").unwrap(), "default");
/// assert_eq!(validate_name("orders-2024.v1").unwrap(), "orders-2024.v1");
/// assert!(validate_name("../etc").is_err());
/// assert!(validate_name("a/b").is_err());
/// assert!(validate_name(".hidden").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<&str, ServerError> {
    let invalid = |reason| ServerError::InvalidJournalName {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Ok(DEFAULT_JOURNAL);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if name.starts_with('.') {
        return Err(invalid("starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("contains a character outside the allowed set"));
    }
    Ok(name)
}

/// All journals of a data directory that this server has opened.
#[derive(Debug)]
pub struct Journals {
    data_dir: PathBuf,
    max_open: usize,
    options: MiniStoreOptions,
    /// Looked up by every RPC: a read lock, never held across an await.
    open: std::sync::RwLock<HashMap<String, Arc<Journal>>>,
    /// Serializes opening (and shutting down), which awaits the store's open.
    opening: Mutex<()>,
    shutting_down: AtomicBool,
    /// Whether the data directory is still the one this server locked.
    data_dir_check: Arc<DataDirCheck>,
    /// Bumped each time a journal is opened, for followers waiting for theirs to exist.
    opened: watch::Sender<u64>,
    /// The writer threads, and the journals whose files are open.
    pool: Arc<Pool>,
    /// A journal whose store saw no append for this long is closed by [`sweep`](Self::sweep).
    idle_close: Duration,
    metrics: Metrics,
}

/// One open journal: where it lives, its writer's queue, and how far it is durable.
#[derive(Debug)]
pub struct Journal {
    name: String,
    path: PathBuf,
    appends: mpsc::Sender<WriterJob>,
    /// Its writer, scheduled on `pool` when appends are sent.
    slot: Arc<Slot>,
    pool: Arc<Pool>,
    /// How far it is durable, and its writer's index of the active segment: both outlive
    /// the store, which is closed when idle and reopened.
    watch: DurableWatch,
    /// Where records are missing between segments, as found when it was opened.
    damage: Option<String>,
}

/// An append request waiting to be committed, and where to send what became of it.
struct AppendJob {
    request: Append,
    reply: oneshot::Sender<Result<Appended, ServerError>>,
}

impl Journals {
    /// Journals under `data_dir`, each opened with `options` on first use.
    pub fn new(data_dir: impl Into<PathBuf>, options: MiniStoreOptions) -> Self {
        Journals {
            data_dir: data_dir.into(),
            max_open: usize::MAX,
            options,
            open: std::sync::RwLock::new(HashMap::new()),
            opening: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            data_dir_check: Arc::new(DataDirCheck::default()),
            opened: watch::Sender::new(0),
            pool: Arc::new(Pool::new(
                DEFAULT_WRITER_THREADS,
                usize::MAX,
                DEFAULT_WARM_BYTES,
            )),
            idle_close: DEFAULT_IDLE_CLOSE,
            metrics: Metrics::default(),
        }
    }

    /// The faults the journals' files meet (none outside tests): the readers of RPCs
    /// meet them too.
    pub fn faults(&self) -> ministore::io::Faults {
        self.options.faults.clone()
    }

    /// Records commits in `metrics` (by default, in metrics nobody reads).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// At most `max` journals have their files open at once (`--max-journals`): to open
    /// one more, the least recently used idle journal is closed (and reopened when next
    /// appended to). Only when all `max` have appends in progress is opening another
    /// refused, with RESOURCE_EXHAUSTED.
    pub fn with_max_open(mut self, max: usize) -> Self {
        self.max_open = max.max(1);
        self.pool = Arc::new(Pool::new(
            self.pool.threads,
            self.max_open,
            self.pool.warm_budget(),
        ));
        self
    }

    /// Commits on `threads` writer threads, shared by all journals (`--writer-threads`).
    pub fn with_writer_threads(mut self, threads: usize) -> Self {
        self.pool = Arc::new(Pool::new(threads, self.max_open, self.pool.warm_budget()));
        self
    }

    /// Keeps the state of closed journals (see [`WarmJournal`]) in at most `bytes` of
    /// memory, all journals together (`--warm-journal-bytes`): the least recently closed
    /// beyond it are forgotten and reopen in full; 0 keeps none.
    pub fn with_warm_budget(mut self, bytes: usize) -> Self {
        self.pool = Arc::new(Pool::new(self.pool.threads, self.max_open, bytes));
        self
    }

    /// The journals closed with their state kept, and the memory it takes (at most the
    /// budget of [`with_warm_budget`](Self::with_warm_budget)).
    pub fn warm_journals(&self) -> (usize, usize) {
        let warm = lock(&self.pool.warm);
        (warm.by_name.len(), warm.bytes)
    }

    /// The memory the idempotency keys of all journals take, open and closed warm, in
    /// bytes (see [`ministore::KeyMemory`]; 0 without one in the store options).
    pub fn key_memory_bytes(&self) -> usize {
        self.options
            .key_memory
            .as_ref()
            .map_or(0, ministore::KeyMemory::used_bytes)
    }

    /// Closes a journal's files once it has had no append for `idle` (checked by
    /// [`sweep`](Self::sweep)); it reopens on its next append.
    pub fn with_idle_close(mut self, idle: Duration) -> Self {
        self.idle_close = idle;
        self
    }

    /// How many journals have their files open now (at most `--max-journals`).
    pub fn open_stores(&self) -> usize {
        self.pool.open_stores()
    }

    /// Housekeeping, called by the server every second: closes the files of journals idle
    /// for the idle-close time, and forgets closed journals nobody uses (no follower, no
    /// RPC in progress) and nobody appended to for that time either, so memory stays with
    /// the journals in use, not every journal ever touched. Blocks briefly (closing files): call it off the async runtime.
    pub fn sweep(&self) {
        self.pool.close_idle(self.idle_close);
        // Forgotten once closed and unused for the idle time too: a journal appended to
        // now and then stays known, and reopens on its writer thread, not through `get`.
        let cutoff = self
            .pool
            .now()
            .saturating_sub(self.idle_close.as_nanos() as u64);
        let forgettable = |journal: &Arc<Journal>| {
            journal.slot.last_used.load(Ordering::Relaxed) < cutoff
                && !journal.slot.scheduled.load(Ordering::SeqCst)
                && journal.slot.pending.load(Ordering::SeqCst) == 0
                && journal
                    .slot
                    .writer
                    .try_lock()
                    .is_ok_and(|w| !w.counted && w.queue.is_some())
        };
        // Candidates under the read lock, so that RPCs looking journals up are not held
        // while all of them (10,000 in the benchmark) are looked at: usually there are none.
        let candidates: Vec<String> = {
            let open = self.open.read().expect("journals lock");
            open.iter()
                .filter(|(_, journal)| forgettable(journal))
                .map(|(name, _)| name.clone())
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let mut open = self.open.write().expect("journals lock");
        for name in candidates {
            // Under the write lock nobody can clone an Arc out of the map (`lookup` clones
            // under the read lock), so a count of 1 means no RPC, stream or follower holds
            // it; and it is checked again, as it may have been used since.
            if open
                .get(&name)
                .is_some_and(|j| Arc::strong_count(j) == 1 && forgettable(j))
            {
                open.remove(&name);
            }
        }
    }

    /// The journal called `name` (already validated), opening it if needed. With `create`
    /// false, a journal that does not exist on disk is [`ServerError::JournalNotFound`].
    pub async fn get(&self, name: &str, create: bool) -> Result<Arc<Journal>, ServerError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ServerError::ShuttingDown);
        }
        self.check_data_dir()?;
        if let Some(journal) = self.lookup(name) {
            return Ok(journal);
        }
        let _opening = self.opening.lock().await;
        if let Some(journal) = self.lookup(name) {
            return Ok(journal); // opened while we waited
        }
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ServerError::ShuttingDown);
        }
        let dir = self.data_dir.join(name);
        if !create && !dir.is_dir() {
            return Err(ServerError::JournalNotFound(name.to_owned()));
        }
        self.refuse_symlinks_out(&dir)?;
        self.pool.start()?;
        let path = dir.join("journal.jsonl");
        // Every open of the store fills this handle, so readers keep finding the active
        // segment's index across reopens.
        let options = self.options.clone().active_index(ActiveIndex::default());
        let (pool, opening, store_path) = (self.pool.clone(), name.to_owned(), path.clone());
        let opened_with = options.clone();
        let (store, how) = tokio::task::spawn_blocking(move || {
            pool.open_store(&opening, &store_path, &opened_with)
        })
        .await
        .map_err(|_| ServerError::ShuttingDown)?
        .map_err(|e| ServerError::store(name, e))?;
        self.metrics.journal_opened(how);
        // A journal forgotten while closed, reopened from its kept state, fills the handle
        // it was first opened with: the one to keep.
        let index = store.watch_durable().index;
        let options = options.active_index(index.clone());
        let damage = store.damage().map(str::to_owned);
        let (appends, queue) = mpsc::channel(QUEUE_DEPTH);
        // The server's own watch, fed by the writer: it outlives the store, which is
        // closed when idle and reopened.
        let (durable_tx, durable) = watch::channel(store.durable());
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            scheduled: AtomicBool::new(false),
            pending: AtomicI64::new(0),
            last_used: AtomicU64::new(self.pool.now()),
            writer: std::sync::Mutex::new(Writer {
                name: name.to_owned(),
                path: path.clone(),
                options,
                store: Some(store),
                counted: true,
                data_dir: self.data_dir.clone(),
                data_dir_check: self.data_dir_check.clone(),
                queue: Some(queue),
                stopping: false,
                durable: durable_tx,
                exited: None,
                metrics: self.metrics.clone(),
            }),
        });
        // Counted among the open stores now (one more than `--max-journals` can be open
        // while this is: `opening` lets one open at a time). Closing an idle journal to
        // make room closes files (and fsyncs, with preallocation): off the runtime. If
        // none can close, the store just opened is closed again.
        let pool = self.pool.clone();
        let reserving = slot.clone();
        tokio::task::spawn_blocking(move || {
            let reserved = pool.reserve(&reserving, 0);
            if reserved.is_err() {
                lock(&reserving.writer).store = None;
            }
            reserved
        })
        .await
        .map_err(|_| ServerError::ShuttingDown)??;
        let journal = Arc::new(Journal {
            name: name.to_owned(),
            path: path.clone(),
            appends,
            slot,
            pool: self.pool.clone(),
            watch: DurableWatch { durable, index },
            damage,
        });
        tracing::info!(journal = name, path = %path.display(), last_seq = journal.durable().last_seq, "opened journal");
        self.open
            .write()
            .expect("journals lock")
            .insert(name.to_owned(), journal.clone());
        self.opened.send_modify(|n| *n += 1);
        Ok(journal)
    }

    /// A receiver that changes each time a journal is opened (created by its first append,
    /// or opened to be read): a follower of a journal that does not exist yet waits on it.
    pub fn watch_opened(&self) -> watch::Receiver<u64> {
        self.opened.subscribe()
    }

    /// Watches the data directory through `lock`, this server's open lock file in it:
    /// once the lock file's path names another file, or none, the directory was removed or
    /// replaced under the server. A journal recreated then would hand out its sequence
    /// numbers again, and records written into unlinked files vanish at restart, so from
    /// then on every RPC is refused with UNAVAILABLE and no journal is reopened.
    pub fn watch_data_dir(mut self, lock_path: PathBuf, lock: &std::fs::File) -> Self {
        use std::os::unix::fs::MetadataExt;
        let identity = lock.metadata().ok().map(|m| (m.dev(), m.ino()));
        self.data_dir_check = Arc::new(DataDirCheck {
            lock_path,
            identity,
            ..DataDirCheck::default()
        });
        self
    }

    /// Looks at the data directory now (a stat of its lock file); `false` once it is lost.
    /// The server calls this every second; between calls, RPCs see the last answer.
    pub fn check_data_dir_now(&self) -> bool {
        let lost = self.data_dir_check.is_lost();
        if lost && !self.data_dir_check.reported.swap(true, Ordering::AcqRel) {
            tracing::error!(data_dir = %self.data_dir.display(), "the data directory was removed or replaced; refusing every request until restarted");
        }
        !lost
    }

    fn check_data_dir(&self) -> Result<(), ServerError> {
        match self.data_dir_check.lost.load(Ordering::Acquire) {
            true => Err(ServerError::DataDirLost {
                path: self.data_dir.clone(),
            }),
            false => Ok(()),
        }
    }

    /// The journals open now, by name.
    pub fn open_journals(&self) -> Vec<Arc<Journal>> {
        let mut open: Vec<_> = self
            .open
            .read()
            .expect("journals lock")
            .values()
            .cloned()
            .collect();
        open.sort_by(|a, b| a.name.cmp(&b.name));
        open
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The names of every journal in the data directory, open or not, sorted: each
    /// subdirectory whose name is a valid journal name. Symlinks are left out (a journal
    /// directory is never one the server made), as is everything else. Lists the directory
    /// once; it blocks, so call it off the async runtime.
    pub fn list_names(&self) -> Result<Vec<String>, ServerError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(ServerError::ShuttingDown);
        }
        self.check_data_dir()?;
        let listing = |e: std::io::Error| ServerError::Listing {
            path: self.data_dir.clone(),
            source: Arc::new(e),
        };
        let entries = match std::fs::read_dir(&self.data_dir) {
            Ok(entries) => entries,
            // No journal was ever created: the directory appears with the first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(listing(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(listing)?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str())
                && validate_name(name).is_ok_and(|valid| valid == name)
            {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// What the journal called `name` holds, without opening it: its durable position if
    /// this server has it open, otherwise read from its files ([`ministore::summary`]),
    /// which blocks: call it off the async runtime. A journal whose directory or files
    /// lead out of the data directory through a symlink is refused, as `get` refuses it.
    pub fn summary(&self, name: &str) -> Result<ministore::JournalSummary, ServerError> {
        if let Some(journal) = self.lookup(name) {
            let durable = journal.durable();
            return Ok(ministore::JournalSummary {
                first_seq: durable.first_seq,
                last_seq: durable.last_seq,
                segments: durable.segments,
                size_bytes: ministore::disk_bytes(journal.path())
                    .map_err(|e| ServerError::store(name, e))?,
            });
        }
        let dir = self.data_dir.join(name);
        self.refuse_symlinks_out(&dir)?;
        ministore::summary(dir.join(ministore::verify::JOURNAL_FILE))
            .map_err(|e| ServerError::store(name, e))
    }

    fn lookup(&self, name: &str) -> Option<Arc<Journal>> {
        self.open.read().expect("journals lock").get(name).cloned()
    }

    /// Refuses a journal directory, or a file in it, that resolves outside the data
    /// directory: a symlink planted there must not make the server write elsewhere.
    fn refuse_symlinks_out(&self, dir: &Path) -> Result<(), ServerError> {
        let Ok(root) = self.data_dir.canonicalize() else {
            return Ok(()); // the store reports a missing or unreadable data directory
        };
        let outside = |path: &Path| {
            path.canonicalize()
                .map(|real| !real.starts_with(&root))
                .unwrap_or(false)
        };
        if outside(dir) {
            return Err(ServerError::OutsideDataDir {
                path: dir.display().to_string(),
            });
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
                if is_link && (outside(&entry.path()) || entry.path().canonicalize().is_err()) {
                    return Err(ServerError::OutsideDataDir {
                        path: entry.path().display().to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuses new work and closes every writer once its queued appends are committed.
    /// Returns when all writers have finished (their journals are closed and unlocked).
    pub async fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        // Holding the opening lock keeps `get` from opening a journal behind our back.
        let _opening = self.opening.lock().await;
        let journals: Vec<Arc<Journal>> = self.open_journals();
        let mut exits = Vec::with_capacity(journals.len());
        for journal in &journals {
            let (exited, on_exit) = oneshot::channel();
            lock(&journal.slot.writer).exited = Some(exited);
            // Queued behind the appends already waiting, which are committed first. Fails
            // only if the writer is gone already, which `on_exit` reports.
            let _ = journal.send(WriterJob::Stop).await;
            exits.push(on_exit);
        }
        for exited in exits {
            if exited.await.is_err() {
                tracing::error!("a journal writer stopped without closing its journal");
            }
        }
        self.pool.stop();
        self.open.write().expect("journals lock").clear();
    }

    /// Whether [`shut_down`](Self::shut_down) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// A `Journals` dropped without [`shut_down`](Journals::shut_down) (an embedder's, a test's)
/// still ends its writer threads, which would otherwise wait for ever. A journal still held
/// elsewhere is closed: its appends not yet committed, and those sent later, fail as after
/// a shutdown (never acknowledged), instead of waiting for threads that are gone.
impl Drop for Journals {
    fn drop(&mut self) {
        let open = self.open.get_mut().unwrap_or_else(|e| e.into_inner());
        for journal in open.values() {
            let mut writer = lock(&journal.slot.writer);
            writer.queue = None;
            writer.store = None;
        }
        self.pool.stop();
    }
}

impl Journal {
    /// The journal's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The journal's active file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How far the journal is durable now.
    pub fn durable(&self) -> Durable {
        *self.watch.durable.borrow()
    }

    /// Where records are missing between the journal's segments (`None` when healthy).
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// Appends waiting in the writer's queue (not counting the group it is committing).
    pub fn queued_appends(&self) -> usize {
        self.appends.max_capacity() - self.appends.capacity()
    }

    /// The durable position and the active segment's index, for readers that follow the
    /// journal.
    pub fn watch_durable(&self) -> DurableWatch {
        self.watch.clone()
    }

    /// Appends the request's records atomically (with its key and expectation, see
    /// [`Append`]); resolves once they are fsynced, possibly in one commit with other
    /// callers' records, or at once for a duplicate key.
    pub async fn append(&self, request: Append) -> Result<Appended, ServerError> {
        self.submit(request).await?.await
    }

    /// Queues the request for the writer (waiting while the queue is full) without waiting
    /// for its commit: the [`PendingAppend`] resolves when it is durable. Requests submitted
    /// one after another are committed in that order, so they get increasing seqs.
    pub async fn submit(&self, request: Append) -> Result<PendingAppend, ServerError> {
        let (reply, result) = oneshot::channel();
        self.send(WriterJob::Append(AppendJob { request, reply }))
            .await?;
        Ok(PendingAppend(result))
    }

    /// Queues `job` for the journal's writer and schedules it on a writer thread.
    async fn send(&self, job: WriterJob) -> Result<(), ServerError> {
        self.appends
            .send(job)
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        // Counted once queued (never for a send cancelled while it waited for room), so
        // the writer is never scheduled for a job that will not come.
        self.slot.pending.fetch_add(1, Ordering::SeqCst);
        self.slot
            .last_used
            .store(self.pool.now(), Ordering::Relaxed);
        self.pool.schedule(&self.slot);
        Ok(())
    }
}

/// An append queued by [`Journal::submit`]: resolves to its outcome once committed. Dropping
/// it does not withdraw the request: the records are committed all the same.
#[derive(Debug)]
pub struct PendingAppend(oneshot::Receiver<Result<Appended, ServerError>>);

impl std::future::Future for PendingAppend {
    type Output = Result<Appended, ServerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.map_err(|_| ServerError::ShuttingDown)?)
    }
}

/// The data directory's lock file as the server took it.
#[derive(Debug, Default)]
struct DataDirCheck {
    lock_path: PathBuf,
    /// Device and inode of the lock file; `None` when not watched (embedders, tests).
    identity: Option<(u64, u64)>,
    lost: AtomicBool,
    reported: AtomicBool,
}

impl DataDirCheck {
    /// Whether the lock file's path no longer names the file the server locked. Once lost,
    /// always lost: a directory put back under the server is not the one it was writing.
    fn is_lost(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.lost.load(Ordering::Acquire) {
            return true;
        }
        let Some(identity) = self.identity else {
            return false;
        };
        let now = std::fs::metadata(&self.lock_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let lost = now != Some(identity);
        if lost {
            self.lost.store(true, Ordering::Release);
        }
        lost
    }
}

/// What a journal's writer is told: records to commit, or that the server stops.
enum WriterJob {
    Append(AppendJob),
    /// Take no more appends, commit those already queued, and close the journal.
    Stop,
}

/// The writer threads every journal shares, and the journals whose files are open.
///
/// A journal with appends waiting is *scheduled*: put once in the ready queue, from which
/// the next free thread takes it, commits one group of what is waiting (one write and one
/// fsync, at most [`MAX_GROUP_BYTES`]), replies, and puts it back at the end of the queue
/// if more came meanwhile. A journal is committed by one thread at a time (the `scheduled`
/// flag and its writer's lock), so its commits, and the replies within each, stay in the
/// order the appends were queued; many journals commit on different threads at once.
#[derive(Debug)]
struct Pool {
    ready: std::sync::Mutex<Ready>,
    wake: std::sync::Condvar,
    /// Writer threads to start (with the first journal).
    threads: usize,
    started: AtomicBool,
    /// Most journals whose store (files) is open at once (`--max-journals`).
    max_open: usize,
    /// The journals whose store is open: what `--max-journals` counts, and where the least
    /// recently used idle one is found to close when another must open.
    open_stores: std::sync::Mutex<OpenStores>,
    /// Set while more than `max_open` stores are open: the next turn closes some.
    crowded: AtomicBool,
    /// Closed journals' state, to reopen them without a full open. Locked last: nothing
    /// else is locked while it is held.
    warm: std::sync::Mutex<WarmJournals>,
    /// The clock of `Slot::last_used`.
    epoch: Instant,
}

/// The journals whose store is open, ordered by when they were last used as far as it
/// is known, so that the least recently used idle one is found in O(log n) on average,
/// whatever `--max-journals` is (a pass over every open store for each reopen cost about
/// 0.1 µs a store here: 0.5 ms at 6,000).
#[derive(Debug, Default)]
struct OpenStores {
    /// Each open store by name, with the number of the opening that put it in `by_use`.
    by_name: HashMap<String, (u64, Arc<Slot>)>,
    /// Open stores by (`last_used` when last looked at, opening). A store used since has a
    /// key older than its use: it is moved to its place when it comes first. Entries of
    /// stores closed otherwise (idle, failed, reopened since) no longer match `by_name`,
    /// and are dropped when they come first.
    by_use: BTreeMap<(u64, u64), Arc<Slot>>,
    /// Openings so far: what tells a store's current entry from those of earlier openings.
    openings: u64,
}

impl OpenStores {
    fn len(&self) -> usize {
        self.by_name.len()
    }

    fn insert(&mut self, slot: &Arc<Slot>) {
        self.openings += 1;
        let used = slot.last_used.load(Ordering::Relaxed);
        self.by_name
            .insert(slot.name.clone(), (self.openings, slot.clone()));
        self.by_use.insert((used, self.openings), slot.clone());
        // Stale entries pile up while no store has to close: dropped once they outnumber
        // the open stores, so `by_use` stays O(open stores).
        if self.by_use.len() > 2 * self.by_name.len() + 64 {
            let by_name = &self.by_name;
            self.by_use
                .retain(|(_, opening), slot| Self::current(by_name, *opening, slot));
        }
    }

    fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    fn current(by_name: &HashMap<String, (u64, Arc<Slot>)>, opening: u64, slot: &Slot) -> bool {
        by_name.get(&slot.name).is_some_and(|(o, _)| *o == opening)
    }

    /// Closes the least recently used idle store; whether there was one. The first entry
    /// is the least recently used once its key is its `last_used` (every other key is at
    /// most its store's last use, and not older than the first); a store used since its
    /// key was taken moves to its place. A busy one (appends waiting, or its writer held)
    /// is passed over, and put back after.
    fn close_least_recently_used(&mut self, pool: &Pool) -> bool {
        let mut passed_over = Vec::new();
        let mut closed = false;
        // Bounded, should stores be used faster than they are looked at.
        for _ in 0..2 * self.by_use.len() + 1 {
            let Some(((key, opening), slot)) = self.by_use.pop_first() else {
                break;
            };
            if !Self::current(&self.by_name, opening, &slot) {
                continue;
            }
            let used = slot.last_used.load(Ordering::Relaxed);
            if used > key {
                self.by_use.insert((used, opening), slot);
                continue;
            }
            // Never waits: a writer busy with it is not idle. (A writer that wants
            // `open_stores` while holding its own lock is never blocked by this.)
            let name = match slot.scheduled.load(Ordering::SeqCst) {
                true => None,
                false => slot.writer.try_lock().ok().and_then(|mut writer| {
                    writer.close_store(
                        pool,
                        "least recently used, to open another (--max-journals)",
                    )
                }),
            };
            match name {
                Some(name) => {
                    closed = self.remove(&name);
                    break;
                }
                None => passed_over.push(((key, opening), slot)),
            }
        }
        self.by_use.extend(passed_over);
        closed
    }
}

/// The state of journals closed to make room or for idleness ([`WarmJournal`]), by name,
/// within a budget of bytes: the least recently closed beyond it are dropped, and reopen
/// in full. Without it, each reopen of the 10,000-journal benchmark was a full open
/// (lock, listings, the active segment scanned and checked against its metadata, keys
/// rebuilt), about 250-300 µs there; the warm reopen takes the lock, opens two files and
/// `stat`s them and their directory (about 11 µs).
#[derive(Debug)]
struct WarmJournals {
    budget: usize,
    /// The memory of those kept, as counted against `budget`.
    bytes: usize,
    /// Counts closes: the order in which they were kept.
    closes: u64,
    by_name: HashMap<String, (u64, WarmJournal)>,
    /// Names by their close, least recent first: the next to drop.
    order: BTreeMap<u64, String>,
}

impl WarmJournals {
    /// What one kept journal costs beyond its own state: its name twice (in both maps)
    /// and the maps' entries.
    const ENTRY_BYTES: usize = 128;

    fn cost(name: &str, warm: &WarmJournal) -> usize {
        warm.memory_bytes() + 2 * name.len() + Self::ENTRY_BYTES
    }

    /// Keeps `warm`, dropping the least recently closed until all fit in the budget.
    fn keep(&mut self, name: &str, warm: WarmJournal) {
        self.take(name);
        let cost = Self::cost(name, &warm);
        if cost > self.budget {
            return; // larger than the whole budget: reopens in full
        }
        while self.bytes + cost > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, dropped)) = self.by_name.remove(&oldest) {
                self.bytes -= Self::cost(&oldest, &dropped);
            }
        }
        self.closes += 1;
        self.bytes += cost;
        self.order.insert(self.closes, name.to_owned());
        self.by_name.insert(name.to_owned(), (self.closes, warm));
    }

    /// The kept state of `name`, no longer kept.
    fn take(&mut self, name: &str) -> Option<WarmJournal> {
        let (closed, warm) = self.by_name.remove(name)?;
        self.order.remove(&closed);
        self.bytes -= Self::cost(name, &warm);
        Some(warm)
    }
}

#[derive(Debug, Default)]
struct Ready {
    queue: VecDeque<Arc<Slot>>,
    stop: bool,
}

/// One journal's writer as the pool sees it.
#[derive(Debug)]
struct Slot {
    name: String,
    /// In the ready queue or being committed: never both twice, so one thread at a time.
    scheduled: AtomicBool,
    /// Jobs sent and not yet taken by the writer (briefly -1 when the writer takes a job
    /// before its sender counts it).
    pending: AtomicI64,
    /// When appends last came (nanoseconds since `Pool::epoch`), for closing idle stores.
    last_used: AtomicU64,
    writer: std::sync::Mutex<Writer>,
}

impl Pool {
    fn new(threads: usize, max_open: usize, warm_budget: usize) -> Pool {
        Pool {
            ready: std::sync::Mutex::new(Ready::default()),
            wake: std::sync::Condvar::new(),
            threads: threads.max(1),
            started: AtomicBool::new(false),
            max_open,
            open_stores: std::sync::Mutex::new(OpenStores::default()),
            crowded: AtomicBool::new(false),
            warm: std::sync::Mutex::new(WarmJournals {
                budget: warm_budget,
                bytes: 0,
                closes: 0,
                by_name: HashMap::new(),
                order: BTreeMap::new(),
            }),
            epoch: Instant::now(),
        }
    }

    fn warm_budget(&self) -> usize {
        lock(&self.warm).budget
    }

    /// Keeps the state of `name`, just closed, for its next open.
    fn keep_warm(&self, name: &str, warm: WarmJournal) {
        lock(&self.warm).keep(name, warm);
    }

    /// Opens the store of journal `name` at `path`: from its kept state if there is one
    /// (checked against its files, see [`WarmJournal::blocking_reopen`]), else in full. How,
    /// for `ministore_journal_opens_total`: `warm`, `changed` (its files changed while it
    /// was closed: opened in full) or `full` (no state kept). Blocks: on a writer thread or
    /// the blocking pool.
    fn open_store(
        &self,
        name: &str,
        path: &Path,
        options: &MiniStoreOptions,
    ) -> Result<(MiniStore, &'static str), MiniStoreError> {
        let kept = lock(&self.warm).take(name);
        match kept {
            Some(warm) => {
                let reopened = warm.blocking_reopen()?;
                let how = match reopened.changed {
                    None => "warm",
                    Some(_) => "changed",
                };
                Ok((reopened.store, how))
            }
            None => Ok((options.clone().blocking_open(path)?, "full")),
        }
    }

    /// Starts the writer threads, once.
    fn start(self: &Arc<Self>) -> Result<(), ServerError> {
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        for n in 0..self.threads {
            let pool = self.clone();
            std::thread::Builder::new()
                .name(format!("writer-{n}"))
                // Its own frames are shallow: the store's open (on a reopen) runs on the
                // blocking pool, and a commit is a write and an fsync.
                .stack_size(256 * 1024)
                .spawn(move || pool.work())
                .map_err(|e| ServerError::Startup {
                    op: "starting the journal writer thread",
                    path: format!("writer-{n}"),
                    source: Arc::new(e),
                })?;
        }
        Ok(())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Puts `slot` in the ready queue unless it is there or being committed already.
    fn schedule(&self, slot: &Arc<Slot>) {
        // Pairs with the fence in `work`: either the writer sees this job counted in
        // `pending` after it cleared `scheduled`, or this sees `scheduled` cleared and
        // queues the journal; a job is never left waiting with nobody to take it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if slot.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.ready).queue.push_back(slot.clone());
        self.wake.notify_one();
    }

    /// A writer thread: takes scheduled journals in turn until the pool stops.
    fn work(&self) {
        loop {
            let slot = {
                let mut ready = lock(&self.ready);
                loop {
                    if let Some(slot) = ready.queue.pop_front() {
                        break slot;
                    }
                    if ready.stop {
                        return;
                    }
                    ready = self.wake.wait(ready).unwrap_or_else(|e| e.into_inner());
                }
            };
            let turn = lock(&slot.writer).turn(self, &slot);
            slot.scheduled.store(false, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            let more = match turn {
                Turn::Closed => false,
                Turn::More => true,
                Turn::Done => slot.pending.load(Ordering::SeqCst) > 0,
            };
            if more {
                // More came during the commit: back of the queue, so every journal with
                // appends waiting gets its turn.
                self.schedule(&slot);
            }
            self.make_room();
        }
    }

    /// Lets the writer threads exit once the ready queue is empty.
    fn stop(&self) {
        lock(&self.ready).stop = true;
        self.wake.notify_all();
    }

    /// Counts `slot` among the open stores, closing the least recently used idle store
    /// first when `max_open + beyond` are open. A store is idle when no append waits for it
    /// and no thread commits it; if none is, the journal cannot open now: RESOURCE_EXHAUSTED.
    ///
    /// A writer's turn reserves with `beyond` = the number of writer threads and closes a
    /// store only after it has replied ([`make_room`](Self::make_room)): closing one (two
    /// `fstat`s, three `close`s, its state kept) is then off the append's latency. So at
    /// most `max_open` + one per writer thread are open at any moment.
    fn reserve(&self, slot: &Arc<Slot>, beyond: usize) -> Result<(), ServerError> {
        let mut open = lock(&self.open_stores);
        while open.len() >= self.max_open.saturating_add(beyond) {
            if !open.close_least_recently_used(self) {
                return Err(ServerError::LimitReached(format!(
                    "{} journals are open and all are busy, the most this server allows (--max-journals)",
                    self.max_open
                )));
            }
        }
        open.insert(slot);
        if open.len() > self.max_open {
            self.crowded.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Closes the least recently used idle stores while more than `max_open` are open
    /// (after a turn that reserved beyond it). Those left, if all others are busy, are
    /// closed by a later turn.
    fn make_room(&self) {
        if !self.crowded.load(Ordering::Acquire) {
            return;
        }
        let mut open = lock(&self.open_stores);
        while open.len() > self.max_open && open.close_least_recently_used(self) {}
        self.crowded
            .store(open.len() > self.max_open, Ordering::Release);
    }

    /// Stops counting `name` among the open stores (its store was closed).
    fn release(&self, name: &str) {
        lock(&self.open_stores).remove(name);
    }

    /// Closes every store idle for `idle` or longer; how many.
    fn close_idle(&self, idle: Duration) -> usize {
        let cutoff = self.now().saturating_sub(idle.as_nanos() as u64);
        let mut open = lock(&self.open_stores);
        let idle: Vec<Arc<Slot>> = open
            .by_name
            .values()
            .map(|(_, slot)| slot)
            .filter(|s| {
                !s.scheduled.load(Ordering::SeqCst) && s.last_used.load(Ordering::Relaxed) < cutoff
            })
            .cloned()
            .collect();
        let mut closed = 0;
        for slot in idle {
            if let Ok(mut writer) = slot.writer.try_lock()
                && writer.close_store(self, "idle").is_some()
            {
                open.remove(&slot.name);
                closed += 1;
            }
        }
        closed
    }

    /// How many stores are open.
    fn open_stores(&self) -> usize {
        lock(&self.open_stores).len()
    }
}

/// What a writer's turn left.
enum Turn {
    /// The queue was emptied; appends sent since (`Slot::pending`) need another turn.
    Done,
    /// The group was full: the journal needs another turn.
    More,
    /// The journal is closed for good (after `Stop`, with what was queued committed).
    Closed,
}

/// A journal's writer: its queue, its store while open, and its durable watermark. Runs
/// on whichever pool thread takes the journal; it used to have its own thread, which cost
/// a thread (and its stack) per open journal.
#[derive(Debug)]
struct Writer {
    name: String,
    path: PathBuf,
    /// The server's options, with the journal's own index handle.
    options: MiniStoreOptions,
    /// `None` while the journal is closed (idle, or after a failure that needs a reopen):
    /// the next commit opens it again.
    store: Option<MiniStore>,
    /// Whether it is counted in `Pool::open_stores`: from opening the store until it is
    /// closed as idle (a store dropped after a failure stays counted until reopened).
    counted: bool,
    data_dir: PathBuf,
    /// Never reopen into a data directory that is not ours any more: open would create
    /// the journal afresh and hand out its sequence numbers again.
    data_dir_check: Arc<DataDirCheck>,
    /// `None` once the journal is closed for good (shutdown).
    queue: Option<mpsc::Receiver<WriterJob>>,
    /// Set at `Stop`: commit what is queued, then close.
    stopping: bool,
    durable: watch::Sender<Durable>,
    exited: Option<oneshot::Sender<()>>,
    metrics: Metrics,
}

impl Writer {
    /// One turn: takes the jobs waiting in the queue (up to [`MAX_GROUP_BYTES`]), commits
    /// them with one write and one fsync, publishes the new durable position, then tells
    /// each caller its range.
    fn turn(&mut self, pool: &Pool, slot: &Arc<Slot>) -> Turn {
        let Some(queue) = self.queue.as_mut() else {
            return Turn::Closed;
        };
        let mut jobs: Vec<AppendJob> = Vec::new();
        let (mut bytes, mut taken) = (0usize, 0i64);
        // Whether the queue was found empty (else the group is full and more may wait).
        let mut drained = false;
        loop {
            if bytes >= MAX_GROUP_BYTES {
                break;
            }
            let Ok(job) = queue.try_recv() else {
                drained = true;
                break;
            };
            taken += 1;
            match job {
                WriterJob::Append(job) => {
                    bytes += job
                        .request
                        .lines
                        .iter()
                        .map(|l| l.as_bytes().len())
                        .sum::<usize>();
                    jobs.push(job);
                }
                // Refuse new appends (their senders see the queue closed); those already
                // queued are still taken, and committed: in-flight appends finish.
                WriterJob::Stop => {
                    queue.close();
                    self.stopping = true;
                }
            }
        }
        slot.pending.fetch_sub(taken, Ordering::SeqCst);
        if !jobs.is_empty() {
            self.commit_group(pool, slot, jobs);
        }
        if self.stopping && drained {
            // Dropping the queue drops any job a sender pushed after the close was seen
            // (its caller is told the server is shutting down), and nothing is left to
            // commit: close the store, releasing its lock, before reporting.
            self.queue = None;
            if self.counted {
                pool.release(&self.name);
                self.counted = false;
            }
            self.store = None;
            tracing::debug!(journal = %self.name, "writer closed");
            if let Some(exited) = self.exited.take() {
                let _ = exited.send(());
            }
            return Turn::Closed;
        }
        match drained {
            true => Turn::Done,
            false => Turn::More,
        }
    }

    /// Commits one group and replies to each of its callers.
    fn commit_group(&mut self, pool: &Pool, slot: &Arc<Slot>, mut jobs: Vec<AppendJob>) {
        let requests: Vec<Append> = jobs
            .iter_mut()
            .map(|j| std::mem::take(&mut j.request))
            .collect();
        let bytes = requests
            .iter()
            .flat_map(|r| &r.lines)
            .map(|l| l.as_bytes().len())
            .sum();
        let records = requests.iter().map(|r| r.lines.len()).sum();
        let started = Instant::now();
        let result = self.commit(pool, slot, &requests);
        let (took, ok) = (started.elapsed(), result.is_ok());
        self.metrics.committed(took, records, bytes, ok);
        // Publish before replying: a caller told "seq N" can read N back at once.
        if let Some(store) = &self.store {
            self.durable
                .send_if_modified(|d| std::mem::replace(d, store.durable()) != *d);
        }
        match result {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let reply = result.map_err(|e| ServerError::store(&self.name, e));
                    // A caller that went away still had its records committed.
                    let _ = job.reply.send(reply);
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Closes the store of an idle journal (its files and lock; the queue and the durable
    /// watermark stay, so followers notice nothing and the next append reopens it), keeping
    /// its state in `pool`'s warm journals when it can. The journal's name if it was open.
    fn close_store(&mut self, pool: &Pool, why: &str) -> Option<String> {
        if !self.counted || self.queue.is_none() {
            return None;
        }
        self.counted = false;
        // Every acknowledged record was fsynced by its commit: closing loses nothing, and
        // syncs nothing (without preallocation there are no zeros to cut).
        if let Some(warm) = self.store.take().and_then(MiniStore::blocking_close_warm) {
            pool.keep_warm(&self.name, warm);
        }
        tracing::debug!(journal = %self.name, reason = why, "closed journal");
        Some(self.name.clone())
    }

    /// Commits `requests` with one write and one fsync per file; each request's own
    /// outcome (written, duplicate, refused) in order. A closed journal is opened first
    /// (counted against `--max-journals`). A store poisoned by an earlier failure (failed
    /// fsync or rotation) is reopened first, which re-reads and repairs its tail, so the
    /// server recovers once the fault is gone. The poisoned attempt wrote nothing, so
    /// retrying it once on the reopened store is safe.
    fn commit(
        &mut self,
        pool: &Pool,
        slot: &Arc<Slot>,
        requests: &[Append],
    ) -> Result<Vec<Result<Appended, MiniStoreError>>, ServerError> {
        let name = self.name.as_str();
        for attempt in 0..2 {
            if self.store.is_none() {
                if self.data_dir_check.is_lost() {
                    return Err(ServerError::DataDirLost {
                        path: self.data_dir.clone(),
                    });
                }
                let reopening_idle = !self.counted;
                if reopening_idle {
                    pool.reserve(slot, pool.threads)?;
                    self.counted = true;
                }
                // On this writer thread: it does blocking I/O anyway.
                match pool.open_store(name, &self.path, &self.options) {
                    Ok((reopened, how)) => {
                        self.metrics.journal_opened(how);
                        if reopening_idle {
                            tracing::debug!(
                                journal = name,
                                last_seq = reopened.last_seq(),
                                "reopened idle journal"
                            );
                        } else {
                            tracing::warn!(
                                journal = name,
                                last_seq = reopened.last_seq(),
                                "reopened journal after a failure"
                            );
                        }
                        // What the files hold is the truth: a closed journal's files are
                        // not locked, so say at once where they end.
                        self.durable
                            .send_if_modified(|d| std::mem::replace(d, reopened.durable()) != *d);
                        self.store = Some(reopened);
                    }
                    Err(e) => {
                        if reopening_idle {
                            pool.release(name);
                            self.counted = false;
                        }
                        return Err(ServerError::store(name, e));
                    }
                }
            }
            let store = self.store.as_mut().expect("opened above");
            match store.blocking_append_requests(requests) {
                Err(MiniStoreError::Poisoned { reason, .. }) if attempt == 0 => {
                    tracing::warn!(journal = name, %reason, "journal writer poisoned; reopening");
                    self.store = None;
                }
                Err(e) => {
                    tracing::warn!(journal = name, error = %e, requests = requests.len(), "append failed");
                    // A file deleted under the writer usually means the whole directory
                    // went: say so at once, to this caller and every RPC after it.
                    if self.data_dir_check.is_lost() {
                        return Err(ServerError::DataDirLost {
                            path: self.data_dir.clone(),
                        });
                    }
                    return Err(ServerError::store(name, e));
                }
                Ok(results) => return Ok(results),
            }
        }
        unreachable!("the second attempt returns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        let long = "a".repeat(65);
        for name in [
            "..",
            ".",
            "a/b",
            "/abs",
            "a\\b",
            "a\0b",
            "caf\u{e9}",
            "a b",
            long.as_str(),
            "\u{2215}etc",
            "\u{ff0e}\u{ff0e}",
        ] {
            assert!(validate_name(name).is_err(), "{name:?} was accepted");
        }
        assert_eq!(validate_name(&"a".repeat(64)).unwrap().len(), 64);
    }
}
