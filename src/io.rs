//! The journal writer's file operations, in one place, so that tests can make each of them
//! fail: a write, a short write, an fsync, a truncate, a rename, a directory fsync, a file
//! creation or deletion (as okaywal does with its file manager), and the reads of the
//! store's own readers. Production code runs them
//! as they are; with a [`FaultInjector`] (see
//! [`MiniStoreOptions::inject_faults`](crate::MiniStoreOptions::inject_faults)) a test
//! decides, call by call, which fail and how.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A file operation of the journal writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileOp {
    /// `pwrite` of records (or of the zeros written ahead of them).
    Write,
    /// `fdatasync` or `fsync` of a journal file.
    Fsync,
    /// `ftruncate` of a journal file.
    Truncate,
    /// `rename` of the active segment at rotation.
    Rename,
    /// `fsync` of the journal's directory.
    SyncDir,
    /// Creation of a new segment file.
    Create,
    /// Deletion of a segment by retention.
    Delete,
    /// `pread` of records by a reader of the store ([`MiniStore::reader`](crate::MiniStore::reader)).
    Read,
}

/// What a faulted operation does instead of its work.
#[derive(Debug)]
pub enum Fault {
    /// Fails with this error, having done nothing.
    Fail(std::io::Error),
    /// For [`FileOp::Write`]: writes only the first `written` bytes, then fails with
    /// `error` (a disk that fills up in the middle of a write).
    Short {
        /// Bytes written before the failure.
        written: usize,
        /// The failure.
        error: std::io::Error,
    },
}

/// Decides, for each operation, whether it fails. By default (no injector) none does.
///
/// ```
/// use std::path::Path;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use ministore::io::{Fault, FaultInjector, FileOp};
///
/// /// Fails the next fsync, once.
/// #[derive(Debug, Default)]
/// struct FailNextFsync(AtomicBool);
///
/// impl FaultInjector for FailNextFsync {
///     fn fault(&self, op: FileOp, _path: &Path) -> Option<Fault> {
///         (op == FileOp::Fsync && !self.0.swap(true, Ordering::SeqCst))
///             .then(|| Fault::Fail(std::io::Error::from_raw_os_error(5)))
///     }
/// }
/// ```
pub trait FaultInjector: Send + Sync + std::fmt::Debug {
    /// The fault for `op` on `path` now, or `None` to let it run.
    fn fault(&self, op: FileOp, path: &Path) -> Option<Fault>;
}

/// The injector carried by the options: compared equal whatever it holds, so that options
/// stay comparable.
#[derive(Debug, Clone, Default)]
pub struct Faults(Option<Arc<dyn FaultInjector>>);

impl PartialEq for Faults {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Faults {}

impl Faults {
    pub(crate) fn new(injector: Arc<dyn FaultInjector>) -> Self {
        Faults(Some(injector))
    }

    fn check(&self, op: FileOp, path: &Path) -> Option<Fault> {
        self.0.as_ref().and_then(|i| i.fault(op, path))
    }

    fn run<T>(
        &self,
        op: FileOp,
        path: &Path,
        work: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        match self.check(op, path) {
            Some(Fault::Fail(e) | Fault::Short { error: e, .. }) => Err(e),
            None => work(),
        }
    }

    /// `pwrite`s all of `buf` at `offset`.
    pub(crate) fn write_all_at(
        &self,
        file: &File,
        path: &Path,
        buf: &[u8],
        offset: u64,
    ) -> std::io::Result<()> {
        match self.check(FileOp::Write, path) {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Short { written, error }) => {
                file.write_all_at(&buf[..written.min(buf.len())], offset)?;
                Err(error)
            }
            None => file.write_all_at(buf, offset),
        }
    }

    /// `fdatasync`.
    pub(crate) fn sync_data(&self, file: &File, path: &Path) -> std::io::Result<()> {
        self.run(FileOp::Fsync, path, || file.sync_data())
    }

    /// `ftruncate` to `len`, then `fsync` (the new size is metadata).
    pub(crate) fn truncate_durably(
        &self,
        file: &File,
        path: &Path,
        len: u64,
    ) -> std::io::Result<()> {
        self.run(FileOp::Truncate, path, || file.set_len(len))?;
        self.run(FileOp::Fsync, path, || file.sync_all())
    }

    /// `rename`.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.run(FileOp::Rename, from, || std::fs::rename(from, to))
    }

    /// `fsync` of a directory.
    pub(crate) fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.run(FileOp::SyncDir, dir, || File::open(dir)?.sync_all())
    }

    /// Whether creating a file at `path` is to fail (the creation itself is
    /// `segment::write_new_file`'s).
    pub(crate) fn check_create(&self, path: &Path) -> std::io::Result<()> {
        self.run(FileOp::Create, path, || Ok(()))
    }

    /// `pread` into `buf` at `offset` (a reader's: a fault fails it, having read nothing).
    pub(crate) fn read_at(
        &self,
        file: &File,
        path: &Path,
        buf: &mut [u8],
        offset: u64,
    ) -> std::io::Result<usize> {
        self.run(FileOp::Read, path, || file.read_at(buf, offset))
    }

    /// Deletes a file.
    pub(crate) fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.run(FileOp::Delete, path, || std::fs::remove_file(path))
    }
}
