//! A shared, bounded pool of helper threads that fdatasync a commit's metadata file while
//! its writer fdatasyncs the segment, so that a commit waits for the slower of the two
//! flushes instead of their sum.
//!
//! On ext4 each fdatasync of a file that grew commits the journal (jbd2) and waits for it;
//! two in a row cost two commits. Issued together, the second usually joins the first's
//! journal transaction. The benchmark's `keys` section shows both raw rates beside ours.
//!
//! One pool serves every open store of the process (it used to be one thread per store,
//! which cost a thread per open journal). A flush is handed to an idle helper, never queued
//! behind another commit's flush, so the overlap always holds; a helper is started when
//! none is idle, up to [`MAX_HELPERS`], and one idle for [`IDLE`] exits. So the process
//! has at most as many helpers as commits ever ran at once (in ministore-server, its
//! writer threads), and none when nothing is written. Past the cap, the writer flushes
//! the metadata itself after the segment: slower, never less durable.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::io::Faults;

/// Most helper threads in the process.
pub(crate) const MAX_HELPERS: usize = 64;
/// How long a helper waits for work before it exits.
const IDLE: Duration = Duration::from_secs(10);

/// One fdatasync to run: the file, its path (for fault injection and errors), the
/// faults, and where to report the result.
struct Job {
    file: Arc<File>,
    path: PathBuf,
    faults: Faults,
    done: SyncSender<std::io::Result<()>>,
}

/// A helper's mailbox: the job handed to it, if any.
#[derive(Default)]
struct Helper {
    job: Mutex<Option<Job>>,
    wake: Condvar,
}

#[derive(Default)]
struct Pool {
    /// Helpers waiting for a job (the most recently idle last, so it gets the next one
    /// while its stack is warm, and the others time out), and how many helpers exist.
    idle: Mutex<(Vec<Arc<Helper>>, usize)>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// An fdatasync begun on a helper; [`wait`](Self::wait) for its result.
#[derive(Debug)]
pub(crate) struct Flush {
    done: Receiver<std::io::Result<()>>,
}

/// Starts an fdatasync of `file` on a helper thread, or returns `None` when every helper is
/// busy and no more may be started: the caller then flushes the file itself.
pub(crate) fn begin(file: Arc<File>, path: PathBuf, faults: Faults) -> Option<Flush> {
    let (done, result) = sync_channel(1);
    let job = Job {
        file,
        path,
        faults,
        done,
    };
    let pool = pool();
    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(helper) = idle.0.pop() {
        drop(idle);
        *helper.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        helper.wake.notify_one();
        return Some(Flush { done: result });
    }
    if idle.1 >= MAX_HELPERS {
        return None;
    }
    idle.1 += 1;
    drop(idle);
    let helper = Arc::new(Helper {
        job: Mutex::new(Some(job)),
        wake: Condvar::new(),
    });
    let spawned = std::thread::Builder::new()
        .name("ministore-fsync".into())
        .stack_size(64 * 1024)
        .spawn(move || run(pool, helper));
    match spawned {
        Ok(_) => Some(Flush { done: result }),
        Err(e) => {
            // The job went down with the closure; the caller flushes the file itself.
            tracing::warn!(error = %e, "no thread to fsync the metadata file beside the segment; fsyncing one after the other");
            pool.idle.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
            None
        }
    }
}

/// A helper: runs the job it was handed, then offers itself to the pool again, until it has
/// had nothing to do for [`IDLE`].
fn run(pool: &'static Pool, helper: Arc<Helper>) {
    loop {
        let job = helper.job.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(job) = job {
            let result = job.faults.sync_data(&job.file, &job.path);
            // Idle again before the writer hears the result, so that its next commit
            // finds this helper instead of starting another: the helpers never outnumber
            // the commits that ran at once.
            pool.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(helper.clone());
            // The writer always waits for it; if it is gone, nobody needs the result.
            let _ = job.done.send(result);
        } else {
            pool.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(helper.clone());
        }
        let mut job = helper.job.lock().unwrap_or_else(|e| e.into_inner());
        while job.is_none() {
            let (next, timeout) = helper
                .wake
                .wait_timeout(job, IDLE)
                .unwrap_or_else(|e| e.into_inner());
            job = next;
            if job.is_none() && timeout.timed_out() {
                drop(job);
                // Leave the pool, unless `begin` took this helper from it meanwhile: then
                // its job is on the way (it is put in the mailbox after the pool's lock is
                // released), and this helper must run it.
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(at) = idle.0.iter().position(|h| Arc::ptr_eq(h, &helper)) {
                    idle.0.remove(at);
                    idle.1 -= 1;
                    return;
                }
                drop(idle);
                job = helper.job.lock().unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

impl Flush {
    /// The result of the fdatasync.
    pub(crate) fn wait(self) -> std::io::Result<()> {
        self.done.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the fsync helper thread is gone; nothing after this is trusted",
            ))
        })
    }
}
