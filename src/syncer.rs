//! A helper thread that fdatasyncs the metadata file while the writer fdatasyncs the
//! segment, so that a commit waits for the slower of the two flushes instead of their sum.
//!
//! On ext4 each fdatasync of a file that grew commits the journal (jbd2) and waits for it;
//! two in a row cost two commits. Issued together, the second usually joins the first's
//! journal transaction. The benchmark's `keys` section shows both raw rates beside ours.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::io::Faults;

/// One fdatasync to run: the file, its path (for fault injection and errors), the faults.
type Job = (Arc<File>, PathBuf, Faults);

/// The thread and its two channels; the thread ends when this is dropped.
#[derive(Debug)]
pub(crate) struct Syncer {
    jobs: SyncSender<Job>,
    done: Receiver<std::io::Result<()>>,
}

impl Syncer {
    /// Starts the thread. Fails only if the OS refuses a thread.
    pub(crate) fn start(name: &str) -> std::io::Result<Syncer> {
        let (jobs, incoming) = sync_channel::<Job>(1);
        let (report, done) = sync_channel(1);
        std::thread::Builder::new()
            .name(format!("fsync:{name}"))
            .stack_size(64 * 1024)
            .spawn(move || {
                // Ends when the writer drops its sender.
                while let Ok((file, path, faults)) = incoming.recv() {
                    let result = faults.sync_data(&file, &path);
                    if report.send(result).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer { jobs, done })
    }

    /// Starts an fdatasync of `file`; [`wait`](Self::wait) for its result before the next.
    pub(crate) fn begin(&self, file: Arc<File>, path: PathBuf, faults: Faults) {
        // The thread only stops when `self` is dropped, so the send succeeds; if it ever
        // did not, `wait` reports it.
        let _ = self.jobs.send((file, path, faults));
    }

    /// The result of the fdatasync begun last.
    pub(crate) fn wait(&self) -> std::io::Result<()> {
        self.done.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the fsync helper thread is gone; nothing after this is trusted",
            ))
        })
    }
}
