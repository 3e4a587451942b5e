//! One segment file: its header, its name (and those of the files beside it), where its
//! records end, and the catalog of all segments of a journal.
//!
//! A journal at `dir/journal.jsonl` is the active file `journal.jsonl` plus rotated segments
//! `journal.jsonl.000001`, `journal.jsonl.000002`, ... (any number of digits, ordered
//! numerically; higher is newer). Each file starts with a header line and holds one JSON
//! record per `\n`-terminated line.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{MiniStoreError, Result};

/// Every journal file starts with this; the published `ministore` crate accepts any first
/// line that does.
pub(crate) const MAGIC_PREFIX: &str = "// MINISTORE JOURNAL v";
/// The line-format version we write: the same JSONL format as the published crate.
const FORMAT_VERSION: &str = "0.1.4";
/// A header line longer than this is not a header.
const MAX_HEADER_LEN: usize = 4096;
/// Read size for scanning segment bodies.
const SCAN_CHUNK: usize = 1 << 20;

/// The header line of a new segment whose first record has sequence number `first_seq`.
///
/// Our addition (`first_seq=N`) follows the published prefix and version on the same line,
/// so the published crate still reads our files, and sequence numbers survive retention:
/// a segment knows where it starts without reading the ones before it.
pub(crate) fn header_line(first_seq: u64) -> String {
    format!("{MAGIC_PREFIX}{FORMAT_VERSION} first_seq={first_seq}\n")
}

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// `None` for a segment written by the published crate (no `first_seq=`).
    pub first_seq: Option<u64>,
    /// Length of the header line in bytes, newline included.
    pub len: u64,
}

/// The largest `first_seq` a header may state. No journal gets near it (at a million
/// records a second, 146,000 years), and below it no sum of a seq and a count of records
/// in files can overflow a `u64`: a header claiming more is damage or forgery, refused.
pub(crate) const MAX_FIRST_SEQ: u64 = 1 << 62;

/// Parses the header at the start of `head` (the first bytes of the file at `path`).
pub(crate) fn parse_header(path: &Path, head: &[u8]) -> Result<Header> {
    let bad = |reason: String| MiniStoreError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return Err(bad(if head.is_empty() {
            "the file is empty".into()
        } else if head.iter().all(|&b| b == 0) {
            "it starts with zero bytes only, no header and no records (a crash while the \
             journal was being created can leave this); if it holds nothing you need, delete \
             it and the journal starts afresh"
                .into()
        } else if head.len() >= MAX_HEADER_LEN {
            format!("no line break in the first {MAX_HEADER_LEN} bytes")
        } else {
            format!("the first line {} is incomplete", preview(head))
        }));
    };
    let line = &head[..end];
    let Some(rest) = line.strip_prefix(MAGIC_PREFIX.as_bytes()) else {
        return Err(bad(format!("found {}", preview(line))));
    };
    let rest = String::from_utf8_lossy(rest);
    let mut first_seq = None;
    // Tokens after the version are `key=value`; unknown ones are ignored so that newer
    // writers can add more without locking older readers out.
    for token in rest.split_whitespace().skip(1) {
        if let Some(v) = token.strip_prefix("first_seq=") {
            match v.parse::<u64>() {
                Ok(n) if (1..=MAX_FIRST_SEQ).contains(&n) => first_seq = Some(n),
                Ok(n) if n > MAX_FIRST_SEQ => {
                    return Err(bad(format!(
                        "first_seq {n} is beyond what any journal reaches (at most 2^62)"
                    )));
                }
                _ => return Err(bad(format!("invalid first_seq {v:?}"))),
            }
        }
    }
    Ok(Header {
        first_seq,
        len: end as u64 + 1,
    })
}

/// Reads and parses the header of the file at `path`.
pub(crate) fn read_header(path: &Path) -> Result<Header> {
    let file = File::open(path).map_err(|e| MiniStoreError::io("opening", path, e))?;
    parse_header(path, &read_head(&file, path)?)
}

/// The first bytes of a file, enough to hold any header.
pub(crate) fn read_head(file: &File, path: &Path) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    file.take(MAX_HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| MiniStoreError::io("reading", path, e))?;
    Ok(head)
}

/// A short, printable rendering of the start of a line, for error messages.
fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(40)];
    let text = String::from_utf8_lossy(cut);
    let ellipsis = if bytes.len() > cut.len() { "..." } else { "" };
    format!("{:?}{ellipsis}", text)
}

/// The path of rotated segment `number` of the journal whose active file is `base`.
/// Six digits, as the published crate writes them; more when the number needs them.
pub(crate) fn rotated_path(base: &Path, number: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{number:06}"));
    PathBuf::from(name)
}

/// The path of the metadata file (see `meta`) of the journal whose active file is `base`,
/// whose first entry is record `first_seq`: `<base>.from-<first_seq>.meta`.
pub(crate) fn meta_path(base: &Path, first_seq: u64) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".from-{first_seq}.meta"));
    PathBuf::from(name)
}

/// The directory holding the journal's files.
pub(crate) fn dir_of(base: &Path) -> &Path {
    match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A file beside the journal's active file that belongs to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sibling {
    /// Rotated segment `n`: `<base>.<digits>`.
    Segment(u64),
    /// The sparse index of segment `n`: `<base>.<digits>.idx`.
    Index(u64),
    /// An index being written, or left by a crash while it was: `<base>.<digits>.idx.tmp`.
    IndexTmp(u64),
    /// The metadata file whose first entry is seq `n`: `<base>.from-<n>.meta` (see `meta`).
    Meta(u64),
    /// A metadata file being created, or left by a crash while it was:
    /// `<base>.from-<n>.meta.tmp` (see `write_new_file_atomically`). It never held an entry.
    MetaTmp(u64),
}

impl Sibling {
    /// What the file named `file_name` is to the journal whose active file is named
    /// `base_name`; `None` for anything else (the lock, `.broken-` evidence, other files).
    pub(crate) fn classify(base_name: &str, file_name: &str) -> Option<Sibling> {
        let rest = file_name.strip_prefix(base_name)?.strip_prefix('.')?;
        let meta = rest.strip_prefix("from-");
        let (digits, kind): (&str, fn(u64) -> Sibling) =
            if let Some(d) = meta.and_then(|r| r.strip_suffix(".meta")) {
                (d, Sibling::Meta)
            } else if let Some(d) = meta.and_then(|r| r.strip_suffix(".meta.tmp")) {
                (d, Sibling::MetaTmp)
            } else if let Some(d) = rest.strip_suffix(".idx.tmp") {
                (d, Sibling::IndexTmp)
            } else if let Some(d) = rest.strip_suffix(".idx") {
                (d, Sibling::Index)
            } else {
                (rest, Sibling::Segment)
            };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(kind)
    }
}

/// The files of the journal at `base` other than its active file and lock: rotated
/// segments and their indexes, in directory order. A missing directory has none.
pub(crate) fn list_siblings(base: &Path) -> Result<Vec<(Sibling, PathBuf)>> {
    let dir = dir_of(base);
    let Some(name) = base.file_name().and_then(|n| n.to_str()) else {
        return Err(MiniStoreError::InvalidArgument(format!(
            "journal path {} must end in a UTF-8 file name",
            base.display()
        )));
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MiniStoreError::io("listing", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| MiniStoreError::io("listing", dir, e))?;
        if let Some(sibling) = entry
            .file_name()
            .to_str()
            .and_then(|f| Sibling::classify(name, f))
        {
            found.push((sibling, entry.path()));
        }
    }
    Ok(found)
}

/// Rotated segments of the journal at `base`, oldest first. A missing directory has none.
pub(crate) fn list_rotated(base: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = list_siblings(base)?
        .into_iter()
        .filter_map(|(sibling, path)| match sibling {
            Sibling::Segment(n) => Some((n, path)),
            _ => None,
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    Ok(found)
}

/// Makes directory entries (created, renamed, deleted files) durable.
///
/// Without this, a crash after `rename` or `create` can bring back the old name or lose the
/// new file even though its data was fsynced.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| MiniStoreError::io("fsyncing directory", dir, e))
}

/// Creates `dir` and its missing parents, durably: a new directory is only an entry in its
/// parent until the parent is fsynced, so after a power loss a journal created without
/// that could vanish with the acknowledged records in it. Each directory created is
/// fsynced in its parent, from the top down; the journal's own files are fsynced in `dir`
/// when they are created (`write_new_file`).
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    // Up to the first path that exists: if that is not a directory, creating below it
    // fails with ENOTDIR, as it should.
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            // Made by someone else meanwhile: it exists, which is all we need of it; its
            // parent's fsync below still covers the entry.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(MiniStoreError::io("creating directory", path, e)),
        }
        sync_dir(dir_of(path))?;
    }
    Ok(())
}

/// Where the records of one segment end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Body {
    /// Complete records (valid lines, when validated).
    pub records: u64,
    /// Offset just past the last complete record: where the next one goes.
    pub end: u64,
    /// The file's length. Bytes from `end` to here are a torn or garbage tail.
    pub file_len: u64,
}

/// Reads the body of a segment after its header.
///
/// Without `validate` it counts `\n`-terminated lines. With it, each line must also be valid
/// JSON; invalid lines at the very end (a torn or zero-filled tail left by a crash) stop the
/// count, but an invalid line followed by a valid one is corruption and an error: a crash
/// only damages the end of a file, so damage in the middle is not ours to repair.
///
/// With `validate`, the first NUL byte also ends the records: the line holding it and
/// everything after it are the tail. JSON text never holds a raw NUL, and the writer
/// extends the active file with zeros ahead of its records (`Writer::preallocate`), so a
/// NUL is space not (yet) written. After a power loss during a commit that spans several
/// pages, any of those pages may still hold its zeros while later ones hold the commit's
/// bytes: valid lines after a zeroed one are then the rest of that unacknowledged commit,
/// not damage in the middle of the file. Every acknowledged record lies before the first
/// NUL, since it was fsynced before any later write.
///
/// `on_record` is told where each complete record starts: its number among those counted
/// (0 for the first) and the offset of its line.
pub(crate) fn scan_body(
    file: &File,
    path: &Path,
    header_len: u64,
    validate: bool,
    mut on_record: impl FnMut(u64, u64),
) -> Result<Body> {
    let file_len = file
        .metadata()
        .map_err(|e| MiniStoreError::io("reading metadata of", path, e))?
        .len();
    let mut body = Body {
        records: 0,
        end: header_len,
        file_len,
    };
    // The first invalid line seen: (line number, reason). Fatal if a valid line follows.
    let mut invalid: Option<(u64, String)> = None;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut carry: Vec<u8> = Vec::new();
    let mut pos = header_len;
    let mut line_no = 1; // the header is line 1
    let mut line_start = header_len;
    while pos < file_len {
        let want = SCAN_CHUNK.min((file_len - pos) as usize);
        let n = file
            .read_at(&mut buf[..want], pos)
            .map_err(|e| MiniStoreError::io("reading", path, e))?;
        if n == 0 {
            break; // the file shrank under us; what we have is what there is
        }
        let unwritten = if validate {
            memchr::memchr(0, &buf[..n])
        } else {
            None
        };
        let mut rest = &buf[..unwritten.unwrap_or(n)];
        pos += n as u64;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let line_end = line_start + carry.len() as u64 + i as u64 + 1;
            line_no += 1;
            let valid = !validate || {
                let line: &[u8] = if carry.is_empty() {
                    &rest[..i]
                } else {
                    carry.extend_from_slice(&rest[..i]);
                    &carry
                };
                match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                    Ok(_) => true,
                    Err(e) => {
                        if invalid.is_none() {
                            invalid = Some((line_no, format!("invalid JSON: {e}")));
                        }
                        false
                    }
                }
            };
            if valid {
                if let Some((bad_line, reason)) = invalid.take() {
                    return Err(MiniStoreError::Corrupt {
                        path: path.to_path_buf(),
                        line: bad_line,
                        reason: format!(
                            "{reason}; valid records follow it, so this is damage, not a torn write"
                        ),
                    });
                }
                on_record(body.records, line_start);
                body.records += 1;
                body.end = line_end;
            }
            carry.clear();
            line_start = line_end;
            rest = &rest[i + 1..];
        }
        if validate {
            carry.extend_from_slice(rest);
        } else {
            // Only the length of a partial line matters when counting.
            carry.resize(carry.len() + rest.len(), 0);
        }
        if unwritten.is_some() {
            break;
        }
    }
    Ok(body)
}

/// One file of a journal, as readers and the writer see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub path: PathBuf,
    /// `None` for the active file.
    pub number: Option<u64>,
    pub first_seq: u64,
    pub header_len: u64,
    /// Written by the published crate: `first_seq` was derived by counting records.
    pub legacy: bool,
}

/// All segments of the journal at `base`, oldest first, the active file (if it exists and
/// is not empty) last.
///
/// Segments with a `first_seq` header cost one small read each. For segments of the
/// published crate (no `first_seq`) the records of the segment before are counted; the
/// oldest of those is taken to start at 1.
pub(crate) fn catalog(base: &Path) -> Result<Vec<Segment>> {
    // A rotation (renaming the active file, then creating the next) or a retention
    // deletion between listing the files and reading their headers makes a listed file
    // vanish: list again. Each retry means the writer moved on, so a few always suffice
    // unless rotations come faster than a directory listing; then say so.
    for _ in 0..8 {
        match catalog_once(base) {
            Err(MiniStoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            done => return done,
        }
    }
    Err(MiniStoreError::Io {
        op: "listing the segments of",
        path: base.to_path_buf(),
        source: std::io::Error::other("segment files kept vanishing while being listed"),
    })
}

fn catalog_once(base: &Path) -> Result<Vec<Segment>> {
    let rotated = list_rotated(base)?;
    let mut files: Vec<(Option<u64>, PathBuf)> =
        rotated.iter().map(|(n, p)| (Some(*n), p.clone())).collect();
    match std::fs::metadata(base) {
        Ok(m) if m.len() > 0 => files.push((None, base.to_path_buf())),
        Ok(_) => {}
        // No active file: none yet, or one just renamed by a rotation, which the second
        // listing below sees.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(MiniStoreError::io("reading metadata of", base, e)),
    }
    let mut segments: Vec<Segment> = Vec::with_capacity(files.len());
    for (number, path) in files {
        let header = match read_header(&path) {
            Ok(header) => header,
            // A new active file that a rotation has created but not yet written: the
            // listing shows the rotation.
            Err(_) if number.is_none() && list_rotated(base)? != rotated => {
                return Err(segments_changed(base));
            }
            Err(e) => return Err(e),
        };
        let first_seq = match header.first_seq {
            Some(n) => n,
            None => match segments.last() {
                Some(prev) => prev.first_seq + count_records(prev)?,
                None => 1,
            },
        };
        if let Some(prev) = segments.last()
            && first_seq < prev.first_seq
        {
            return Err(MiniStoreError::Corrupt {
                path: path.clone(),
                line: 1,
                reason: format!(
                    "segment starts at seq {first_seq}, before the segment {} which starts at {}",
                    prev.path.display(),
                    prev.first_seq
                ),
            });
        }
        segments.push(Segment {
            path,
            number,
            first_seq,
            header_len: header.len,
            legacy: header.first_seq.is_none(),
        });
    }
    // A whole rotation between the first listing and the active file's header (renamed to
    // the next number, a new active file written) leaves no listed file missing, but the
    // segment it made unlisted: its records would look lost. Any rotation or deletion
    // since the first listing shows in a second one; then start over.
    if list_rotated(base)? != rotated {
        return Err(segments_changed(base));
    }
    Ok(segments)
}

/// What makes [`catalog`] list again.
fn segments_changed(base: &Path) -> MiniStoreError {
    MiniStoreError::io(
        "listing the segments of",
        base,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the segments changed while they were listed",
        ),
    )
}

/// Whether the byte before `offset` is a line break: the test an index entry must pass
/// before a reader, open or `verify` trusts it.
pub(crate) fn follows_line_break(file: &File, offset: u64) -> bool {
    let mut byte = [0u8];
    offset > 0 && matches!(file.read_at(&mut byte, offset - 1), Ok(1) if byte[0] == b'\n')
}

/// Whether every byte of `file` from `from` to `until` (or its end, if sooner) is zero.
/// Bounded by `until` as well as by the end, so it ends on a file that keeps growing.
pub(crate) fn zeros_from(file: &File, path: &Path, mut from: u64, until: u64) -> Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    while from < until {
        let want = buf
            .len()
            .min((until - from).min(usize::MAX as u64) as usize);
        let n = file
            .read_at(&mut buf[..want], from)
            .map_err(|e| MiniStoreError::io("reading", path, e))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        from += n as u64;
    }
    Ok(true)
}

/// Whether the active file whose first bytes are `head` holds a header a crash cut short:
/// a start of the magic (or the magic without its line break), then only zeros, as a file
/// system can leave a new file's bytes before rotation's fsync. Zero bytes of header count
/// only beside rotated segments (`rotated_exist`, asked only then): alone, nothing says the
/// file is ours. `open` replaces such a header; `verify` reports it as what open repairs.
/// The zeros are read up to `until` (or the end): `verify` passes the length it measured,
/// so its read ends on a file that grows meanwhile.
pub(crate) fn is_torn_header(
    file: &File,
    path: &Path,
    head: &[u8],
    until: u64,
    rotated_exist: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    let written = &head[..memchr::memchr(0, head).unwrap_or(head.len())];
    let magic = MAGIC_PREFIX.as_bytes();
    Ok(!written.contains(&b'\n')
        && written.len() < MAX_HEADER_LEN
        && (magic.starts_with(written) || written.starts_with(magic))
        && (!written.is_empty() || rotated_exist()?)
        && zeros_from(file, path, written.len() as u64, until)?)
}

/// How a gap between two files reads in errors and reports.
pub(crate) fn describe_gap(
    ended: &Path,
    first: u64,
    end: u64,
    next: &Path,
    next_first: u64,
) -> String {
    let held = match end.checked_sub(1) {
        Some(last) if last >= first => format!("records {first}..={last}"),
        _ => "no records".to_owned(),
    };
    format!(
        "{} holds {held} but the next file, {}, starts at {next_first}",
        ended.display(),
        next.display()
    )
}

/// Counts the complete records of a segment.
pub(crate) fn count_records(segment: &Segment) -> Result<u64> {
    let file =
        File::open(&segment.path).map_err(|e| MiniStoreError::io("opening", &segment.path, e))?;
    Ok(scan_body(&file, &segment.path, segment.header_len, false, |_, _| {})?.records)
}

/// Writes `bytes` to a new file at `path` and makes it durable (file and directory entry).
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<File> {
    let file = create_synced(path, bytes)?;
    sync_dir(dir_of(path))?;
    Ok(file)
}

/// Writes `bytes` as the file at `path`, replacing any file of that name, so that no one
/// ever sees the file at `path` other than complete: a reader that finds the name finds
/// all of `bytes` behind it, and a crash leaves the old file (or none) and at worst a
/// stray `<path>.tmp`. Order: write `<path>.tmp`, fsync it (its bytes are on disk before
/// the name points at them), rename it to `path` (atomic), fsync the directory (the new
/// name survives a crash). Returns the file, open for reading and writing.
pub(crate) fn write_new_file_atomically(path: &Path, bytes: &[u8]) -> Result<File> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A `.tmp` of this name was left by a crash in this very step: it holds nothing anyone
    // was told about.
    let _ = std::fs::remove_file(&tmp);
    let file = create_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| MiniStoreError::io("renaming to", path, e))?;
    sync_dir(dir_of(path))?;
    Ok(file)
}

/// Creates the file at `path` (which must not exist), open for reading and writing, with
/// `bytes` in it, fsynced; its directory entry is the caller's to make durable.
fn create_synced(path: &Path, bytes: &[u8]) -> Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| MiniStoreError::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| MiniStoreError::io("writing", path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotations as the writer makes them (rename the active file to the next number, then
    /// write the new active file, and retention deleting the oldest), each segment holding
    /// one record, while another thread catalogs: every catalog is whole, each segment
    /// starting one after the one before.
    #[test]
    fn a_catalog_taken_during_rotations_never_skips_a_segment() {
        const ROTATIONS: u64 = 300;
        const KEPT: u64 = 4;
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("journal.jsonl");
        let segment = |first_seq: u64| format!("{}{{}}\n", header_line(first_seq));
        std::fs::write(&base, segment(1)).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for n in 1..=ROTATIONS {
                    std::fs::rename(&base, rotated_path(&base, n)).unwrap();
                    std::fs::write(&base, segment(n + 1)).unwrap();
                    if n > KEPT {
                        std::fs::remove_file(rotated_path(&base, n - KEPT)).unwrap();
                    }
                    // Pacing, not synchronisation: a catalog that meets a rotation starts
                    // over, and gives up after a few that come faster than it can list.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            let mut catalogs = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let segments = catalog(&base).unwrap();
                for pair in segments.windows(2) {
                    assert_eq!(
                        pair[1].first_seq,
                        pair[0].first_seq + 1,
                        "{} follows {}",
                        pair[1].path.display(),
                        pair[0].path.display()
                    );
                }
                catalogs += 1;
            }
            assert!(catalogs > 0);
        });
    }

    #[test]
    fn missing_directories_are_created_from_the_top_down_and_existing_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
        std::fs::write(tmp.path().join("a/file"), b"x").unwrap();
        let err = create_dir_durable(&tmp.path().join("a/file/d")).unwrap_err();
        assert!(err.to_string().contains("creating directory"), "{err}");
    }

    #[test]
    fn header_round_trips_and_keeps_the_published_prefix() {
        let line = header_line(42);
        assert!(line.starts_with("// MINISTORE JOURNAL v0.1.4 "));
        let h = parse_header(Path::new("x"), line.as_bytes()).unwrap();
        assert_eq!(h.first_seq, Some(42));
        assert_eq!(h.len, line.len() as u64);
    }

    #[test]
    fn published_header_has_no_first_seq() {
        let h = parse_header(Path::new("x"), b"// MINISTORE JOURNAL v0.1.4\n{}\n").unwrap();
        assert_eq!(h.first_seq, None);
        assert_eq!(h.len, 28);
    }

    #[test]
    fn foreign_first_lines_are_refused() {
        for head in [
            &b""[..],
            b"hello\n",
            b"// MINISTORE JOURNAL",
            b"{\"a\":1}\n",
        ] {
            let err = parse_header(Path::new("f"), head).unwrap_err();
            assert!(matches!(err, MiniStoreError::BadHeader { .. }), "{err}");
        }
    }

    #[test]
    fn rotated_names_sort_numerically_whatever_their_width() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("j.jsonl");
        for name in [
            "j.jsonl.999",
            "j.jsonl.1000",
            "j.jsonl.000002",
            "j.jsonl.x1",
            "j.jsonl.lock",
            "k.jsonl.1",
            "j.jsonl.000002.idx",
            "j.jsonl.000003.idx",
            "j.jsonl.000003.idx.tmp",
            "j.jsonl.idx",
            "j.jsonl.1.idx.x",
            "j.jsonl.x.idx",
            "j.jsonl.broken-120",
            "j.jsonl.from-12.meta",
            "j.jsonl.from-12.meta.tmp",
            "j.jsonl.from-12.meta.x",
            "j.jsonl.from-.meta",
            "j.jsonl.from-1x.meta",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let numbers: Vec<u64> = list_rotated(&base)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(numbers, vec![2, 999, 1000]);
        // Indexes and metadata files are never mistaken for segments, and both are told
        // apart from their temp files.
        let mut others: Vec<Sibling> = list_siblings(&base)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| !matches!(s, Sibling::Segment(_)))
            .collect();
        others.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(
            others,
            vec![
                Sibling::Index(2),
                Sibling::Index(3),
                Sibling::IndexTmp(3),
                Sibling::Meta(12),
                Sibling::MetaTmp(12)
            ]
        );
        assert_eq!(rotated_path(&base, 7), dir.path().join("j.jsonl.000007"));
        assert_eq!(
            meta_path(&base, 12),
            dir.path().join("j.jsonl.from-12.meta")
        );
        assert_eq!(
            rotated_path(&base, 1234567),
            dir.path().join("j.jsonl.1234567")
        );
    }
}
