//! What `open` repairs: the crash states of the files (a torn header, a torn tail, a
//! rotation cut short, segments of the published crate), and the metadata files: pair
//! the active segment with its metadata,
//! keep the longest prefix of entries whose records are all present and match their CRCs
//! (so a batch a crash cut short is dropped whole), and rebuild the idempotency keys.
//! And what it finds but leaves alone: records missing between segments (`find_gap`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::index::{self, SegmentShape};
use crate::keys::{self, Committed, KeyIndex, KeyMemory};
use crate::meta::{self, Entry};
use crate::segment::{self, Segment};
use crate::{MiniStoreError, Result};

/// The active segment's metadata after recovery.
#[derive(Debug)]
pub(crate) struct ActiveMeta {
    pub file: File,
    pub path: PathBuf,
    /// The first seq it covers (its header's).
    pub first_seq: u64,
    /// Bytes of the metadata file that hold whole, verified entries (the file is cut here).
    pub len: u64,
    /// Where the last verified entry's records end in the segment: the segment is cut here.
    pub covered_end: u64,
    /// The seq after the last verified entry's records.
    pub next_seq: u64,
    /// The newest commit time among its entries (0 if none).
    pub last_commit_ns: u64,
    /// Its verified entries, in order.
    pub entries: Vec<Entry>,
}

/// Pairs the active segment (`records` complete lines ending at `body_end`) with its
/// metadata file and repairs both to the longest verified prefix of entries, or creates
/// the metadata file for a segment that has none (a new segment, a crash during rotation
/// before its metadata existed, or a segment written before the journal had metadata:
/// its records stay, uncovered, and coverage starts after them).
///
/// What a crash can leave: the last commit group's entries and lines, each file in any
/// prefix or, after a power loss, any subset of its pages. Every earlier group was
/// fdatasynced in both files before the next was written. So an entry that is torn, fails
/// its CRC, or whose records are missing or fail theirs, is the last group's: it and
/// everything after it go. Unless an entry after it, whole and valid, belongs to a later
/// group (its `group_first_seq` is past the bad entry's seq) and its records are in the
/// file: then the bad entry was acknowledged, cutting would destroy records that are
/// there, and open refuses instead. (A file that simply ends early, every later record
/// gone with the bad one, is cut there as a torn tail: nothing present is lost.)
pub(crate) fn recover_active(
    base: &Path,
    active: &Segment,
    segment_file: &File,
    body_end: u64,
    records: u64,
) -> Result<ActiveMeta> {
    let end_seq = active.first_seq + records;
    let candidate = meta::list(base)?
        .into_iter()
        .rev()
        .find(|(seq, _)| *seq >= active.first_seq);
    let Some((seq, path)) = candidate else {
        return create(base, end_seq, body_end);
    };
    let contents = match meta::read(&path) {
        Ok(contents) => contents,
        // A header a crash cut short during creation (earlier versions created the file
        // under its name, then wrote the header; now it gets its name only once whole): the
        // file never held an entry, and no record was committed after it (the header is
        // fsynced before the first commit), so coverage starts after the segment's
        // records. Anything longer is refused.
        Err(MiniStoreError::BadMeta { .. })
            if std::fs::metadata(&path).is_ok_and(|m| m.len() <= meta::HEADER_LEN) =>
        {
            tracing::warn!(file = %path.display(), "replacing a metadata file whose header a crash cut short");
            std::fs::remove_file(&path).map_err(|e| MiniStoreError::io("deleting", &path, e))?;
            return create(base, end_seq, body_end);
        }
        Err(e) => return Err(e),
    };
    let header = contents.header;
    let bad = |reason: String| MiniStoreError::BadMeta {
        path: path.clone(),
        reason,
    };
    if header.first_seq != seq {
        return Err(bad(format!(
            "its name says it starts at seq {seq}, its header says {}",
            header.first_seq
        )));
    }
    if header.first_seq > end_seq || header.data_offset > body_end {
        return Err(MiniStoreError::Missing {
            path: active.path.clone(),
            expected: end_seq,
            reason: format!(
                "{} covers records from seq {} at byte {}, but {} ends at seq {} (byte {body_end})",
                path.display(),
                header.first_seq,
                header.data_offset,
                active.path.display(),
                end_seq.saturating_sub(1),
            ),
        });
    }
    let mut next_seq = header.first_seq;
    let mut covered_end = header.data_offset;
    let mut len = meta::HEADER_LEN;
    let mut last_commit_ns = 0;
    let mut kept = Vec::with_capacity(contents.entries.len());
    let mut failed: Option<String> = contents.stopped.clone();
    let after_damage = contents.after_damage;
    let mut rest = contents.entries.into_iter();
    for (offset, entry) in rest.by_ref() {
        let problem = if entry.first_seq != next_seq || entry.data_offset != covered_end {
            Some(format!(
                "the entry at byte {offset} is for seq {} at byte {}, expected seq {next_seq} at byte {covered_end}",
                entry.first_seq, entry.data_offset
            ))
        } else if entry.data_end() > body_end {
            Some(format!(
                "the records of seqs {}..{} (bytes {}..{}) are not all in {}",
                entry.first_seq,
                entry.end_seq(),
                entry.data_offset,
                entry.data_end(),
                active.path.display()
            ))
        } else {
            check_records(segment_file, &active.path, &entry)?
        };
        if let Some(problem) = problem {
            failed = Some(problem);
            break;
        }
        next_seq = entry.end_seq();
        covered_end = entry.data_end();
        last_commit_ns = last_commit_ns.max(entry.commit_unix_ns);
        len = offset + entry.encoded_len();
        kept.push(entry);
    }
    // A whole, valid entry of a later commit group after the first bad one proves that the
    // bad one was acknowledged (its group was fsynced before the later one was written):
    // that is damage, not an interrupted write. If that later group's records are in the
    // file, cutting would destroy them: nothing is cut, open refuses.
    if let Some(problem) = &failed
        && let Some((later_offset, later)) = rest
            .chain(after_damage)
            .find(|(_, e)| e.group_first_seq > next_seq && e.data_end() <= body_end)
    {
        return Err(bad(format!(
            "{problem}; but the entry at byte {later_offset} (seq {}) was committed after it, so this is damage, not an interrupted write. Nothing was changed; `ministore verify` shows the details",
            later.first_seq
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| MiniStoreError::io("opening", &path, e))?;
    if contents.file_len > len {
        tracing::warn!(
            file = %path.display(),
            offset = len,
            bytes = contents.file_len - len,
            reason = failed.as_deref().unwrap_or("entries without records"),
            "cut metadata entries of an interrupted commit (their records were never acknowledged)"
        );
        // Cut and fsync before anything is appended after it.
        file.set_len(len)
            .and_then(|_| file.sync_all())
            .map_err(|e| MiniStoreError::io("truncating", &path, e))?;
    }
    Ok(ActiveMeta {
        file,
        path,
        first_seq: header.first_seq,
        len,
        covered_end,
        next_seq,
        last_commit_ns,
        entries: kept,
    })
}

/// Deletes what crashes and the published crate leave behind, all in one listing: indexes
/// whose segment is gone (a crash or failure during retention, or the published crate's
/// retention, which does not know about them), and temporary indexes and metadata files a
/// crash left half-written (`.idx.tmp`; `.meta.tmp`, see
/// `segment::write_new_file_atomically`, never given its name, so it holds no entry: the
/// one a rotation was creating is normally consumed by `create` for the same seq before
/// this runs). Best effort: none of them is ever read, so a failure is only logged.
pub(crate) fn remove_leftovers(base: &Path) -> Result<()> {
    use segment::Sibling;
    let siblings = segment::list_siblings(base)?;
    let segments: Vec<u64> = siblings
        .iter()
        .filter_map(|(s, _)| match s {
            Sibling::Segment(n) => Some(*n),
            _ => None,
        })
        .collect();
    for (sibling, path) in siblings {
        let what = match sibling {
            Sibling::Index(n) if !segments.contains(&n) => "an index whose segment is gone",
            Sibling::IndexTmp(_) => "an index a crash left half-written",
            Sibling::MetaTmp(_) => "a metadata file a crash left half-created",
            Sibling::Index(_) | Sibling::Segment(_) | Sibling::Meta(_) => continue,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(file = %path.display(), "deleted {what}"),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not delete {what}")
            }
        }
    }
    Ok(())
}

/// Creates the metadata file of records from `first_seq`, which start at `data_offset`,
/// durably (file and directory entry) before any entry is written to it, and whole from
/// the moment it has its name: a reader that pairs a segment with it never meets a header
/// still being written (`write_new_file_atomically`). A file of that name, a header a
/// crash cut short, is replaced.
pub(crate) fn create(base: &Path, first_seq: u64, data_offset: u64) -> Result<ActiveMeta> {
    let path = segment::meta_path(base, first_seq);
    let header = meta::Header {
        first_seq,
        data_offset,
        created_unix_ns: meta::now_unix_ns(),
    };
    let file = segment::write_new_file_atomically(&path, &header.encode())?;
    Ok(ActiveMeta {
        file,
        path,
        first_seq,
        len: meta::HEADER_LEN,
        covered_end: data_offset,
        next_seq: first_seq,
        last_commit_ns: 0,
        entries: Vec::new(),
    })
}

/// Whether the records of `entry` are in the segment as they were committed: each line
/// where the entry says, ending in a newline, with its CRC. `Some(why)` if not.
fn check_records(file: &File, path: &Path, entry: &Entry) -> Result<Option<String>> {
    let mut data = vec![0u8; entry.data_len as usize];
    file.read_exact_at(&mut data, entry.data_offset)
        .map_err(|e| MiniStoreError::io("reading", path, e))?;
    let mut crcs = Vec::with_capacity(entry.count as usize);
    if data.last() == Some(&b'\n') || data.is_empty() {
        meta::line_crcs(&data, &mut crcs);
    }
    if crcs.len() != entry.count as usize {
        return Ok(Some(format!(
            "bytes {}..{} of {} do not hold the {} records of seq {}",
            entry.data_offset,
            entry.data_end(),
            path.display(),
            entry.count,
            entry.first_seq
        )));
    }
    if let Some(i) = (0..crcs.len()).find(|&i| crcs[i] != entry.record_crcs[i]) {
        return Ok(Some(format!(
            "record {} in {} fails its CRC32C",
            entry.first_seq + i as u64,
            path.display()
        )));
    }
    Ok(None)
}

/// Rebuilds the idempotency keys from the metadata files of records from
/// `first_retained` on (the retained segments'), ending with the active segment's verified
/// `active` entries. Metadata files of deleted segments (retention interrupted by a crash)
/// are deleted. A damaged sealed metadata file gives its keys up to the damage (logged):
/// keys are a promise about retries, not about records, which are read from the segments.
pub(crate) fn rebuild_keys(
    base: &Path,
    first_retained: u64,
    active_first_seq: u64,
    active_meta: &Path,
    active: &[Entry],
    max_keys: usize,
    memory: Option<KeyMemory>,
) -> Result<(KeyIndex, Vec<(u64, PathBuf)>)> {
    let mut keys = KeyIndex::new(max_keys, memory);
    let mut sealed = Vec::new();
    let metas = meta::list(base)?;
    for (seq, path) in metas {
        if path == active_meta {
            continue;
        }
        if seq < first_retained {
            tracing::info!(file = %path.display(), "deleting the metadata of a segment retention deleted");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if seq >= active_first_seq {
            continue; // not a sealed segment's, nor the active one's: a stray, ignored
        }
        match meta::read(&path) {
            Ok(contents) => {
                if let Some(why) = &contents.stopped {
                    tracing::warn!(file = %path.display(), reason = %why, "a sealed segment's metadata is damaged; keys after the damage are not remembered");
                }
                for (_, entry) in &contents.entries {
                    remember(&mut keys, entry);
                }
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a sealed segment's metadata; its keys are not remembered")
            }
        }
        sealed.push((seq, path));
    }
    for entry in active {
        remember(&mut keys, entry);
    }
    keys.forget_before(first_retained);
    Ok((keys, sealed))
}

/// Adds the key of a committed entry, if it has one.
pub(crate) fn remember(keys: &mut KeyIndex, entry: &Entry) {
    if let Some(key) = &entry.key {
        keys.insert(
            keys::hash(key),
            Committed {
                first_seq: entry.first_seq,
                count: entry.count,
                fingerprint: entry.fingerprint,
            },
        );
    }
}

/// The first place where a segment does not end exactly where the next one starts (a
/// segment deleted from the middle, lost lines, extra lines), described for a person;
/// `None` when the segments chain. A sealed segment is counted from its index's last
/// entry when it has a usable one, so this reads less than 64 KiB of each.
pub(crate) fn find_gap(segments: &[Segment]) -> Result<Option<String>> {
    for pair in segments.windows(2) {
        let (seg, next) = (&pair[0], &pair[1]);
        if next.legacy {
            continue; // its first_seq was derived by counting this one: it chains by definition
        }
        let end = seg.first_seq + count_sealed(seg)?;
        if end != next.first_seq {
            return Ok(Some(segment::describe_gap(
                &seg.path,
                seg.first_seq,
                end,
                &next.path,
                next.first_seq,
            )));
        }
    }
    Ok(None)
}

/// Counts the records of a sealed segment, from the last entry of its index if it has a
/// usable one (an entry is used only if a line break precedes it, as readers check).
fn count_sealed(seg: &Segment) -> Result<u64> {
    let file = File::open(&seg.path).map_err(|e| MiniStoreError::io("opening", &seg.path, e))?;
    let len = file
        .metadata()
        .map_err(|e| MiniStoreError::io("reading metadata of", &seg.path, e))?
        .len();
    let shape = SegmentShape {
        first_seq: seg.first_seq,
        header_len: seg.header_len,
        len,
    };
    let (seq, from) = match index::load_sidecar(&seg.path, shape).and_then(|i| i.lookup(u64::MAX)) {
        Some(e) if segment::follows_line_break(&file, e.offset) => (e.seq, e.offset),
        _ => (seg.first_seq, seg.header_len),
    };
    Ok(seq - seg.first_seq + segment::scan_body(&file, &seg.path, from, false, |_, _| {})?.records)
}

/// Takes the journal's lock file, so that two writers never interleave in one file.
pub(crate) fn lock_journal(base: &Path) -> Result<File> {
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
pub(crate) fn create_active(base: &Path, rotated: &[Segment]) -> Result<Segment> {
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
/// header only beside rotated segments (a crash mid-rotation, step 6); alone, it could as
/// well be anyone's, and the catalog refuses it. Any other file is left alone.
pub(crate) fn clear_torn_header(base: &Path) -> Result<()> {
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
pub(crate) fn upgrade_legacy(seg: &mut Segment) -> Result<()> {
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
pub(crate) fn cut_torn_tail(file: &File, path: &Path, body: segment::Body) -> Result<()> {
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
