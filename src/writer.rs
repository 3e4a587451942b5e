//! The writer of a journal: its files, the commit (records and metadata, write and
//! fsync, in the order documented at each step), rotation and retention. `MiniStore`
//! (`store.rs`) is its async front; what open repairs is in `recovery.rs`.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::durable::Durable;
use crate::index::{self, ActiveIndex, SharedIndex, SparseIndex};
use crate::json::JsonLine;
use crate::keys::{self, Committed, KeyIndex};
use crate::meta::{self, Entry};
use crate::recovery;
use crate::segment::{self, Segment};
use crate::syncer;
use crate::{Append, Appended, MiniStoreError, MiniStoreOptions, Result};

/// One request of a commit group, as the writer takes it: its records, already encoded
/// (one `\n`-terminated line each) or as JSON lines, its key and its expectation.
pub(crate) struct Request<'a> {
    pub(crate) lines: Lines<'a>,
    pub(crate) key: Option<&'a str>,
    pub(crate) expected_last_seq: Option<u64>,
}

pub(crate) enum Lines<'a> {
    Encoded { buf: &'a [u8], count: u64 },
    Json(&'a [JsonLine]),
}

impl<'a> From<&'a Append> for Request<'a> {
    fn from(append: &'a Append) -> Self {
        Request {
            lines: Lines::Json(&append.lines),
            key: append.key.as_deref(),
            expected_last_seq: append.expected_last_seq,
        }
    }
}

impl Lines<'_> {
    /// Appends the records to `out`; how many there are.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> u64 {
        match self {
            Lines::Encoded { buf, count } => {
                out.extend_from_slice(buf);
                *count
            }
            Lines::Json(lines) => {
                for line in lines.iter() {
                    out.extend_from_slice(line.as_bytes());
                    out.push(b'\n');
                }
                lines.len() as u64
            }
        }
    }
}

/// Most records one request may hold: its metadata entry keeps a CRC of each (4 bytes) in
/// an entry of at most 4 GiB.
const MAX_RECORDS_PER_REQUEST: u64 = 1 << 28;

/// What the writer decided for each request of a group before writing it.
enum Outcome {
    /// Answered without writing: a duplicate, or refused.
    Done(Result<Appended>),
    /// Written at these seqs, if the commit succeeds.
    Written(Range<u64>),
    /// The same key and records as request `n` of this group: its duplicate.
    SameAs(usize),
}

/// How far the active file is extended with zeros ahead of the records at a time (see
/// `Writer::preallocate`). The commit that extends writes and fsyncs these zeros too: at
/// 1 MiB that cost ~1 ms every ~50 batches of 100 records (append_batch p99 1.55 ms here),
/// at 256 KiB a quarter of it (p99 0.65 ms), while the size change it saves is paid once
/// per ~1,300 records of 200 bytes either way.
const PREALLOCATE: u64 = 256 << 10;

/// What a writer knows of its journal besides its open files: everything the full open
/// reads and recovers from them (lengths, seqs, the segments and metadata files, the
/// active segment's index, the keys). A journal closed warm keeps it in memory
/// (`warm.rs`) and reopens from it without reading its files again.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) base: PathBuf,
    pub(crate) opts: MiniStoreOptions,
    /// Bytes of the active segment that hold its header and its records: its length.
    pub(crate) len: u64,
    pub(crate) active_first_seq: u64,
    pub(crate) next_seq: u64,
    /// Rotated segments, oldest first: (number, first_seq, path).
    pub(crate) rotated: VecDeque<(u64, u64, PathBuf)>,
    /// The sparse index of the active segment.
    pub(crate) index: SparseIndex,
    pub(crate) damage: Option<String>,
    pub(crate) meta_path: PathBuf,
    pub(crate) meta_first_seq: u64,
    /// The active metadata file's length.
    pub(crate) meta_len: u64,
    /// The metadata files of the rotated segments, oldest first: (first seq, path).
    pub(crate) sealed_metas: VecDeque<(u64, PathBuf)>,
    pub(crate) keys: KeyIndex,
    pub(crate) last_commit_ns: u64,
}

/// The synchronous writer behind a `MiniStore`: the active file and what is known of the
/// rotated ones. Every method documents what a crash at each step leaves behind.
#[derive(Debug)]
pub(crate) struct Writer {
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
    /// this process find it through `active_index`, and rotation writes it beside the
    /// sealed segment.
    index: SharedIndex,
    /// The handle readers are given to find `index`, filled while this writer is open.
    pub(crate) active_index: ActiveIndex,
    /// Set when a failure leaves the file in a state we cannot vouch for.
    poisoned: Option<String>,
    /// Set while bytes of a failed commit could not be cut off the active file: nothing is
    /// written after them until a commit manages the cut.
    uncut: Option<String>,
    /// Where records are missing between segments, as found at open.
    pub(crate) damage: Option<String>,
    /// The active segment's metadata file (see `meta`), opened read-write; shared with the
    /// helper thread that fsyncs it (`syncer`).
    meta_file: Arc<File>,
    meta_path: PathBuf,
    /// The first seq its header covers.
    meta_first_seq: u64,
    /// Bytes of the metadata file that hold durable entries.
    meta_len: u64,
    /// The metadata files of the rotated segments, oldest first: (first seq, path).
    sealed_metas: VecDeque<(u64, PathBuf)>,
    /// The idempotency keys of the retained records.
    pub(crate) keys: KeyIndex,
    /// The newest commit time written: commit times never go back within a journal.
    last_commit_ns: u64,
    /// Buffers of the group being committed, kept to reuse their memory.
    group_data: Vec<u8>,
    group_meta: Vec<u8>,
    /// Held for the writer's lifetime: one writer per journal, across processes.
    _lock: File,
}

impl Writer {
    pub(crate) fn open(base: PathBuf, opts: MiniStoreOptions) -> Result<Writer> {
        let dir = segment::dir_of(&base).to_path_buf();
        segment::create_dir_durable(&dir)?;
        if base.is_dir() {
            return Err(MiniStoreError::InvalidArgument(format!(
                "{} is a directory; give the path of the journal file, e.g. {}",
                base.display(),
                base.join("journal.jsonl").display()
            )));
        }
        let lock = recovery::lock_journal(&base)?;
        Writer::open_locked(base, opts, lock)
    }

    /// The full open, under the journal's `lock`: repairs what a crash left and reads
    /// everything the writer needs to know from the files.
    pub(crate) fn open_locked(base: PathBuf, opts: MiniStoreOptions, lock: File) -> Result<Writer> {
        recovery::clear_torn_header(&base)?;

        let mut segments = segment::catalog(&base)?;
        let active = match segments.last() {
            Some(s) if s.number.is_none() => segments.pop(),
            _ => None,
        };
        let mut active = match active {
            Some(active) => active,
            None => recovery::create_active(&base, &segments)?,
        };
        // Record the derived sequence numbers in segments of the published crate, so they
        // stay stable when retention deletes the segments they were counted from.
        for seg in segments.iter_mut().chain(std::iter::once(&mut active)) {
            if seg.legacy {
                recovery::upgrade_legacy(seg)?;
            }
        }

        // Damage before the active file (a segment deleted from the middle, one that lost
        // lines) is not ours to repair: appends go on, readers crossing it get `Missing`,
        // and `MiniStore::damage` says where it is.
        let chain: Vec<Segment> = segments.iter().chain([&active]).cloned().collect();
        let damage = recovery::find_gap(&chain)?;
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
        let scan = |file: &File| {
            let mut index = SparseIndex::new(active.first_seq, active.header_len);
            let note = |n, offset| index.note(active.first_seq + n, offset);
            segment::scan_body(file, &active.path, active.header_len, true, note)
                .map(|body| (body, index))
        };
        let (mut body, mut scanned_index) = scan(&file)?;
        if body.end < body.file_len {
            recovery::cut_torn_tail(&file, &active.path, body)?;
        }
        // The records of an interrupted commit may be complete lines without a complete,
        // valid metadata entry (or part of a batch): never acknowledged, they are cut, so a
        // batch stays all or none (see `recovery::recover_active`).
        let active_meta = recovery::recover_active(&base, &active, &file, body.end, body.records)?;
        if active_meta.covered_end < body.end {
            let uncovered = segment::Body {
                records: 0,
                end: active_meta.covered_end,
                file_len: body.end,
            };
            recovery::cut_torn_tail(&file, &active.path, uncovered)?;
            (body, scanned_index) = scan(&file)?;
        }
        if active.first_seq + body.records != active_meta.next_seq {
            return Err(MiniStoreError::BadMeta {
                path: active_meta.path.clone(),
                reason: format!(
                    "its entries end at seq {}, but {} holds records up to seq {}",
                    active_meta.next_seq.saturating_sub(1),
                    active.path.display(),
                    (active.first_seq + body.records).saturating_sub(1)
                ),
            });
        }
        // Indexes are never trusted and temporaries never read, so these are harmless;
        // but they are clutter.
        if let Err(e) = recovery::remove_leftovers(&base) {
            tracing::warn!(journal = %base.display(), error = %e, "could not look for stale segment indexes and half-written files");
        }
        let first_retained = segments.first().map_or(active.first_seq, |s| s.first_seq);
        let (keys, sealed_metas) = recovery::rebuild_keys(
            &base,
            first_retained,
            active.first_seq,
            &active_meta.path,
            &active_meta.entries,
            opts.max_keys,
            opts.key_memory.clone(),
        )?;
        let state = State {
            rotated: segments
                .into_iter()
                .map(|s| (s.number.unwrap_or_default(), s.first_seq, s.path))
                .collect(),
            base,
            opts,
            len: body.end,
            active_first_seq: active.first_seq,
            next_seq: active.first_seq + body.records,
            index: scanned_index,
            damage,
            meta_path: active_meta.path,
            meta_first_seq: active_meta.first_seq,
            meta_len: active_meta.len,
            sealed_metas: sealed_metas.into(),
            keys,
            last_commit_ns: active_meta.last_commit_ns,
        };
        Writer::assemble(state, file, active_meta.file, lock)
    }

    /// The writer of a journal whose `state` is known (recovered by a full open, or kept
    /// from a close and checked against the files: see `warm.rs`), over its open files
    /// and its held `lock`.
    pub(crate) fn assemble(
        state: State,
        file: File,
        meta_file: File,
        lock: File,
    ) -> Result<Writer> {
        let index = SharedIndex::new(state.index.into());
        let active_index = state.opts.active_index.clone().unwrap_or_default();
        active_index.publish(&state.base, &index)?;
        Ok(Writer {
            base: state.base,
            opts: state.opts,
            file,
            len: state.len,
            allocated: state.len,
            active_first_seq: state.active_first_seq,
            next_seq: state.next_seq,
            rotated: state.rotated,
            index,
            active_index,
            poisoned: None,
            uncut: None,
            damage: state.damage,
            meta_file: Arc::new(meta_file),
            meta_path: state.meta_path,
            meta_first_seq: state.meta_first_seq,
            meta_len: state.meta_len,
            sealed_metas: state.sealed_metas,
            keys: state.keys,
            last_commit_ns: state.last_commit_ns,
            group_data: Vec::new(),
            group_meta: Vec::new(),
            _lock: lock,
        })
    }

    /// Closes the writer's files and lock, keeping what it knows of the journal (its
    /// [`State`]) and how its two open files looked at the end (`fstat`), so that a reopen
    /// that finds them unchanged needs none of the full open's reads. `None` when the
    /// writer cannot vouch for its files (poisoned, or bytes of a failed write not cut) or
    /// the zeros written ahead could not be cut: those close as `Drop` does, and reopen in
    /// full.
    pub(crate) fn park(mut self) -> Option<(State, crate::warm::Snapshot)> {
        if self.poisoned.is_some() || self.uncut.is_some() {
            return None;
        }
        // The files must be looked at as the next open will find them: without the zeros
        // ahead (cut and fsynced here, as a close does), so nothing changes them after.
        if let Err(e) = self.cut_preallocated() {
            tracing::warn!(journal = %self.base.display(), error = %e, "could not cut the preallocated zeros on close; the next open will");
            return None;
        }
        let seen = crate::warm::Snapshot::take(&self.base, &self.file, &self.meta_file).ok()?;
        // The state moves out; what is left of the writer closes its files (its `Drop`
        // has nothing left to cut).
        let state = State {
            base: std::mem::take(&mut self.base),
            opts: std::mem::take(&mut self.opts),
            len: self.len,
            active_first_seq: self.active_first_seq,
            next_seq: self.next_seq,
            rotated: std::mem::take(&mut self.rotated),
            // Taken out of the shared one, which dies with the writer: while the journal is
            // closed, its readers find no index and scan, as after any close.
            index: std::mem::replace(&mut *index::lock(&self.index), SparseIndex::new(0, 0)),
            damage: self.damage.take(),
            meta_path: std::mem::take(&mut self.meta_path),
            meta_first_seq: self.meta_first_seq,
            meta_len: self.meta_len,
            sealed_metas: std::mem::take(&mut self.sealed_metas),
            keys: std::mem::replace(&mut self.keys, KeyIndex::new(0, None)),
            last_commit_ns: self.last_commit_ns,
        };
        Some((state, seen))
    }

    /// The faults its file operations meet (tests), for the store's readers too.
    pub(crate) fn faults(&self) -> crate::io::Faults {
        self.opts.faults.clone()
    }

    pub(crate) fn durable(&self) -> Durable {
        Durable {
            last_seq: self.next_seq - 1,
            first_seq: self.rotated.front().map_or(self.active_first_seq, |r| r.1),
            segments: self.rotated.len() + 1,
            checksums_from: self
                .sealed_metas
                .front()
                .map_or(self.meta_first_seq, |m| m.0)
                .max(self.rotated.front().map_or(self.active_first_seq, |r| r.1)),
            active_first_seq: self.active_first_seq,
            active_len: self.len,
        }
    }

    /// Commits a group of requests: decides each (duplicate key, reused key, expected last
    /// seq), then writes the records of those to be written and their metadata entries with
    /// one write and one fsync per file. See `MiniStore::append_requests`.
    pub(crate) fn commit_group(
        &mut self,
        requests: &[Request<'_>],
    ) -> Result<Vec<Result<Appended>>> {
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
        let mut data = std::mem::take(&mut self.group_data);
        let mut entries = std::mem::take(&mut self.group_meta);
        data.clear();
        entries.clear();
        let result = self.decide_and_write(requests, &mut data, &mut entries);
        // Keep the buffers' memory for the next group, unless a huge batch grew them.
        if data.capacity() <= 16 << 20 {
            self.group_data = data;
        }
        if entries.capacity() <= 4 << 20 {
            self.group_meta = entries;
        }
        result
    }

    fn decide_and_write(
        &mut self,
        requests: &[Request<'_>],
        data: &mut Vec<u8>,
        entries: &mut Vec<u8>,
    ) -> Result<Vec<Result<Appended>>> {
        let group_first_seq = self.next_seq;
        let commit_unix_ns = meta::now_unix_ns().max(self.last_commit_ns);
        let mut next = self.next_seq;
        let mut outcomes = Vec::with_capacity(requests.len());
        // Keys written by this group: (hash, committed, request index).
        let mut new_keys: Vec<(u128, Committed, usize)> = Vec::new();
        let mut crcs = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let start = data.len();
            let count = request.lines.encode_into(data);
            let refused = |data: &mut Vec<u8>, e| {
                data.truncate(start);
                Outcome::Done(Err(e))
            };
            let mut keyed = None;
            if let Some(key) = request.key {
                if key.len() > meta::MAX_KEY_BYTES {
                    outcomes.push(refused(
                        data,
                        MiniStoreError::InvalidArgument(format!(
                            "an idempotency key is at most {} bytes; this one has {}",
                            meta::MAX_KEY_BYTES,
                            key.len()
                        )),
                    ));
                    continue;
                }
                let hash = keys::hash(key);
                let fingerprint = meta::fingerprint(&data[start..]);
                let earlier = self.keys.get(hash).map(|c| (c, None)).or_else(|| {
                    new_keys
                        .iter()
                        .find(|(h, _, _)| *h == hash)
                        .map(|(_, c, n)| (*c, Some(*n)))
                });
                if let Some((committed, in_group)) = earlier {
                    data.truncate(start);
                    outcomes.push(if committed.fingerprint != fingerprint {
                        Outcome::Done(Err(MiniStoreError::KeyReused {
                            key: key.to_owned(),
                            first_seq: committed.first_seq,
                        }))
                    } else if let Some(n) = in_group {
                        Outcome::SameAs(n)
                    } else {
                        Outcome::Done(Ok(Appended {
                            seqs: committed.seqs(),
                            duplicate: true,
                        }))
                    });
                    continue;
                }
                keyed = Some((key, hash, fingerprint));
            }
            if let Some(expected) = request.expected_last_seq
                && expected != next - 1
            {
                outcomes.push(refused(
                    data,
                    MiniStoreError::LastSeqMismatch {
                        expected,
                        last_seq: next - 1,
                    },
                ));
                continue;
            }
            if count == 0 {
                outcomes.push(Outcome::Done(Ok(Appended {
                    seqs: next..next,
                    duplicate: false,
                })));
                continue;
            }
            if count > MAX_RECORDS_PER_REQUEST {
                outcomes.push(refused(
                    data,
                    MiniStoreError::InvalidArgument(format!(
                        "one append holds at most {MAX_RECORDS_PER_REQUEST} records; this one has {count}"
                    )),
                ));
                continue;
            }
            crcs.clear();
            meta::line_crcs(&data[start..], &mut crcs);
            let entry = Entry {
                first_seq: next,
                count: count as u32,
                group_first_seq,
                data_offset: self.len + start as u64,
                data_len: (data.len() - start) as u64,
                commit_unix_ns,
                fingerprint: keyed.map_or(0, |k| k.2),
                key: keyed.map(|k| k.0.into()),
                record_crcs: std::mem::take(&mut crcs),
            };
            entry.encode_into(entries);
            crcs = entry.record_crcs;
            if let Some((_, hash, fingerprint)) = keyed {
                let committed = Committed {
                    first_seq: next,
                    count: count as u32,
                    fingerprint,
                };
                new_keys.push((hash, committed, i));
            }
            outcomes.push(Outcome::Written(next..next + count));
            next += count;
        }
        if !data.is_empty() {
            self.write_group(data, entries, next - group_first_seq)?;
            self.last_commit_ns = commit_unix_ns;
            for (hash, committed, _) in new_keys {
                self.keys.insert(hash, committed);
            }
        }
        let written: Vec<Option<Range<u64>>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Written(seqs) => Some(seqs.clone()),
                _ => None,
            })
            .collect();
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Done(result) => result,
                Outcome::Written(seqs) => Ok(Appended {
                    seqs,
                    duplicate: false,
                }),
                Outcome::SameAs(n) => Ok(Appended {
                    seqs: written[n].clone().unwrap_or_default(),
                    duplicate: true,
                }),
            })
            .collect();
        if !data.is_empty() && self.len >= self.opts.max_bytes_per_segment {
            // The records are durable whatever happens here; a failed rotation stops
            // further writes, and a reopen finishes it (see `create_active`).
            if let Err(e) = self.rotate() {
                tracing::error!(journal = %self.base.display(), error = %e, "segment rotation failed");
                self.poisoned = Some(format!("segment rotation failed: {e}"));
            }
        }
        Ok(results)
    }

    /// Writes `count` encoded records (`data`, one `\n`-terminated line each) and their
    /// metadata `entries`, and fsyncs both files.
    fn write_group(&mut self, data: &[u8], entries: &[u8], count: u64) -> Result<()> {
        let first = self.next_seq;
        let end = self.len + data.len() as u64;
        if end > self.allocated && self.opts.preallocate {
            self.preallocate(end);
        }
        // 1. Write the entries at the end of the metadata file's durable data, and start its
        //    fdatasync on a helper thread (`syncer`); then write the records at the end of the
        //    segment's (over zeros written ahead, if any), and fdatasync that here: the two
        //    flushes overlap, so a commit waits for the slower one, not for their sum. Which
        //    file is written first does not matter for a crash: until both are fsynced
        //    nothing counts, and a crash leaving either without the other is cut by open
        //    (see `recovery::recover_active`). If a write fails part-way (ENOSPC, EFBIG,
        //    EIO), both files are cut back to their durable lengths so no partial entry or
        //    record stays behind, and the store goes on once the condition clears; the zeros
        //    ahead go too.
        let io = &self.opts.faults;
        if let Err(e) = io.write_all_at(&self.meta_file, &self.meta_path, entries, self.meta_len) {
            self.restore_durable_length("a failed write");
            return Err(MiniStoreError::io("writing to", &self.meta_path, e));
        }
        // The metadata's flush runs on a shared helper thread while this one flushes the
        // segment; with no helper free, it runs here after the segment's (see `syncer`).
        let flush = syncer::begin(self.meta_file.clone(), self.meta_path.clone(), io.clone());
        let wait_meta = |writer: &Self, flush: Option<syncer::Flush>| match flush {
            Some(flush) => flush.wait(),
            None => io.sync_data(&writer.meta_file, &writer.meta_path),
        };
        if let Err(e) = io.write_all_at(&self.file, &self.base, data, self.len) {
            // The metadata's flush is collected before anything is cut under it.
            if let Some(flush) = flush {
                let _ = flush.wait();
            }
            self.restore_durable_length("a failed write");
            return Err(MiniStoreError::io("writing to", &self.base, e));
        }
        self.allocated = self.allocated.max(end);
        // 2. fdatasync both: the records and their entries (and the file sizes, and the
        //    zeros ahead when this commit extended the file) are on stable storage. On
        //    failure of either, the kernel may have dropped the pages and marked them
        //    clean, and a later fsync would "succeed" over them (fsyncgate): they are
        //    never trusted. What is durable is what the last successful fsyncs covered,
        //    `self.len` and `self.meta_len`; both files are cut back to them, and that
        //    made durable, before anything else reads or appends. Readers never saw the
        //    lost bytes: they read up to `self.len` only.
        let data_synced = io.sync_data(&self.file, &self.base);
        let meta_synced = wait_meta(self, flush);
        let failed = match (data_synced, meta_synced) {
            (Err(e), _) => Some((self.base.clone(), e)),
            (Ok(()), Err(e)) => Some((self.meta_path.clone(), e)),
            (Ok(()), Ok(())) => None,
        };
        if let Some((path, e)) = failed {
            self.restore_durable_length("a failed fsync");
            return Err(MiniStoreError::io("fsyncing", &path, e));
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
        index::lock(&self.index).note_lines(first, self.len, data);
        self.len = end;
        self.meta_len += entries.len() as u64;
        self.next_seq += count;
        Ok(())
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
        let io = &self.opts.faults;
        match io
            .truncate_durably(&self.file, &self.base, self.len)
            .and_then(|()| io.truncate_durably(&self.meta_file, &self.meta_path, self.meta_len))
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
        // 5. Create the new active segment's metadata file (named by its first seq; the
        //    sealed segment's keeps its name, so no rename can pair a segment with another's
        //    metadata), header fsynced with the directory before any entry goes in, and
        //    given its name only once whole. It comes before the segment: a reader finds a
        //    segment only once the segment exists, and must then find its metadata whole
        //    beside it (until then the newest segment is the sealed one, paired with its
        //    own file by its first seq, see `meta::of_segment`). Crash here: no active
        //    file, with or without the new metadata file (at worst a stray `.tmp`); open
        //    creates the active file from the end of the newest rotated segment, which is
        //    this first seq, and pairs it with this file or creates it.
        let meta_path = segment::meta_path(&self.base, self.next_seq);
        io.check_create(&meta_path)
            .map_err(|e| MiniStoreError::io("creating", &meta_path, e))?;
        let active_meta = recovery::create(&self.base, self.next_seq, header.len() as u64)?;
        // 6. Create the new active segment: header with its first seq, fsync the file and
        //    the directory. Crash here: no active file, or one with a partial header; open
        //    then creates it as in 5.
        io.check_create(&self.base)
            .map_err(|e| MiniStoreError::io("creating", &self.base, e))?;
        self.file = segment::write_new_file(&self.base, header.as_bytes())?;
        self.len = header.len() as u64;
        self.allocated = self.len;
        self.active_first_seq = self.next_seq;
        let sealed_meta = std::mem::replace(&mut self.meta_path, active_meta.path);
        let sealed_meta_seq = std::mem::replace(&mut self.meta_first_seq, active_meta.first_seq);
        self.sealed_metas.push_back((sealed_meta_seq, sealed_meta));
        self.meta_file = Arc::new(active_meta.file);
        self.meta_len = active_meta.len;
        // 7. Retention: delete the oldest segments beyond max_segments (the active one
        //    counts), each after its index and before its metadata (a reader that can
        //    find a segment finds its metadata too), then fsync the directory. Crash here:
        //    extra old segments remain until the next rotation deletes them (an index whose
        //    segment is gone is ignored, and removed by the next open; so is metadata whose
        //    segment is gone, see `recovery::rebuild_keys`).
        //    Sequence numbers do not move: each segment's header holds its own first seq.
        let keep = self.opts.max_segments - 1;
        let mut deleted = false;
        while self.rotated.len() > keep {
            let (_, first_seq, path) = self.rotated.pop_front().expect("len > keep >= 0");
            let retained = self.rotated.front().map_or(self.active_first_seq, |r| r.1);
            index::remove_sidecar(&path);
            io.remove_file(&path)
                .map_err(|e| MiniStoreError::io("deleting", &path, e))?;
            while let Some((seq, meta_path)) = self.sealed_metas.front()
                && *seq < retained
            {
                io.remove_file(meta_path)
                    .map_err(|e| MiniStoreError::io("deleting", meta_path, e))?;
                self.sealed_metas.pop_front();
            }
            self.keys.forget_before(retained);
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
/// process killed) are cut by the next open. Readers no longer find the active segment's
/// index, which nobody keeps from here on.
impl Drop for Writer {
    fn drop(&mut self) {
        self.active_index.withdraw(&self.index);
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
