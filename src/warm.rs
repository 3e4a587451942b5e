//! [`WarmJournal`]: a journal closed with what its writer knew kept in memory, so that it
//! reopens by opening its files and checking them, instead of reading and recovering them
//! again.
//!
//! A full open lists the directory, reads every segment's header, scans the active
//! segment, reads its metadata file and checks each record's CRC against it, and rebuilds
//! the keys from every metadata file. None of it can tell anything new about files that
//! nobody changed since this process closed them. What is checked instead, after the lock
//! is taken again:
//! - the active segment and its metadata file are the same files (device and inode), of
//!   the same length, and with the same change time (`ctime`, which every write,
//!   truncation or rename of a file moves, and which no one can set back);
//! - the journal's segments and metadata files are the same names as when it closed: its
//!   directory has the same identity and change time (which every file created, deleted
//!   or renamed in it moves), or, when that cannot tell (it changed, or it had changed
//!   too shortly before the close, see [`SETTLED`]), its listing has the same names.
//!
//! Anything else, or any error on the way, and the reopen is the full open, which repairs
//! and recovers what it finds as after a restart: another process that appended, rotated or
//! cut the files while the journal was closed is never missed. What the checks cannot see
//! is an edit that keeps a file's identity, length and change time, i.e. one made within
//! the file system's timestamp step (a few ms on ext4) of our own last change and of
//! exactly the same length: no writer of ours does that.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::MiniStore;
use crate::recovery;
use crate::segment::{self, Sibling};
use crate::writer::{State, Writer};
use crate::{MiniStoreError, Result};

/// A journal closed by [`MiniStore::blocking_close_warm`]: no file, descriptor or lock held,
/// only what its writer knew of it (lengths, seqs, segments, the active segment's index,
/// the idempotency keys), which [`blocking_reopen`](Self::blocking_reopen) uses if the files
/// are still as it left them. Its memory is [`memory_bytes`](Self::memory_bytes).
///
/// ```
/// use ministore::{JsonLine, MiniStoreOptions};
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut store = MiniStoreOptions::new().blocking_open(dir.path().join("j.jsonl")).unwrap();
/// store.blocking_append_json(&[JsonLine::from_slice(b"1").unwrap()]).unwrap();
/// let closed = store.blocking_close_warm().expect("a healthy journal closes warm");
///
/// let reopened = closed.blocking_reopen().unwrap();
/// assert_eq!(reopened.changed, None); // nothing touched its files: no full open
/// assert_eq!(reopened.store.last_seq(), 1);
/// ```
#[derive(Debug)]
pub struct WarmJournal {
    state: Box<State>,
    seen: Snapshot,
}

/// What [`WarmJournal::blocking_reopen`] made of a closed journal.
#[derive(Debug)]
pub struct Reopened {
    /// The journal, open.
    pub store: MiniStore,
    /// `None` when its files were as it left them and its kept state was used; otherwise
    /// what was found different, and the journal was opened in full (repaired and
    /// recovered as [`MiniStore::open`] does).
    pub changed: Option<String>,
}

/// How long before the close the journal's directory must have last changed for its
/// change time to prove, at the reopen, that nothing was created, deleted or renamed in
/// it since. File systems stamp a change with a clock that moves in steps (a few ms on
/// ext4, 1 s on ext4 with small inodes, 2 s on FAT), so a change made within one step of
/// our own last one can carry the same time: the directory is then listed instead.
pub(crate) const SETTLED: Duration = Duration::from_secs(2);

/// A file or directory as `stat` saw it: what no change to it leaves alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: (i64, i64),
}

impl From<std::fs::Metadata> for Seen {
    fn from(m: std::fs::Metadata) -> Self {
        Seen {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl Seen {
    /// When it last changed, by the system clock.
    fn changed_at(&self) -> SystemTime {
        let (secs, nanos) = self.ctime;
        match u64::try_from(secs) {
            Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos.clamp(0, 999_999_999) as u32),
            Err(_) => UNIX_EPOCH,
        }
    }
}

/// How a journal's files looked when it was closed warm.
#[derive(Debug)]
pub(crate) struct Snapshot {
    segment: Seen,
    meta: Seen,
    dir: Seen,
    /// Whether the directory had changed less than [`SETTLED`] before the close: its change
    /// time then proves nothing, and the reopen lists it.
    dir_unsettled: bool,
}

impl Snapshot {
    /// Looks at the active segment `file`, its metadata file `meta` and the directory of
    /// the journal at `base`, as they are left at the close.
    pub(crate) fn take(base: &Path, file: &File, meta: &File) -> std::io::Result<Snapshot> {
        let dir = Seen::from(std::fs::metadata(segment::dir_of(base))?);
        let dir_unsettled = SystemTime::now()
            .duration_since(dir.changed_at())
            .map_or(true, |age| age < SETTLED);
        Ok(Snapshot {
            segment: file.metadata()?.into(),
            meta: meta.metadata()?.into(),
            dir,
            dir_unsettled,
        })
    }
}

impl WarmJournal {
    pub(crate) fn new(state: State, seen: Snapshot) -> Self {
        WarmJournal {
            state: Box::new(state),
            seen,
        }
    }

    /// The path of the journal's active file, as given to `open`.
    pub fn path(&self) -> &Path {
        &self.state.base
    }

    /// The heap memory it holds, in bytes: the kept state (paths, segment lists, the
    /// active segment's index) and the idempotency keys, at most
    /// [`max_keys`](crate::MiniStoreOptions::max_keys) of them (about 40 bytes each, from
    /// the key index's capacities).
    pub fn memory_bytes(&self) -> usize {
        let s = &self.state;
        let path = |p: &Path| p.as_os_str().len();
        let index_entries = s.index.entries().len();
        let index_capacity = match index_entries {
            0 => 0,
            n => n.next_power_of_two().max(4),
        };
        std::mem::size_of::<State>()
            + path(&s.base)
            + path(&s.meta_path)
            + s.damage.as_ref().map_or(0, String::len)
            + s.rotated.capacity() * std::mem::size_of::<(u64, u64, std::path::PathBuf)>()
            + s.rotated.iter().map(|r| path(&r.2)).sum::<usize>()
            + s.sealed_metas.capacity() * std::mem::size_of::<(u64, std::path::PathBuf)>()
            + s.sealed_metas.iter().map(|m| path(&m.1)).sum::<usize>()
            + index_capacity * std::mem::size_of::<crate::index::Entry>()
            + s.keys.heap_bytes()
    }

    /// Reopens the journal: takes its lock again, opens its files, and if they are exactly
    /// as it left them (see the module docs of `warm.rs`: identity, length and change time
    /// of the active segment and its metadata file, the names of its segments and metadata
    /// files) goes on from the kept state, without reading them. Otherwise (another process
    /// appended, rotated, cut or replaced something while it was closed) it is the full
    /// [`MiniStore::open`] (the reason in [`Reopened::changed`]), with the options it was
    /// opened with.
    ///
    /// # Errors
    ///
    /// Those of [`MiniStore::open`]: [`MiniStoreError::Locked`] if another `MiniStore`
    /// holds it now, a journal the full open refuses.
    pub fn blocking_reopen(self) -> Result<Reopened> {
        let WarmJournal { state, seen } = self;
        let state = *state;
        let path = state.base.clone();
        // The lock first: nothing may change the files between the checks and the appends.
        let lock = match recovery::lock_journal(&state.base) {
            Ok(lock) => lock,
            // A missing directory, say: the full open creates what it must, or reports
            // the same error (`Locked`) to the caller.
            Err(e) if !matches!(e, MiniStoreError::Locked { .. }) => {
                let changed = format!("its lock file could not be taken: {e}");
                return full_open(&path, changed, Writer::open(state.base, state.opts));
            }
            Err(e) => return Err(e),
        };
        match unchanged(&state, &seen) {
            Ok((file, meta_file)) => Ok(Reopened {
                store: MiniStore::with_writer(
                    &path,
                    Writer::assemble(state, file, meta_file, lock)?,
                ),
                changed: None,
            }),
            Err(changed) => full_open(
                &path,
                changed,
                Writer::open_locked(state.base, state.opts, lock),
            ),
        }
    }
}

/// The reopen when the files changed: `opened`, the full open's result.
fn full_open(path: &Path, changed: String, opened: Result<Writer>) -> Result<Reopened> {
    tracing::info!(journal = %path.display(), %changed, "the journal's files changed while it was closed; opened in full");
    Ok(Reopened {
        store: MiniStore::with_writer(path, opened?),
        changed: Some(changed),
    })
}

/// The active segment and metadata file, opened for writing, if they and the journal's
/// other files are as `state` left them (`seen`); otherwise what differs.
fn unchanged(state: &State, seen: &Snapshot) -> std::result::Result<(File, File), String> {
    let open = |path: &Path, was: Seen| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("{} cannot be opened: {e}", path.display()))?;
        let now = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match Seen::from(now) {
            now if now == was => Ok(file),
            now => Err(format!(
                "{} is not as it was left: {was:?}, now {now:?}",
                path.display()
            )),
        }
    };
    let file = open(&state.base, seen.segment)?;
    let meta_file = open(&state.meta_path, seen.meta)?;
    let dir = std::fs::metadata(segment::dir_of(&state.base)).map(Seen::from);
    if !seen.dir_unsettled && dir.is_ok_and(|now| now == seen.dir) {
        return Ok((file, meta_file));
    }
    // Segments and metadata files added, deleted or renamed: a rotation or a retention by
    // another writer, a file restored or removed by hand. (Indexes are never trusted:
    // readers check them against their segment, so they are not compared; nor are the
    // files of other journals in the same directory.)
    let name = |p: &Path| p.file_name().map(|n| n.to_owned());
    let mut expected: Vec<_> = (state.rotated.iter().map(|r| name(&r.2)))
        .chain(state.sealed_metas.iter().map(|m| name(&m.1)))
        .chain([name(&state.meta_path)])
        .collect();
    let mut found: Vec<_> = segment::list_siblings(&state.base)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(s, _)| matches!(s, Sibling::Segment(_) | Sibling::Meta(_)))
        .map(|(_, p)| name(&p))
        .collect();
    expected.sort_unstable();
    found.sort_unstable();
    if found != expected {
        return Err(format!(
            "its segments and metadata files are not those it left: {expected:?}, now {found:?}"
        ));
    }
    Ok((file, meta_file))
}
