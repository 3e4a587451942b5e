//! Checking a journal's files without opening it: what `ministore verify` and `ministore
//! inspect` report.
//!
//! Everything here only reads. It never takes the journal's lock, never repairs, never
//! writes or deletes a file, so it is safe on the files of a journal a server has open. It
//! never panics on any file content, and every loop over a file ends: each step reads at a
//! strictly greater offset of a length measured before the loop, or stops.
//!
//! Two depths, one walk:
//! - [`verify_journal`] reads every byte: each segment's header, every line (UTF-8, exactly
//!   one JSON value, nothing after it, the CRC32C its metadata entry keeps), how the
//!   segments chain, what a crash left at the end of the active file, each index sidecar
//!   against the lines it points at, and the other files in the directory. It costs one
//!   read of the journal: every check of a line is made in the same pass.
//! - [`inspect_journal`] checks the structure only: headers, chaining, tails, sidecars and
//!   the other files, counting the lines of a sealed segment from its index (so it reads
//!   less than 64 KiB of each), and the active file's lines without parsing them.
//!
//! What counts as what ([`Severity`]):
//! - **Damage**: records a reader cannot return as written, which no `open` repairs: a
//!   foreign or damaged header, an invalid line with valid records after it, a sealed
//!   (rotated) segment that does not end with a complete record (a sealed segment was
//!   fsynced whole before it was renamed, so a torn end is loss, not a crash in progress),
//!   segments that do not chain (a segment deleted from the middle, lines lost or added),
//!   an index that passes its checks but points at the wrong records.
//! - **Warning**: what a crash leaves and the next `open` repairs (an incomplete last write
//!   in the active file, a header cut short, a rotation that did not finish), and index
//!   sidecars that do not fit their segment (readers ignore them). A journal a server has
//!   open can show an incomplete last write too: it may be a write in progress. This module
//!   cannot tell, because finding out would mean taking the lock.
//! - **Info**: evidence a repair kept (`.broken-<offset>`), the zeros of a writer that
//!   preallocates, leftovers `open` deletes, files that are not the journal's.
//! - **Unreadable**: a file that could not be read, so was not checked.
//!
//! On a live journal each file is read as it was when opened; if the server rotates or
//! retention deletes a segment during the check, the check starts again (at most three
//! times, then the report says the files kept changing).
//!
//! ```
//! use ministore::verify::{self, ProblemKind, Severity};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ministore::MiniStoreError> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("journal.jsonl");
//! let mut store = ministore::MiniStore::open(&path).await?;
//! store.append_batch(&[1, 2, 3]).await?;
//! drop(store);
//!
//! let report = verify::verify_journal(&path)?;
//! assert_eq!(report.worst(), None);
//! assert_eq!((report.first_seq(), report.last_seq()), (Some(1), Some(3)));
//!
//! // A byte flipped in the middle: the line is no longer JSON, and records follow it.
//! let mut bytes = std::fs::read(&path).unwrap();
//! let at = bytes.iter().position(|&b| b == b'2').unwrap();
//! bytes[at] = b'x';
//! std::fs::write(&path, &bytes).unwrap();
//! let report = verify::verify_journal(&path)?;
//! let problem = &report.problems[0];
//! assert_eq!((problem.kind, problem.severity), (ProblemKind::InvalidLine, Severity::Damage));
//! assert_eq!((problem.seq, problem.offset), (Some(2), Some(at as u64)));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::index::{self, Entry, SegmentShape, Sidecar};
use crate::meta::{self, Check, LineChecks};
use crate::segment::{self, Segment, Sibling};
use crate::{MiniStoreError, Result};

/// The name of a journal's active file in a data directory of ministore-server:
/// `DATA_DIR/NAME/journal.jsonl`.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// The server's lock file in a data directory.
const DATA_DIR_LOCK: &str = ".ministore.lock";
/// Bytes read at a time.
const CHUNK: usize = 1 << 20;
/// A line longer than this is not held in memory to be parsed: it is counted, and reported
/// as not checked. No writer of ours makes one (the server's default limit is 1 MiB).
const MAX_CHECKED_LINE: usize = 64 << 20;
/// Invalid lines reported one by one per file; more are summed up in one problem, so a
/// file of garbage gives a readable report.
const MAX_INVALID_LINES_REPORTED: usize = 10;
/// Checks of one journal, when its files change under the check (a live rotation).
const MAX_ATTEMPTS: usize = 3;

/// How serious a [`Problem`] is; ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing, nothing to do.
    Info,
    /// Not damage: what a crash leaves and `open` repairs, or derived data readers ignore.
    Warning,
    /// A file could not be read, so it was not checked: the verdict is incomplete.
    Unreadable,
    /// Records cannot be read back as written, and no `open` repairs it.
    Damage,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Unreadable => "unreadable",
            Severity::Damage => "DAMAGE",
        })
    }
}

/// What kind of problem was found; each has one [`Severity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// A file named like a segment (or the active file) whose first line is not a journal
    /// header: another program's file, or a damaged header. Damage.
    NotAJournal,
    /// A line that is not UTF-8, not JSON, or followed by something else on its line, with
    /// records after it (or in a sealed segment). Damage.
    InvalidLine,
    /// A sealed segment that does not end with a complete record. Damage.
    TornTail,
    /// Records missing between two segments: one ends before the next starts. Damage.
    Gap,
    /// Two segments claim the same sequence numbers. Damage.
    Overlap,
    /// An index that fits its segment's shape but points at the wrong records: readers
    /// would trust it. Damage.
    WrongIndex,
    /// A record whose bytes do not match the CRC32C its metadata entry keeps, or whose
    /// entry is damaged or missing. Damage.
    Checksum,
    /// The active file ends with an incomplete write: a crash, or a write in progress on a
    /// live journal. `open` cuts it. Warning.
    UnfinishedWrite,
    /// The active file's header was cut short by a crash; `open` replaces it. Warning.
    TornHeader,
    /// Rotated segments but no active file: a rotation did not finish; `open` creates it.
    /// Warning.
    NoActiveFile,
    /// An index sidecar that does not fit its segment; readers ignore it. Warning.
    StaleIndex,
    /// The records files were changing throughout the check (a live server rotating), so
    /// the report may show problems that are not there. Warning.
    Changing,
    /// A line longer than this check holds in memory, counted but not parsed. Warning.
    NotChecked,
    /// Zeros after the last record of the active file, written ahead by a writer with
    /// preallocation; `open` (or a clean close) cuts them. Info.
    UnwrittenSpace,
    /// Bytes a repair cut off and kept as `<journal>.broken-<offset>`. Info.
    Evidence,
    /// An index, or a temporary index, whose segment is gone; `open` deletes it. Info.
    OrphanIndex,
    /// A metadata file a crash interrupted while it was being created
    /// (`journal.jsonl.from-<seq>.meta.tmp`): it never held an entry; `open` deletes it.
    /// Info.
    UnfinishedMetadata,
    /// A file named as the first draft of the metadata design named metadata files
    /// (`journal.jsonl.000003.meta`); this version writes `journal.jsonl.from-<seq>.meta`
    /// (checked with the records) and ignores it. Info.
    Metadata,
    /// A file or directory that is not part of the journal (or of the data directory).
    /// Readers and the server ignore it. Info.
    UnknownFile,
    /// A file that could not be read. Unreadable.
    Unreadable,
}

impl ProblemKind {
    /// How serious a problem of this kind is.
    pub fn severity(self) -> Severity {
        use ProblemKind::*;
        match self {
            NotAJournal | InvalidLine | TornTail | Gap | Overlap | WrongIndex | Checksum => {
                Severity::Damage
            }
            UnfinishedWrite | TornHeader | NoActiveFile | StaleIndex | Changing | NotChecked => {
                Severity::Warning
            }
            UnwrittenSpace | Evidence | OrphanIndex | UnfinishedMetadata | Metadata
            | UnknownFile => Severity::Info,
            Unreadable => Severity::Unreadable,
        }
    }
}

/// One thing found, with where it is: the file, and where they apply the sequence number,
/// the 1-based line (the header is line 1) and the byte offset in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// How serious it is.
    pub severity: Severity,
    /// What it is.
    pub kind: ProblemKind,
    /// The file it is in.
    #[serde(serialize_with = "lossy_path")]
    pub file: PathBuf,
    /// The sequence number of the record concerned (or where missing records start).
    pub seq: Option<u64>,
    /// The line in `file` (the header is line 1).
    pub line: Option<u64>,
    /// The byte offset in `file`.
    pub offset: Option<u64>,
    /// What it is and what to do about it, for a person.
    pub message: String,
}

impl Problem {
    fn new(kind: ProblemKind, file: &Path, message: impl Into<String>) -> Problem {
        Problem {
            severity: kind.severity(),
            kind,
            file: file.to_path_buf(),
            seq: None,
            line: None,
            offset: None,
            message: message.into(),
        }
    }

    fn at(mut self, seq: u64, line: u64, offset: u64) -> Problem {
        self.seq = Some(seq);
        self.at_line(line, offset)
    }

    fn with_seq(mut self, seq: u64, offset: u64) -> Problem {
        (self.seq, self.offset) = (Some(seq), Some(offset));
        self
    }

    fn at_line(mut self, line: u64, offset: u64) -> Problem {
        (self.line, self.offset) = (Some(line), Some(offset));
        self
    }
}

/// `severity: file: seq S, line L, byte O: message`, one line.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.file.display())?;
        let place: Vec<String> = [
            self.seq.map(|s| format!("seq {s}")),
            self.line.map(|l| format!("line {l}")),
            self.offset.map(|o| format!("byte {o}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !place.is_empty() {
            write!(f, ": {}", place.join(", "))?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Whether a sealed segment has an index sidecar a reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// No sidecar (the active file, a segment under 64 KiB, or one from before indexes).
    None,
    /// A sidecar that fits the segment: readers seek with it.
    Used,
    /// A sidecar readers ignore (see the problems).
    Ignored,
}

/// One file of records, as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentInfo {
    /// The file.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// The rotated segment's number; `None` for the active file.
    pub number: Option<u64>,
    /// The sequence number of its first record (from its header; counted from the segment
    /// before for a segment of the published crate, whose header has none).
    pub first_seq: u64,
    /// Its complete records, as a reader returns them: every `\n`-terminated line (in the
    /// active file, up to the first NUL byte).
    pub records: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// Its index sidecar.
    pub index: IndexState,
}

impl SegmentInfo {
    /// The sequence number of its last record; `None` if it has none.
    pub fn last_seq(&self) -> Option<u64> {
        (self.records > 0).then(|| self.first_seq.saturating_add(self.records - 1))
    }
}

/// How thoroughly a report was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// Every line read and parsed ([`verify_journal`]).
    Full,
    /// Headers, chaining, tails and sidecars; lines counted, not parsed ([`inspect_journal`]).
    Structure,
}

/// What was found in one journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The journal's active file (which may be missing).
    #[serde(serialize_with = "lossy_path")]
    pub journal: PathBuf,
    /// How thoroughly it was checked.
    pub depth: Depth,
    /// Its files of records that have a journal header, oldest first, the active file last.
    pub segments: Vec<SegmentInfo>,
    /// Everything found, in file order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// The most serious problem's severity; `None` when nothing was found at all.
    pub fn worst(&self) -> Option<Severity> {
        self.problems.iter().map(|p| p.severity).max()
    }

    /// Whether any problem is [`Severity::Damage`].
    pub fn is_damaged(&self) -> bool {
        self.worst() == Some(Severity::Damage)
    }

    /// The records in all segments (duplicates of an overlap counted twice).
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// The first sequence number held; `None` if the journal holds no records.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| s.records > 0)
            .map(|s| s.first_seq)
    }

    /// The last sequence number held; `None` if the journal holds no records.
    pub fn last_seq(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(SegmentInfo::last_seq)
    }

    /// The bytes of its segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The segment holding `seq`, if any (the newest, should segments overlap).
    pub fn segment_of(&self, seq: u64) -> Option<&SegmentInfo> {
        self.segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= seq && seq - s.first_seq < s.records)
    }
}

/// What was found in a data directory: one report per journal, and what else is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataDirReport {
    /// The data directory.
    #[serde(serialize_with = "lossy_path")]
    pub data_dir: PathBuf,
    /// Its journals, by name.
    pub journals: Vec<Report>,
    /// Entries of the data directory that are not journals.
    pub problems: Vec<Problem>,
}

impl DataDirReport {
    /// The most serious problem's severity, in any journal or the directory itself.
    pub fn worst(&self) -> Option<Severity> {
        let journals = self.journals.iter().filter_map(Report::worst);
        self.problems
            .iter()
            .map(|p| p.severity)
            .chain(journals)
            .max()
    }
}

/// What a path given to a tool names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One journal: its active file (`.../journal.jsonl`, or any file given by name).
    Journal(PathBuf),
    /// A data directory: one journal per subdirectory.
    DataDir(PathBuf),
}

/// Tells what `path` is: a journal's file, a journal's directory (it holds `journal.jsonl`
/// or rotated segments of it), or otherwise a data directory.
///
/// # Errors
/// [`MiniStoreError::Io`] when `path` does not exist or cannot be read.
///
/// ```
/// use ministore::verify::{resolve, Target};
/// let data = tempfile::tempdir().unwrap();
/// std::fs::create_dir(data.path().join("orders")).unwrap();
/// std::fs::write(data.path().join("orders/journal.jsonl"), "").unwrap();
/// let journal = data.path().join("orders/journal.jsonl");
/// assert_eq!(resolve(data.path()).unwrap(), Target::DataDir(data.path().into()));
/// assert_eq!(resolve(&data.path().join("orders")).unwrap(), Target::Journal(journal.clone()));
/// assert_eq!(resolve(&journal).unwrap(), Target::Journal(journal));
/// ```
pub fn resolve(path: &Path) -> Result<Target> {
    let meta =
        std::fs::metadata(path).map_err(|e| MiniStoreError::io("reading metadata of", path, e))?;
    if !meta.is_dir() {
        return Ok(Target::Journal(path.to_path_buf()));
    }
    let base = path.join(JOURNAL_FILE);
    if is_journal_dir(path)? {
        Ok(Target::Journal(base))
    } else {
        Ok(Target::DataDir(path.to_path_buf()))
    }
}

/// Whether `dir` holds the files of a journal named `journal.jsonl`.
fn is_journal_dir(dir: &Path) -> Result<bool> {
    let base = dir.join(JOURNAL_FILE);
    Ok(base.exists() || !segment::list_rotated(&base)?.is_empty())
}

/// Reads every byte of the journal whose active file is `base` and reports what is wrong
/// with it (see the [module docs](self) for what is checked and how it is judged). Blocking:
/// call it from `spawn_blocking` in async code.
///
/// # Errors
/// Only when the journal's directory cannot be listed; a file that cannot be read is a
/// [`Severity::Unreadable`] problem in the report.
pub fn verify_journal(base: &Path) -> Result<Report> {
    check_journal(base, Depth::Full)
}

/// Like [`verify_journal`], but checks the structure only (see [`Depth::Structure`]):
/// reads less than 64 KiB of each indexed segment, for an overview of a large journal.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ministore::MiniStoreError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("journal.jsonl");
/// let mut store = ministore::MiniStore::open(&path).await?;
/// store.append_batch(&["a", "b"]).await?;
/// let report = ministore::verify::inspect_journal(&path)?;
/// assert_eq!(report.segments.len(), 1);
/// assert_eq!((report.records(), report.last_seq()), (2, Some(2)));
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`verify_journal`].
pub fn inspect_journal(base: &Path) -> Result<Report> {
    check_journal(base, Depth::Structure)
}

/// [`verify_journal`] for every journal of the data directory `dir` (each subdirectory
/// holding `journal.jsonl` or its segments), in name order, and a note of every other entry.
///
/// ```
/// let data = tempfile::tempdir().unwrap();
/// std::fs::write(data.path().join("notes.txt"), "hello").unwrap();
/// let report = ministore::verify::verify_data_dir(data.path()).unwrap();
/// assert!(report.journals.is_empty());
/// assert_eq!(report.problems[0].kind, ministore::verify::ProblemKind::UnknownFile);
/// assert_eq!(report.worst(), Some(ministore::verify::Severity::Info));
/// ```
///
/// # Errors
/// When `dir` or a journal's directory cannot be listed.
pub fn verify_data_dir(dir: &Path) -> Result<DataDirReport> {
    check_data_dir(dir, Depth::Full)
}

/// [`inspect_journal`] for every journal of the data directory `dir`.
///
/// # Errors
/// As [`verify_data_dir`].
pub fn inspect_data_dir(dir: &Path) -> Result<DataDirReport> {
    check_data_dir(dir, Depth::Structure)
}

fn check_data_dir(dir: &Path, depth: Depth) -> Result<DataDirReport> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .and_then(|entries| entries.collect())
        .map_err(|e| MiniStoreError::io("listing", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    let mut report = DataDirReport {
        data_dir: dir.to_path_buf(),
        journals: Vec::new(),
        problems: Vec::new(),
    };
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        if name == DATA_DIR_LOCK {
            continue;
        }
        let journal = match path.is_dir() {
            true => is_journal_dir(&path).and_then(|is| {
                is.then(|| check_journal(&path.join(JOURNAL_FILE), depth))
                    .transpose()
            }),
            false => Ok(None),
        };
        match journal {
            Ok(Some(journal)) => report.journals.push(journal),
            Err(e) => report.problems.push(Problem::new(
                ProblemKind::Unreadable,
                &path,
                format!("cannot be checked: {e}"),
            )),
            Ok(None) => {
                let what = if path.is_dir() {
                    "a directory without a journal (no journal.jsonl)"
                } else {
                    "not a journal directory"
                };
                report.problems.push(Problem::new(
                    ProblemKind::UnknownFile,
                    &path,
                    format!("{what}: the server ignores it"),
                ));
            }
        }
    }
    Ok(report)
}

fn check_journal(base: &Path, depth: Depth) -> Result<Report> {
    let mut attempt = 1;
    loop {
        let before = listing(base)?;
        let mut report = check_once(base, depth)?;
        if listing(base)? == before {
            return Ok(report);
        }
        if attempt == MAX_ATTEMPTS {
            report.problems.push(Problem::new(
                ProblemKind::Changing,
                base,
                format!(
                    "the journal's files changed during each of {MAX_ATTEMPTS} checks (a server \
                     rotating or deleting segments): problems above may be passing states; run \
                     the check again"
                ),
            ));
            return Ok(report);
        }
        attempt += 1;
    }
}

/// The names of the journal's segment files and whether its active file exists: a rotation
/// or a retention deletion changes it.
fn listing(base: &Path) -> Result<(Vec<u64>, bool)> {
    let numbers = segment::list_rotated(base)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    Ok((numbers, base.exists()))
}

fn check_once(base: &Path, depth: Depth) -> Result<Report> {
    let mut report = Report {
        journal: base.to_path_buf(),
        depth,
        segments: Vec::new(),
        problems: Vec::new(),
    };
    let rotated = segment::list_rotated(base)?;
    let mut files: Vec<(Option<u64>, PathBuf)> =
        rotated.into_iter().map(|(n, p)| (Some(n), p)).collect();
    // An empty active file holds nothing yet (open writes its header), as readers see it.
    let active_missing = match std::fs::metadata(base) {
        Ok(m) => m.len() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if !active_missing {
        files.push((None, base.to_path_buf())); // unreadable: check_segment says so
    } else if !files.is_empty() {
        report.problems.push(Problem::new(
            ProblemKind::NoActiveFile,
            base,
            "missing or empty beside rotated segments: a rotation did not finish (a crash \
             between renaming the full segment and creating the new active file); the next \
             open creates it, continuing the sequence numbers",
        ));
    }
    let rotated_exist = files.iter().any(|(n, _)| n.is_some());
    let mut checksums = Checksums::new(base, depth);
    for (number, path) in files {
        let before = report.segments.last();
        // A segment of the published crate has no first_seq: it follows the one before.
        let next_seq = before.map_or(1, |s| s.first_seq.saturating_add(s.records));
        if let Some(seg) = check_segment(
            &path,
            number,
            next_seq,
            rotated_exist,
            depth,
            &mut checksums,
            &mut report.problems,
        ) {
            report.segments.push(seg);
        }
    }
    check_chain(&report.segments, &mut report.problems);
    if !report.problems.iter().any(|p| p.kind == ProblemKind::Gap) {
        checksums.report(&mut report.problems);
    }
    check_siblings(base, &mut report.problems)?;
    Ok(report)
}

/// The check of each record against the CRC32C its metadata entry keeps (records written
/// without metadata are not checked), made as the lines are read: it follows the records
/// as a reader does, from the first, and stops where a reader stops. The first record whose
/// bytes are not those written, or whose entry is damaged, is reported: readers stop there,
/// so it is reported once, and the records after it are checked once it is dealt with.
struct Checksums {
    /// The journal as a reader lists it; `None` once a reader would have stopped (or for a
    /// check of the structure only).
    listed: Option<Listing>,
    /// The checks of the segment being read.
    current: Option<LineChecks>,
    /// The seq a reader reads next: it goes on only into a segment that starts there.
    next_seq: Option<u64>,
    /// The first record found not to be the one written: (file, seq, offset, why).
    failure: Option<(PathBuf, u64, u64, String)>,
}

/// A journal's segments and metadata files.
struct Listing {
    segments: Vec<Segment>,
    metas: Vec<(u64, PathBuf)>,
}

impl Checksums {
    fn new(base: &Path, depth: Depth) -> Checksums {
        // A reader that cannot list the journal (a header that is not one, segments out of
        // order) reads nothing: those are reported as what they are.
        let listed = (depth == Depth::Full)
            .then(|| {
                Some(Listing {
                    segments: segment::catalog(base).ok()?,
                    metas: meta::list(base).ok()?,
                })
            })
            .flatten();
        Checksums {
            listed,
            current: None,
            next_seq: None,
            failure: None,
        }
    }

    /// Where a reader stops: nothing after it is checked.
    fn stop(&mut self) {
        self.listed = None;
        self.current = None;
    }

    /// Starts on the segment at `path`, if a reader gets there.
    fn start_segment(&mut self, path: &Path) {
        let Some(Listing { segments, metas }) = &self.listed else {
            return;
        };
        let Some(i) = segments.iter().position(|s| s.path == path) else {
            return self.stop(); // not as the reader listed it
        };
        let seg = &segments[i];
        if self.next_seq.is_some_and(|next| next != seg.first_seq) {
            return self.stop(); // a gap or an overlap: `Missing`
        }
        let next_first = segments.get(i + 1).map(|s| s.first_seq);
        match LineChecks::open(metas, seg.first_seq, next_first, seg.number.is_some()) {
            Ok(checks) => self.current = Some(checks),
            Err(_) => self.stop(),
        }
    }

    /// Whether the lines of the segment being read are checked.
    fn checking(&self) -> bool {
        self.current.is_some()
    }

    /// Checks record `seq`, the complete line at `offset` of `file` whose CRC32C is `crc`
    /// (`utf8`: whether it is UTF-8), in the order a reader applies the checks.
    fn line(&mut self, file: &File, path: &Path, seq: u64, offset: u64, crc: u32, utf8: bool) {
        let Some(checks) = &mut self.current else {
            return;
        };
        match checks.check_for(file, seq, false) {
            // An entry not whole yet ends what a reader reads; so does an unreadable one.
            Ok(Check::NotYet) | Err(_) => self.stop(),
            Ok(check) => {
                if let Some(why) = check.failure(|| crc) {
                    self.failure = Some((path.to_path_buf(), seq, offset, why));
                    self.stop();
                } else if !utf8 {
                    self.stop(); // a reader stops at a line that is not text
                }
            }
        }
    }

    /// The segment starting at `first_seq` was read to its end: `records` lines.
    fn end_segment(&mut self, first_seq: u64, records: u64) {
        if self.current.take().is_some() {
            self.next_seq = Some(first_seq.saturating_add(records));
        }
    }

    /// Adds the failure found, if any, to `problems`.
    fn report(self, problems: &mut Vec<Problem>) {
        if let Some((path, seq, offset, reason)) = self.failure
            // Already reported as what it is (an invalid line, say): once is enough.
            && !problems
                .iter()
                .any(|p| p.file == path && p.seq == Some(seq) && p.severity == Severity::Damage)
        {
            problems.push(
                Problem::new(
                    ProblemKind::Checksum,
                    &path,
                    format!(
                        "record {seq} {reason}. Readers stop here with DATA_LOSS; the records \
                         after it are not checked. Restore it from a backup if you have one"
                    ),
                )
                .with_seq(seq, offset),
            );
        }
    }
}

/// Each segment ends exactly where the next starts.
fn check_chain(segments: &[SegmentInfo], problems: &mut Vec<Problem>) {
    for pair in segments.windows(2) {
        let (seg, next) = (&pair[0], &pair[1]);
        let end = seg.first_seq.saturating_add(seg.records);
        if end == next.first_seq {
            continue;
        }
        let gap = segment::describe_gap(&seg.path, seg.first_seq, end, &next.path, next.first_seq);
        let problem = if end < next.first_seq {
            let last = next.first_seq - 1;
            let missing = if last == end {
                format!("record {end} is missing")
            } else {
                format!("records {end}..={last} are missing")
            };
            Problem::new(
                ProblemKind::Gap,
                &next.path,
                format!(
                    "{missing}: {gap}. A segment was deleted from the middle or lost lines; \
                     readers stop here with DATA_LOSS. Restore the missing records from a backup \
                     if you have one"
                ),
            )
        } else {
            Problem::new(
                ProblemKind::Overlap,
                &next.path,
                format!(
                    "records {}..={} appear twice: {gap}. A segment gained lines, or a file was \
                     copied in; readers stop here with DATA_LOSS",
                    next.first_seq,
                    end - 1
                ),
            )
        };
        problems.push(Problem {
            seq: Some(end.min(next.first_seq)),
            ..problem
        });
    }
}

/// Checks one file of records; `None` when it has no usable header (reported).
fn check_segment(
    path: &Path,
    number: Option<u64>,
    next_seq: u64,
    rotated_exist: bool,
    depth: Depth,
    checksums: &mut Checksums,
    problems: &mut Vec<Problem>,
) -> Option<SegmentInfo> {
    let unreadable = |e: &dyn fmt::Display| {
        Problem::new(
            ProblemKind::Unreadable,
            path,
            format!("cannot be read: {e}"),
        )
    };
    let (file, len) = match File::open(path).and_then(|f| f.metadata().map(|m| (f, m.len()))) {
        Ok(opened) => opened,
        Err(e) => {
            problems.push(unreadable(&e));
            return None;
        }
    };
    let head = match segment::read_head(&file, path) {
        Ok(head) => head,
        Err(e) => {
            problems.push(unreadable(&e));
            return None;
        }
    };
    let header = match segment::parse_header(path, &head) {
        Ok(header) => header,
        Err(e) => {
            problems.push(header_problem(
                &file,
                path,
                &head,
                len,
                number,
                rotated_exist,
                &e,
            ));
            return None;
        }
    };
    let first_seq = header.first_seq.unwrap_or(next_seq);
    let mut info = SegmentInfo {
        path: path.to_path_buf(),
        number,
        first_seq,
        records: 0,
        bytes: len,
        index: IndexState::None,
    };
    let shape = SegmentShape {
        first_seq,
        header_len: header.len,
        len,
    };
    // The sidecar is written only for sealed segments; the active file has none on disk.
    let index = match number {
        Some(_) => match index::check_sidecar(path, shape) {
            Sidecar::Missing => None,
            Sidecar::Fits(index) => {
                info.index = IndexState::Used;
                Some(index)
            }
            Sidecar::Unfit(reason) => {
                info.index = IndexState::Ignored;
                problems.push(Problem::new(
                    ProblemKind::StaleIndex,
                    &index::sidecar_path(path),
                    format!(
                        "the index does not fit its segment ({reason}): readers ignore it and \
                         read the segment from its start. Deleting it is safe"
                    ),
                ));
                None
            }
        },
        None => None,
    };
    checksums.start_segment(path);
    let mut scan = Scan {
        file: &file,
        path,
        first_seq,
        rotated: number.is_some(),
        validate: depth == Depth::Full,
        len,
        checksums,
        problems,
    };
    let result = match (depth, &index) {
        (Depth::Full, _) => scan.run(header.len, first_seq, index.as_ref().map(|i| i.entries())),
        (Depth::Structure, Some(index)) => {
            // Counted from the last entry, if the byte before it is a line break (as readers
            // check); the entries are checked one by one only by a full check.
            let start = index
                .lookup(u64::MAX)
                .filter(|e| segment::follows_line_break(&file, e.offset))
                .map_or((header.len, first_seq), |e| (e.offset, e.seq));
            scan.run(start.0, start.1, None)
        }
        (Depth::Structure, None) => scan.run(header.len, first_seq, None),
    };
    match result {
        Ok(records) => {
            info.records = records;
            checksums.end_segment(first_seq, records);
        }
        Err(e) => {
            problems.push(unreadable(&e));
            checksums.stop();
        }
    }
    Some(info)
}

/// What a file without a journal header is: a header a crash cut short in the active file
/// (which `open` replaces, see `clear_torn_header` in store.rs), or a foreign file.
fn header_problem(
    file: &File,
    path: &Path,
    head: &[u8],
    len: u64,
    number: Option<u64>,
    rotated_exist: bool,
    error: &MiniStoreError,
) -> Problem {
    let written = memchr::memchr(0, head).unwrap_or(head.len());
    // The rule open repairs by, so verify calls torn exactly what open will replace.
    let torn_header = number.is_none()
        && segment::is_torn_header(file, path, head, len, || Ok(rotated_exist)).unwrap_or(false);
    if torn_header {
        return Problem::new(
            ProblemKind::TornHeader,
            path,
            format!(
                "the header is cut short ({} bytes, then zeros): a crash while the file was \
                 being created; the next open replaces it",
                written
            ),
        );
    }
    let what = match number {
        Some(_) => "a file named like a segment of this journal",
        None => "the journal's active file",
    };
    Problem::new(
        ProblemKind::NotAJournal,
        path,
        format!(
            "{what} is not a journal ({error}); open refuses the journal while it is here. Move \
             it away if it is another program's file"
        ),
    )
    .at_line(1, 0)
}

/// The walk over one file's lines.
struct Scan<'a> {
    file: &'a File,
    path: &'a Path,
    first_seq: u64,
    /// A sealed segment: it must end with a complete record, and has no zeros to stop at.
    rotated: bool,
    /// Parse every line (a full check), or only count them.
    validate: bool,
    /// The file's length when opened: the walk never reads past it.
    len: u64,
    /// Each record's check against its CRC32C, in the same pass.
    checksums: &'a mut Checksums,
    problems: &'a mut Vec<Problem>,
}

/// A run of invalid lines waiting to see whether a valid one follows (damage) or not (the
/// tail of an active file).
struct Invalid {
    /// The first line of the run.
    seq: u64,
    offset: u64,
    reason: String,
    /// Lines in the run.
    lines: u64,
}

impl Scan<'_> {
    fn line_of(&self, seq: u64) -> u64 {
        (seq - self.first_seq).saturating_add(2)
    }

    /// Walks the lines from `offset`, where record `seq` starts, to the end of the file (or
    /// the first NUL of an active file), reporting as it goes; returns the records counted
    /// from the file's first. `entries`: index entries to check against the line starts.
    ///
    /// It ends: `pos` grows by the bytes each read returns, a read of none stops it, and it
    /// never passes `len`, measured before.
    fn run(
        &mut self,
        mut pos: u64,
        mut seq: u64,
        entries: Option<&[Entry]>,
    ) -> std::io::Result<u64> {
        let mut entries = entries.unwrap_or_default().iter().peekable();
        let mut wrong_entry: Option<Entry> = None;
        let mut buf = vec![0u8; CHUNK];
        // The start of the line being read, and its bytes so far when it spans reads
        // (in full only up to MAX_CHECKED_LINE; `carried` counts them all).
        let mut line_start = pos;
        let mut carry: Vec<u8> = Vec::new();
        let mut carried: u64 = 0;
        // The CRC32C of those bytes, all of them, while records are checked against theirs.
        let mut carried_crc = 0u32;
        // Where the records a reader keeps end, and the last valid one (full check).
        let mut valid_end = pos;
        let mut valid_seq = seq;
        let mut pending: Option<Invalid> = None;
        let mut invalid_reported = 0usize;
        let mut invalid_more = 0u64;
        let mut nul_at: Option<u64> = None;
        // Records counted from the file's first; `seq` saturates, for a header that claims
        // a first seq near u64::MAX.
        let mut lines = seq - self.first_seq;
        while pos < self.len {
            let want = CHUNK.min((self.len - pos) as usize);
            let n = self.file.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                break; // shrank under us: what we read is what there is
            }
            // JSON never holds a NUL: in the active file the first one ends what is written
            // (zeros a preallocating writer put ahead of its records), as readers see it.
            let unwritten = match self.rotated {
                false => memchr::memchr(0, &buf[..n]),
                true => None,
            };
            let chunk = &buf[..unwritten.unwrap_or(n)];
            let chunk_start = pos;
            pos += n as u64;
            let mut from = 0;
            for i in memchr::memchr_iter(b'\n', chunk) {
                let line_end = chunk_start + i as u64 + 1;
                if let Some(e) = entries.next_if(|e| e.seq <= seq)
                    && (e.seq, e.offset) != (seq, line_start)
                    && wrong_entry.is_none()
                {
                    wrong_entry = Some(*e);
                }
                if self.validate {
                    let line: Option<&[u8]> = if carried == 0 {
                        Some(&chunk[from..i])
                    } else if carried + (i - from) as u64 <= MAX_CHECKED_LINE as u64 {
                        carry.extend_from_slice(&chunk[from..i]);
                        Some(&carry)
                    } else {
                        None // too long to hold: counted, not parsed
                    };
                    let verdict = line.map(check_record);
                    if self.checksums.checking() {
                        let crc = crc32c::crc32c_append(carried_crc, &chunk[from..i]);
                        let utf8 = match (line, &verdict) {
                            (Some(line), Some(Err(_))) => std::str::from_utf8(line).is_ok(),
                            _ => true,
                        };
                        self.checksums
                            .line(self.file, self.path, seq, line_start, crc, utf8);
                    }
                    match verdict {
                        None | Some(Ok(())) => {
                            if let Some(bad) = pending.take() {
                                self.report_invalid(bad, &mut invalid_reported, &mut invalid_more);
                            }
                            if verdict.is_none() {
                                self.problems.push(
                                    Problem::new(
                                        ProblemKind::NotChecked,
                                        self.path,
                                        format!(
                                            "a line longer than {} MiB was counted as a record \
                                             but not parsed",
                                            MAX_CHECKED_LINE >> 20
                                        ),
                                    )
                                    .at(
                                        seq,
                                        self.line_of(seq),
                                        line_start,
                                    ),
                                );
                            }
                            valid_end = line_end;
                            valid_seq = seq.saturating_add(1);
                        }
                        Some(Err(reason)) => match &mut pending {
                            Some(run) => run.lines += 1,
                            None => {
                                pending = Some(Invalid {
                                    seq,
                                    offset: line_start,
                                    reason,
                                    lines: 1,
                                })
                            }
                        },
                    }
                }
                carry.clear();
                carried = 0;
                carried_crc = 0;
                seq = seq.saturating_add(1);
                lines += 1;
                line_start = line_end;
                from = i + 1;
            }
            if self.validate && carried + ((chunk.len() - from) as u64) <= MAX_CHECKED_LINE as u64 {
                carry.extend_from_slice(&chunk[from..]);
            }
            if self.checksums.checking() {
                carried_crc = crc32c::crc32c_append(carried_crc, &chunk[from..]);
            }
            carried += (chunk.len() - from) as u64;
            if let Some(at) = unwritten {
                nul_at = Some(chunk_start + at as u64);
                break;
            }
        }
        // A last run of invalid lines is damage in a sealed segment, and part of the tail
        // that open cuts in the active file.
        let records = lines;
        if !self.validate {
            (valid_end, valid_seq) = (line_start, seq);
        }
        if let Some(e) = entries.next().filter(|_| wrong_entry.is_none()) {
            wrong_entry = Some(*e); // an entry past the last line
        }
        if let Some(e) = wrong_entry {
            self.problems.push(Problem::new(
                ProblemKind::WrongIndex,
                &index::sidecar_path(self.path),
                format!(
                    "the index says record {} starts at byte {} of {}, which is not so; \
                     readers trust it and would number records wrongly. Delete the index: \
                     readers then read the segment from its start",
                    e.seq,
                    e.offset,
                    self.path.display()
                ),
            ));
        }
        if self.rotated {
            if let Some(bad) = pending.take() {
                self.report_invalid(bad, &mut invalid_reported, &mut invalid_more);
            }
            self.report_more_invalid(invalid_more);
            if line_start < self.len {
                let cut = self.len - line_start;
                self.problems.push(
                    Problem::new(
                        ProblemKind::TornTail,
                        self.path,
                        format!(
                            "this sealed segment ends with {cut} bytes that are not a complete \
                             record: record {seq} is torn, and any after it in this file lost. \
                             Open does not repair sealed segments; readers stop here with DATA_LOSS"
                        ),
                    )
                    .at(seq, self.line_of(seq), line_start),
                );
            }
            return Ok(records);
        }
        self.report_more_invalid(invalid_more);
        if valid_end < self.len {
            self.report_active_tail(valid_end, valid_seq, nul_at);
        }
        Ok(records)
    }

    fn report_invalid(&mut self, bad: Invalid, reported: &mut usize, more: &mut u64) {
        if *reported == MAX_INVALID_LINES_REPORTED {
            *more += 1;
            return;
        }
        *reported += 1;
        let after = if self.rotated {
            "in a sealed segment"
        } else {
            "with valid records after it"
        };
        let run = match bad.lines {
            1 => String::new(),
            n => format!(" (and the {} lines after it)", n - 1),
        };
        self.problems.push(
            Problem::new(
                ProblemKind::InvalidLine,
                self.path,
                format!(
                    "{}{run}, {after}: damage, not a torn write (readers return the line as \
                     record {}; `ministore dump` stops there). Open does not repair it",
                    bad.reason, bad.seq
                ),
            )
            .at(bad.seq, self.line_of(bad.seq), bad.offset),
        );
    }

    fn report_more_invalid(&mut self, more: u64) {
        if more > 0 {
            self.problems.push(Problem::new(
                ProblemKind::InvalidLine,
                self.path,
                format!("{more} more runs of invalid lines after those reported"),
            ));
        }
    }

    /// Bytes after the last valid record of the active file: what `open` cuts.
    fn report_active_tail(&mut self, end: u64, seq: u64, nul_at: Option<u64>) {
        let bytes = self.len - end;
        let line = self.line_of(seq);
        if nul_at == Some(end)
            && segment::zeros_from(self.file, self.path, end, self.len).unwrap_or(false)
        {
            self.problems.push(
                Problem::new(
                    ProblemKind::UnwrittenSpace,
                    self.path,
                    format!(
                        "{bytes} bytes of zeros after the last record: space a writer with \
                         preallocation wrote ahead; it cuts them when it closes, or the next \
                         open does after a crash"
                    ),
                )
                .at(seq, line, end),
            );
            return;
        }
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        self.problems.push(
            Problem::new(
                ProblemKind::UnfinishedWrite,
                self.path,
                format!(
                    "the last {bytes} bytes are not complete records (record {seq} would start \
                     here): an unfinished write. If no server has this journal open, a crash \
                     left it, no acknowledged record is in it, and the next open cuts it (kept \
                     as {name}.broken-{end} if it holds a line break); if one has it open, it \
                     may be a write in progress"
                ),
            )
            .at(seq, line, end),
        );
    }
}

/// The check every record line passes: UTF-8 holding exactly one JSON value (whitespace
/// around it allowed), as `ministore verify` applies it to each line and `ministore dump` to
/// each record it prints. `Err` says what is wrong, with the column (1-based, in bytes).
/// `verify` checks each line against the CRC32C its metadata entry keeps in the same pass.
///
/// ```
/// use ministore::verify::check_record;
/// assert!(check_record(br#"{"id":7}"#).is_ok());
/// assert_eq!(check_record(br#"{"id":7}x"#).unwrap_err(), "not JSON (trailing characters at column 9)");
/// assert!(check_record(b"\xff").unwrap_err().starts_with("not UTF-8"));
/// ```
pub fn check_record(line: &[u8]) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8 ({e})"))?;
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(drop)
        .map_err(|e| {
            // serde_json counts lines inside the text: always line 1 here, which would read
            // as the file's line 1.
            let what = e.to_string();
            let what = what.split(" at line ").next().unwrap_or_default();
            let nul = if text.contains('\0') {
                ", holds NUL bytes"
            } else {
                ""
            };
            format!("not JSON ({what} at column {}{nul})", e.column())
        })
}

/// The other files beside the journal: evidence, orphan indexes, unknown files.
fn check_siblings(base: &Path, problems: &mut Vec<Problem>) -> Result<()> {
    let dir = segment::dir_of(base);
    let Some(name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(()); // list_rotated has already refused such a path
    };
    let mut entries: Vec<std::fs::DirEntry> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<std::io::Result<_>>()
            .map_err(|e| MiniStoreError::io("listing", dir, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MiniStoreError::io("listing", dir, e)),
    };
    entries.sort_by_key(|e| e.file_name());
    let segments: Vec<u64> = segment::list_rotated(base)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let lock = format!("{name}.lock");
    for entry in entries {
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            problems.push(unknown(&path));
            continue;
        };
        if file_name == name || file_name == lock {
            continue;
        }
        let problem = match Sibling::classify(name, file_name) {
            Some(Sibling::Segment(_)) | Some(Sibling::Meta(_)) => None,
            Some(Sibling::Index(n)) if segments.contains(&n) => None,
            Some(Sibling::Index(_)) | Some(Sibling::IndexTmp(_)) => Some(Problem::new(
                ProblemKind::OrphanIndex,
                &path,
                "an index whose segment is gone, or one left half-written: readers never use \
                 it, and the next open deletes it",
            )),
            Some(Sibling::MetaTmp(_)) => Some(Problem::new(
                ProblemKind::UnfinishedMetadata,
                &path,
                "a metadata file a crash interrupted while it was being created: it never held \
                 an entry, readers never use it, and the next open deletes it",
            )),
            None => Some(other_file(name, file_name, &path)),
        };
        problems.extend(problem);
    }
    Ok(())
}

/// A file beside the journal that is not one of its segments or indexes.
fn other_file(base_name: &str, file_name: &str, path: &Path) -> Problem {
    let rest = file_name
        .strip_prefix(base_name)
        .and_then(|r| r.strip_prefix('.'));
    if let Some(offset) = rest.and_then(|r| r.strip_prefix("broken-")) {
        return Problem::new(
            ProblemKind::Evidence,
            path,
            format!(
                "bytes an open cut from the end of the active file at byte {offset} (an \
                 unfinished write, never acknowledged), kept for inspection; delete it once \
                 looked at"
            ),
        );
    }
    let meta = rest.and_then(|r| r.strip_suffix("meta")).is_some_and(|r| {
        r.is_empty()
            || r.strip_suffix('.')
                .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
    });
    if meta {
        return Problem::new(
            ProblemKind::Metadata,
            path,
            "named like a metadata file of the first design draft; this version names them \
             journal.jsonl.from-<seq>.meta and ignores this one",
        );
    }
    unknown(path)
}

fn unknown(path: &Path) -> Problem {
    Problem::new(
        ProblemKind::UnknownFile,
        path,
        "not a file of this journal: readers and the server ignore it",
    )
}

fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join(JOURNAL_FILE);
        std::fs::write(&path, format!("{}{body}", segment::header_line(1))).unwrap();
        path
    }

    fn kinds(report: &Report) -> Vec<ProblemKind> {
        report.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn every_cut_of_a_clean_active_file_is_at_worst_an_unfinished_write() {
        let dir = tempfile::tempdir().unwrap();
        let body = "{\"a\":1}\n[2]\n\"three\"\n";
        let full = format!("{}{body}", segment::header_line(1));
        let header_len = segment::header_line(1).len();
        for cut in header_len..=full.len() {
            let path = dir.path().join(JOURNAL_FILE);
            std::fs::write(&path, &full.as_bytes()[..cut]).unwrap();
            for check in [verify_journal, inspect_journal] {
                let report = check(&path).unwrap();
                assert!(
                    report.worst() <= Some(Severity::Warning),
                    "cut {cut}: {report:?}"
                );
                let lines = full.as_bytes()[header_len..cut]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count() as u64;
                assert_eq!(report.records(), lines, "cut {cut}");
            }
        }
    }

    #[test]
    fn an_invalid_line_is_damage_in_the_middle_and_a_tail_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), "1\n{oops\n3\n");
        let report = verify_journal(&path).unwrap();
        assert_eq!(kinds(&report), vec![ProblemKind::InvalidLine]);
        assert_eq!(report.problems[0].seq, Some(2));
        assert_eq!(report.problems[0].line, Some(3));
        let path = journal(dir.path(), "1\n2\n{oops\n\0\0");
        let report = verify_journal(&path).unwrap();
        assert_eq!(kinds(&report), vec![ProblemKind::UnfinishedWrite]);
        assert_eq!(report.problems[0].seq, Some(3));
    }

    #[test]
    fn garbage_is_reported_in_bounded_lines_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let mut body = String::new();
        for i in 0..100 {
            body.push_str(&format!("{{bad{i}\n1\n"));
        }
        body.push_str("\u{fffd}\0\n\n\n1");
        let path = journal(dir.path(), &body);
        let report = verify_journal(&path).unwrap();
        assert_eq!(
            report
                .problems
                .iter()
                .filter(|p| p.kind == ProblemKind::InvalidLine)
                .count(),
            MAX_INVALID_LINES_REPORTED + 1
        );
        let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert!(verify_journal(&path).unwrap().is_damaged());
    }

    #[test]
    fn sequence_numbers_at_the_end_of_u64_are_damage_not_an_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        // The store refuses a header beyond `segment::MAX_FIRST_SEQ` as forged; so does
        // verify, and counting past it never overflows.
        std::fs::write(
            &path,
            format!("{}1\n2\n3", segment::header_line(u64::MAX - 1)),
        )
        .unwrap();
        let report = verify_journal(&path).unwrap();
        assert!(report.is_damaged(), "{:?}", kinds(&report));
        let text = format!("{:?}", report.problems);
        assert!(text.contains("beyond what any journal reaches"), "{text}");
    }

    #[test]
    fn any_bytes_after_the_headers_are_reported_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join(JOURNAL_FILE);
        let alphabet = [b'1', b'\n', b'\n', 0, b'{', b'"', b'x', 0xff, b' ', b'}'];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            for (path, first_seq) in [(base.with_extension("jsonl.000001"), 1), (base.clone(), 4)] {
                let mut bytes = segment::header_line(first_seq).into_bytes();
                let len = random() % 64;
                bytes.extend((0..len).map(|_| alphabet[(random() % 10) as usize]));
                std::fs::write(&path, &bytes).unwrap();
            }
            let full = verify_journal(&base).unwrap();
            let quick = inspect_journal(&base).unwrap();
            assert_eq!(full.segments, quick.segments);
            assert!(full.worst() >= quick.worst(), "{full:?}\n{quick:?}");
        }
    }

    #[test]
    fn zeros_after_the_records_are_information() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), "1\n2\n\0\0\0\0");
        let report = verify_journal(&path).unwrap();
        assert_eq!(kinds(&report), vec![ProblemKind::UnwrittenSpace]);
        assert_eq!(report.records(), 2);
    }

    /// The first error a reader of the files meets reading the journal at `base` from its
    /// start, if any.
    async fn first_read_error(base: &Path) -> Option<MiniStoreError> {
        let mut reader = crate::MiniStore::read_from(base, 1);
        loop {
            match reader.next_batch(4096).await {
                Ok(batch) if batch.is_empty() => return None,
                Ok(_) => {}
                Err(e) => return Some(e),
            }
        }
    }

    /// A journal of 38 small records, two per request, in segments of about 100 bytes (the
    /// active one holds the last three requests), each with its metadata file; its files,
    /// the lock aside.
    async fn small_segments(dir: &Path) -> Vec<PathBuf> {
        let base = dir.join(JOURNAL_FILE);
        let mut store = crate::MiniStoreOptions::new()
            .max_bytes_per_segment(100)
            .max_segments(100)
            .open(&base)
            .await
            .unwrap();
        for i in 0..19u64 {
            store.append_batch(&[i, i * 1000]).await.unwrap();
        }
        assert_eq!(store.durable().active_first_seq, 33);
        drop(store);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with(".lock"))
            .collect();
        files.sort();
        assert!(files.len() >= 6, "{files:?}");
        files
    }

    /// Checks that `verify` reports a checksum failure exactly where a reader of the files
    /// meets one (its first error), unless it names it otherwise: records missing between
    /// segments, or the same record as damage of another kind. Whether one was reported.
    async fn assert_reported_where_a_reader_meets_it(base: &Path, what: &str) -> bool {
        let report = verify_journal(base).unwrap();
        let found = report
            .problems
            .iter()
            .find(|p| p.kind == ProblemKind::Checksum)
            .map(|p| (p.file.clone(), p.seq, p.offset));
        let expected = match first_read_error(base).await {
            Some(MiniStoreError::Checksum {
                path, seq, offset, ..
            }) if !report.problems.iter().any(|p| {
                p.kind == ProblemKind::Gap
                    || (p.kind != ProblemKind::Checksum
                        && p.file == path
                        && p.seq == Some(seq)
                        && p.severity == Severity::Damage)
            }) =>
            {
                Some((path, Some(seq), Some(offset)))
            }
            _ => None,
        };
        assert_eq!(found, expected, "{what}: {:?}", report.problems);
        found.is_some()
    }

    #[tokio::test]
    async fn a_checksum_failure_is_reported_where_a_reader_meets_it_whatever_byte_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join(JOURNAL_FILE);
        let mut reported = 0;
        for file in &small_segments(dir.path()).await {
            let original = std::fs::read(file).unwrap();
            for (at, flip) in (0..original.len()).flat_map(|at| [(at, 0x01), (at, 0x80)]) {
                let mut bytes = original.clone();
                bytes[at] ^= flip;
                std::fs::write(file, &bytes).unwrap();
                let what = format!("{} byte {at} ^ {flip:#x}", file.display());
                reported +=
                    usize::from(assert_reported_where_a_reader_meets_it(&base, &what).await);
            }
            std::fs::write(file, &original).unwrap();
        }
        assert!(reported > 1000, "{reported}");
    }

    /// Several damages at once, some before a checksum failure: a reader stops at the first
    /// of them that stops it (a line that is not text where nothing checks it, records
    /// missing or doubled between segments), and so does the check.
    #[tokio::test]
    async fn a_checksum_failure_after_other_damage_is_reported_only_if_a_reader_gets_there() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join(JOURNAL_FILE);
        let files = small_segments(dir.path()).await;
        let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let mut reported = 0;
        for trial in 0..600 {
            for (file, bytes) in files.iter().zip(&originals) {
                std::fs::write(file, bytes).unwrap();
            }
            // Without its metadata, the oldest segment's lines are read unchecked.
            if random(3) == 0 {
                std::fs::remove_file(base.with_extension("jsonl.from-1.meta")).unwrap();
            }
            let mut damage = Vec::new();
            for _ in 0..1 + random(3) {
                let i = random(files.len());
                let Ok(mut bytes) = std::fs::read(&files[i]) else {
                    continue;
                };
                // A bit flipped, a byte that is not text, a line break more or less.
                let at = random(bytes.len());
                let new = [bytes[at] ^ 0x01, bytes[at] ^ 0x80, b'\n', b'x'][random(4)];
                bytes[at] = new;
                std::fs::write(&files[i], &bytes).unwrap();
                damage.push(format!("{} byte {at} = {new:#x}", files[i].display()));
            }
            let what = format!("trial {trial}: {damage:?}");
            reported += usize::from(assert_reported_where_a_reader_meets_it(&base, &what).await);
        }
        assert!(reported > 100, "{reported}");
    }
}
