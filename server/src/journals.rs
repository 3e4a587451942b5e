//! The open journals: name validation, one writer thread per journal that commits every
//! waiting append with one write and one fsync (group commit), and the durable watermark
//! that readers follow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ministore::{Append, Appended, Durable, MiniStore, MiniStoreError, MiniStoreOptions};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::error::ServerError;
use crate::metrics::Metrics;

/// The name used when a request leaves `journal` empty (the wire contract's).
pub use ministore::proto::DEFAULT_JOURNAL;

/// Longest journal name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Appends waiting for a journal's writer; beyond this, callers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// Most bytes committed by one group commit: bounds the writer's memory and latency.
const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

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
    writers: Mutex<Vec<WriterHandle>>,
    metrics: Metrics,
}

/// One open journal: where it lives, its writer's queue, and how far it is durable.
#[derive(Debug)]
pub struct Journal {
    name: String,
    path: PathBuf,
    appends: mpsc::Sender<WriterJob>,
    durable: watch::Receiver<Durable>,
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
            writers: Mutex::new(Vec::new()),
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

    /// At most `max` journals open at once; opening one more is RESOURCE_EXHAUSTED.
    pub fn with_max_open(mut self, max: usize) -> Self {
        self.max_open = max;
        self
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
        if self.open.read().expect("journals lock").len() >= self.max_open {
            return Err(ServerError::LimitReached(format!(
                "{} journals are open, the most this server allows (--max-journals)",
                self.max_open
            )));
        }
        self.refuse_symlinks_out(&dir)?;
        let path = dir.join("journal.jsonl");
        let store = self
            .options
            .clone()
            .open(&path)
            .await
            .map_err(|e| ServerError::store(name, e))?;
        let (appends, queue) = mpsc::channel(QUEUE_DEPTH);
        // The server's own watch, fed by the writer: it outlives a reopened store.
        let (durable_tx, durable) = watch::channel(store.durable());
        let journal = Arc::new(Journal {
            name: name.to_owned(),
            path: path.clone(),
            appends: appends.clone(),
            durable,
            damage: store.damage().map(str::to_owned),
        });
        let writer = Writer {
            name: name.to_owned(),
            path: path.clone(),
            options: self.options.clone(),
            store: Some(store),
            data_dir: self.data_dir.clone(),
            data_dir_check: self.data_dir_check.clone(),
            runtime: tokio::runtime::Handle::current(),
            queue,
            durable: durable_tx,
            metrics: self.metrics.clone(),
        };
        self.writers.lock().await.push(writer.spawn(appends)?);
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
        let writers: Vec<WriterHandle> = self.writers.lock().await.drain(..).collect();
        for writer in &writers {
            // Queued behind the appends already waiting, which are committed first. Fails
            // only if the writer is gone already, which `exited` reports.
            let _ = writer.jobs.send(WriterJob::Stop).await;
        }
        for writer in writers {
            if writer.exited.await.is_err() {
                tracing::error!("a journal writer thread failed");
            }
        }
        self.open.write().expect("journals lock").clear();
    }

    /// Whether [`shut_down`](Self::shut_down) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
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
        *self.durable.borrow()
    }

    /// Where records are missing between the journal's segments (`None` when healthy).
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// Appends waiting in the writer's queue (not counting the group it is committing).
    pub fn queued_appends(&self) -> usize {
        self.appends.max_capacity() - self.appends.capacity()
    }

    /// A receiver of the durable position, for readers that follow the journal.
    pub fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
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
        self.appends
            .send(WriterJob::Append(AppendJob { request, reply }))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        Ok(PendingAppend(result))
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

/// What a journal's writer thread is told: records to commit, or that the server stops.
enum WriterJob {
    Append(AppendJob),
    /// Take no more appends, commit those already queued, and exit.
    Stop,
}

/// The running writer thread of a journal, as `shut_down` needs it.
struct WriterHandle {
    jobs: mpsc::Sender<WriterJob>,
    /// Resolves (with an error) when the thread has exited and closed its store.
    exited: oneshot::Receiver<()>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterHandle")
    }
}

/// A journal's writer: its own OS thread, so a commit goes handler -> writer -> handler.
/// On a tokio task it went handler -> writer task -> blocking pool -> writer task ->
/// handler: two more thread hand-offs per commit, the larger part of an append's latency
/// once the fsync is done.
struct Writer {
    name: String,
    path: PathBuf,
    options: MiniStoreOptions,
    /// `None` after a failure that needs a reopen.
    store: Option<MiniStore>,
    data_dir: PathBuf,
    /// Never reopen into a data directory that is not ours any more: open would create
    /// the journal afresh and hand out its sequence numbers again.
    data_dir_check: Arc<DataDirCheck>,
    /// The runtime the server runs on, for the async `open` of a reopen.
    runtime: tokio::runtime::Handle,
    queue: mpsc::Receiver<WriterJob>,
    durable: watch::Sender<Durable>,
    metrics: Metrics,
}

impl Writer {
    /// Starts the writer thread; its handle, and the queue's sending side for `Journal`.
    fn spawn(mut self, jobs: mpsc::Sender<WriterJob>) -> Result<WriterHandle, ServerError> {
        let (exited_tx, exited) = oneshot::channel();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("writer:{name}"))
            // Its own frames are shallow: the store's open (on a reopen) runs on the
            // blocking pool, and a commit is a write and an fsync.
            .stack_size(256 * 1024)
            .spawn(move || {
                self.run();
                drop(self); // closes the store, releasing its lock, before we report
                let _ = exited_tx.send(());
            })
            .map_err(|e| ServerError::Startup {
                op: "starting the writer thread of journal",
                path: name,
                source: Arc::new(e),
            })?;
        Ok(WriterHandle { jobs, exited })
    }

    /// Takes every job waiting in the queue, commits them with one write and one fsync,
    /// publishes the new durable position, then tells each caller its range. Returns at
    /// `Stop` once what was queued before it is committed.
    fn run(&mut self) {
        let mut jobs: Vec<AppendJob> = Vec::new();
        let mut requests: Vec<Append> = Vec::new();
        // Takes one job into the group; the bytes it adds.
        let take = |job, jobs: &mut Vec<AppendJob>, queue: &mut mpsc::Receiver<_>| match job {
            WriterJob::Append(job) => {
                let bytes = job.request.lines.iter().map(|l| l.as_bytes().len()).sum();
                jobs.push(job);
                bytes
            }
            // Refuse new appends (their senders see the queue closed); those already
            // queued are still received, and committed: in-flight appends finish.
            WriterJob::Stop => {
                queue.close();
                0
            }
        };
        while let Some(job) = self.queue.blocking_recv() {
            let mut bytes: usize = take(job, &mut jobs, &mut self.queue);
            while bytes < MAX_GROUP_BYTES {
                let Ok(job) = self.queue.try_recv() else {
                    break;
                };
                bytes += take(job, &mut jobs, &mut self.queue);
            }
            if jobs.is_empty() {
                continue;
            }
            requests.extend(jobs.iter_mut().map(|j| std::mem::take(&mut j.request)));
            let records = requests.iter().map(|r| r.lines.len()).sum();
            let started = std::time::Instant::now();
            let result = self.commit(&requests);
            let (took, ok) = (started.elapsed(), result.is_ok());
            self.metrics.committed(took, records, bytes, ok);
            requests.clear();
            // Publish before replying: a caller told "seq N" can read N back at once.
            if let Some(store) = &self.store {
                self.durable
                    .send_if_modified(|d| std::mem::replace(d, store.durable()) != *d);
            }
            match result {
                Ok(results) => {
                    for (job, result) in jobs.drain(..).zip(results) {
                        let reply = result.map_err(|e| ServerError::store(&self.name, e));
                        // A caller that went away still had its records committed.
                        let _ = job.reply.send(reply);
                    }
                }
                Err(e) => {
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        tracing::debug!(journal = %self.name, "writer closed");
    }

    /// Commits `requests` with one write and one fsync per file; each request's own
    /// outcome (written, duplicate, refused) in order. A store poisoned by an earlier
    /// failure (failed fsync or rotation) is reopened first, which re-reads and repairs
    /// its tail, so the server recovers once the fault is gone. The poisoned attempt wrote
    /// nothing, so retrying it once on the reopened store is safe.
    fn commit(
        &mut self,
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
                match self.runtime.block_on(self.options.clone().open(&self.path)) {
                    Ok(reopened) => {
                        tracing::warn!(
                            journal = name,
                            last_seq = reopened.last_seq(),
                            "reopened journal after a failure"
                        );
                        self.store = Some(reopened);
                    }
                    Err(e) => return Err(ServerError::store(name, e)),
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
