//! Reading journals back: [`JournalReader`], from any sequence number across all segments,
//! each record checked against its metadata entry. (The line stream over one file,
//! [`JournalStream`](crate::JournalStream), is in `stream.rs`.)

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::blocking::blocking;
use crate::durable::{Durable, DurableWatch};
use crate::index::{self, ActiveIndex, SegmentShape};
use crate::io::Faults;
use crate::meta::{self, Check, LineChecks};
use crate::segment::{self, Segment};
use crate::{MiniStoreError, Result};

/// Bytes read from a segment at a time.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Bytes read at a time while skipping to a start position.
const SKIP_CHUNK: usize = 1024 * 1024;

/// One record read back: its sequence number, its JSON line (without the newline) and,
/// when its segment has metadata, its commit time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's sequence number.
    pub seq: u64,
    /// The stored JSON text.
    pub json: String,
    /// When the record was committed, in nanoseconds since the Unix epoch; never less
    /// than an earlier record's. `None` for records written without metadata (by the
    /// published crate or an earlier version).
    pub commit_unix_ns: Option<u64>,
}

impl Record {
    /// Deserializes the record's JSON.
    ///
    /// ```
    /// let record = ministore::Record { seq: 1, json: r#"{"id":7}"#.into(), commit_unix_ns: None };
    /// let value: serde_json::Value = record.parse().unwrap();
    /// assert_eq!(value["id"], 7);
    /// ```
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }
}

/// Reads a journal from any sequence number through all retained segments, in batches,
/// with flat memory.
///
/// Made by [`MiniStore::read_from`](crate::MiniStore::read_from) (the journal as it is on
/// disk) or [`MiniStore::reader`](crate::MiniStore::reader) (only records the writer has
/// made durable; can [`wait`](Self::wait) for more). The start is found from the segment
/// headers, without reading earlier segments, and within its segment from the segment's
/// index (see the crate docs), reading less than 64 KiB before it; a segment without a
/// usable index is read from its start. A reader that falls so far behind that
/// retention deletes the segment it needs next gets [`MiniStoreError::Truncated`], never a
/// silent gap.
///
/// Every read ends: each record read is the next sequence number, and moving on to the
/// next file happens only when it starts exactly where the last one ended. A segment
/// deleted from the middle, a segment that lost lines or ends early, and (for a reader
/// made by [`MiniStore::reader`](crate::MiniStore::reader)) an active file shorter than
/// what its writer made durable are [`MiniStoreError::Missing`], naming the files and
/// sequence numbers; never an empty batch that would be asked for again and again.
#[derive(Debug)]
pub struct JournalReader {
    base: PathBuf,
    /// `None` while a read runs on the blocking pool (or for good if one was cancelled).
    cursor: Option<Cursor>,
    durable: Option<watch::Receiver<Durable>>,
}

impl JournalReader {
    pub(crate) fn new(base: &Path, from_seq: u64) -> Self {
        JournalReader {
            base: base.to_path_buf(),
            cursor: Some(Cursor::new(base, from_seq)),
            durable: None,
        }
    }

    /// A reader of the journal at `path` that returns only records `watch` reports durable,
    /// and finds its place in the active segment through the writer's index, for readers
    /// that outlive a borrow of the [`MiniStore`](crate::MiniStore): take the watch from
    /// [`MiniStore::watch_durable`](crate::MiniStore::watch_durable).
    pub fn with_durable(path: &Path, from_seq: u64, watch: DurableWatch) -> Self {
        let mut cursor = Cursor::new(path, from_seq);
        cursor.active_index = watch.index;
        JournalReader {
            base: path.to_path_buf(),
            cursor: Some(cursor),
            durable: Some(watch.durable),
        }
    }

    /// The sequence number the next record read will have (after positioning, the oldest
    /// retained one if the reader started before it).
    pub fn next_seq(&self) -> u64 {
        self.cursor.as_ref().map_or(0, |c| c.next_seq)
    }

    /// Makes its reads meet the faults of `faults` (the store's, for its own readers; a
    /// server's, for the readers of its RPCs), so tests can fail them.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        if let Some(cursor) = &mut self.cursor {
            cursor.faults = faults;
        }
        self
    }

    /// Refuses records longer than `max` bytes with [`MiniStoreError::RecordTooLarge`]
    /// instead of holding them in memory (by default any length is read). A server sets
    /// this so that no file, however it was written, makes it hold more than it budgets.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("j.jsonl");
    /// let mut store = ministore::MiniStore::open(&path).await.unwrap();
    /// store.append(&"x".repeat(100)).await.unwrap();
    /// let mut reader = store.reader(1).max_record_bytes(64);
    /// let err = reader.next_batch(10).await.unwrap_err();
    /// assert!(matches!(err, ministore::MiniStoreError::RecordTooLarge { seq: 1, .. }));
    /// # }
    /// ```
    pub fn max_record_bytes(mut self, max: usize) -> Self {
        if let Some(cursor) = &mut self.cursor {
            cursor.max_line = max;
        }
        self
    }

    /// Reads up to `max` records. An empty batch means there is nothing more to read now.
    /// Records read before a failure are returned first; the failure comes with the next
    /// call (and every call after it, until its cause is gone).
    ///
    /// # Errors
    /// I/O errors, a bad segment header, a line that is not UTF-8,
    /// [`MiniStoreError::Truncated`] when retention deleted records this reader still
    /// needed, and [`MiniStoreError::Missing`] when records are missing from the files.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>> {
        self.next_batch_within(max, usize::MAX).await
    }

    /// Like [`next_batch`](Self::next_batch), but also stops once the records read hold
    /// `max_bytes` bytes of JSON (a batch always holds at least one record, if there is
    /// one): memory is budgeted in bytes, whatever the size of the records.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("j.jsonl");
    /// let mut store = ministore::MiniStore::open(&path).await.unwrap();
    /// store.append_batch(&["a".repeat(1000), "b".repeat(1000), "c".repeat(1000)]).await.unwrap();
    /// let mut reader = store.reader(1);
    /// assert_eq!(reader.next_batch_within(100, 1500).await.unwrap().len(), 2);
    /// assert_eq!(reader.next_batch_within(100, 10).await.unwrap().len(), 1);
    /// # }
    /// ```
    pub async fn next_batch_within(&mut self, max: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let limit = self.durable.as_ref().map(|d| *d.borrow());
        let mut cursor = self.cursor.take().ok_or_else(|| MiniStoreError::Io {
            op: "reading",
            path: self.base.clone(),
            source: std::io::Error::other("an earlier read of this reader was cancelled"),
        })?;
        let (cursor, result) = blocking(move || {
            let result = cursor.read_batch(max, max_bytes, limit);
            Ok((cursor, result))
        })
        .await?;
        self.cursor = Some(cursor);
        result
    }

    /// Waits until a record past those already read is durable. Returns `false` when none
    /// will come: the writer was closed, or this reader has no writer to wait on (it was
    /// made by [`read_from`](crate::MiniStore::read_from)).
    pub async fn wait(&mut self) -> bool {
        let next = self.next_seq();
        match &mut self.durable {
            Some(durable) => durable.wait_for(|d| d.last_seq >= next).await.is_ok(),
            None => false,
        }
    }

    /// Like [`wait`](Self::wait), but a reader still waiting after `park_after` lets go of
    /// its open segment (its file descriptors and its read buffer of up to 64 KiB) and
    /// finds its place again when records come: ten thousand idle followers then cost a
    /// few KiB each, not a buffer and two descriptors each, while a reader that keeps up
    /// with a busy journal keeps its files. With a `park_after` of zero it lets go at once
    /// (no timer); otherwise it needs a runtime with its timer enabled.
    pub async fn wait_parking(&mut self, park_after: std::time::Duration) -> bool {
        let next = self.next_seq();
        let Some(durable) = &mut self.durable else {
            return false;
        };
        let more = |d: &Durable| d.last_seq >= next;
        if !park_after.is_zero()
            && let Ok(waited) = tokio::time::timeout(park_after, durable.wait_for(more)).await
        {
            return waited.is_ok();
        }
        if let Some(cursor) = &mut self.cursor {
            cursor.park();
        }
        durable.wait_for(more).await.is_ok()
    }

    /// Parses `record` as a `T`, naming its file and line when it does not parse.
    pub(crate) fn parse<T: DeserializeOwned>(&self, record: &Record) -> Result<T> {
        record.parse().map_err(|e| {
            let (path, line) = self
                .cursor
                .as_ref()
                .and_then(|c| c.locate(record.seq))
                .unwrap_or_else(|| (self.base.clone(), 0));
            MiniStoreError::Corrupt {
                path,
                line,
                reason: format!("record {} does not deserialize: {e}", record.seq),
            }
        })
    }
}

/// The synchronous part of a reader: where it is, and the open segment.
#[derive(Debug)]
struct Cursor {
    base: PathBuf,
    next_seq: u64,
    /// Positioned at least once: from then on a missing segment is a gap, not a start.
    started: bool,
    open: Option<OpenSegment>,
    /// The segments read so far in the current batch, for error messages: (first_seq, path).
    recent: Vec<(u64, PathBuf)>,
    /// The journal's segments as last listed. A rotated segment never changes (it can only
    /// be deleted, which opening it notices), so moving on to one needs no new listing:
    /// reading `n` segments lists the directory a few times, not `n` times.
    listed: Vec<Segment>,
    /// Longest record held in memory; longer ones are refused.
    max_line: usize,
    /// Faults its reads meet (tests only; none by default).
    faults: Faults,
    /// Where the writer's index of the active segment is, for a reader it made (empty for
    /// a reader of the files as they are).
    active_index: ActiveIndex,
}

#[derive(Debug)]
struct OpenSegment {
    file: File,
    path: PathBuf,
    first_seq: u64,
    /// A rotated segment: complete, it will never grow.
    rotated: bool,
    /// Length of the header line: where the first record starts.
    header_len: u64,
    /// The number of the last line read (the header is line 1).
    line: u64,
    /// File offset of the first byte not yet in `buf`.
    pos: u64,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    start: usize,
    /// Its records' checks against its metadata entries, read in step with them.
    checks: LineChecks,
    /// Faults its reads meet (the cursor's).
    faults: Faults,
}

impl Cursor {
    fn new(base: &Path, from_seq: u64) -> Self {
        Cursor {
            base: base.to_path_buf(),
            next_seq: from_seq.max(1),
            started: false,
            open: None,
            recent: Vec::new(),
            listed: Vec::new(),
            max_line: usize::MAX,
            faults: Faults::default(),
            active_index: ActiveIndex::default(),
        }
    }

    /// Closes the open segment and frees the buffers; the next read positions again at
    /// `next_seq` (as a reader started there does, `started` keeping a vanished record an
    /// error, never a silent skip).
    fn park(&mut self) {
        self.open = None;
        self.recent = Vec::new();
        self.listed = Vec::new();
    }

    fn missing(&self, reason: String) -> MiniStoreError {
        MiniStoreError::Missing {
            path: self.base.clone(),
            expected: self.next_seq,
            reason,
        }
    }

    /// The first seq and path of the segment after the one starting at `first_seq`, listing
    /// the directory again if the last listing shows none (it may predate a rotation).
    fn segment_after(&mut self, first_seq: u64) -> Result<Option<(u64, PathBuf)>> {
        let find = |listed: &[Segment]| {
            listed
                .iter()
                .find(|s| s.first_seq > first_seq)
                .map(|s| (s.first_seq, s.path.clone()))
        };
        if let Some(next) = find(&self.listed) {
            return Ok(Some(next));
        }
        self.listed = segment::catalog(&self.base)?;
        Ok(find(&self.listed))
    }

    /// The file and line of `seq`, if it was read in the current batch.
    fn locate(&self, seq: u64) -> Option<(PathBuf, u64)> {
        self.recent
            .iter()
            .rev()
            .find(|(first, _)| *first <= seq)
            .map(|(first, path)| (path.clone(), seq - first + 2))
    }

    fn read_batch(
        &mut self,
        max: usize,
        max_bytes: usize,
        durable: Option<Durable>,
    ) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.recent.clear();
        if let Some(open) = &self.open {
            self.recent.push((open.first_seq, open.path.clone()));
        }
        let result = self.read_into(&mut out, max, max_bytes, durable);
        if let Some(open) = &mut self.open {
            open.release_large_buffer();
        }
        match result {
            // Records read before a failure go to the caller first: dropping them with the
            // error would lose them for good, as the cursor has moved past them. It stays
            // on what failed, so the next call reports the failure.
            Err(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Reads records into `out` until `max` records or `max_bytes` bytes, the end of what is
    /// readable, or (with `durable`) its last durable record.
    ///
    /// It ends: each turn either reads the record `next_seq` (bounded by `max`), moves to a
    /// segment that starts exactly at `next_seq` (there are finitely many, each starting
    /// after the last), or leaves the loop with the end or an error.
    fn read_into(
        &mut self,
        out: &mut Vec<Record>,
        max: usize,
        max_bytes: usize,
        durable: Option<Durable>,
    ) -> Result<()> {
        let last = durable.map_or(u64::MAX, |d| d.last_seq);
        let mut bytes = 0;
        while out.len() < max && bytes < max_bytes && self.next_seq <= last {
            if self.open.is_none() && !self.position(durable)? {
                break;
            }
            let open = self.open.as_mut().expect("positioned");
            // Never read the active segment past its durable length: bytes beyond it may
            // be a write in progress, or a failed one about to be truncated and rewritten.
            let cap = durable
                .filter(|d| d.active_first_seq == open.first_seq)
                .map(|d| d.active_len);
            let check = open
                .checks
                .check_for(&open.file, self.next_seq, durable.is_some())?;
            let expected = match &check {
                Check::Crc(expected) => Some(*expected),
                _ => None,
            };
            if let Some(json) = open.next_line(cap, self.max_line, self.next_seq, check)? {
                bytes += json.len();
                out.push(Record {
                    seq: self.next_seq,
                    json,
                    commit_unix_ns: expected.map(|e| e.commit_unix_ns),
                });
                self.next_seq += 1;
                continue;
            }
            // The end of this file. Go on only to a file that starts exactly here. The
            // active segment of a durable reader's snapshot has none after it: no listing.
            let (ended_first, ended_path, ended_at) = (open.first_seq, open.path.clone(), open.pos);
            let next = match cap {
                Some(_) => None,
                None => self.segment_after(ended_first)?,
            };
            match next {
                Some((next_first, _)) if next_first == self.next_seq => self.open = None,
                Some((next_first, next_path)) => {
                    return Err(self.missing(segment::describe_gap(
                        &ended_path,
                        ended_first,
                        self.next_seq,
                        &next_path,
                        next_first,
                    )));
                }
                None => {
                    // Records the writer made durable must be here.
                    if let Some(len) = cap.filter(|&len| ended_at < len) {
                        return Err(self.missing(format!(
                            "{} ends at byte {ended_at} but its writer made {len} bytes durable",
                            ended_path.display()
                        )));
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether the last listing shows `seq` in a rotated segment (one with a newer segment
    /// after it), which can be opened without listing again.
    fn listed_in_rotated(&self, seq: u64) -> bool {
        match self.listed.iter().rposition(|s| s.first_seq <= seq) {
            Some(i) => self.listed[i].number.is_some() && i + 1 < self.listed.len(),
            None => false,
        }
    }

    /// Opens the segment holding `next_seq` and skips to it. `false`: nothing to read yet
    /// (no files, or `next_seq` is past the end).
    fn position(&mut self, durable: Option<Durable>) -> Result<bool> {
        // A rotation between listing and opening can hand us a different file under the
        // active name; the header tells, and a second look finds the right one.
        for attempt in 0..8 {
            if attempt > 0 || !self.listed_in_rotated(self.next_seq) {
                self.listed = segment::catalog(&self.base)?;
            }
            let segments = &self.listed;
            let Some(oldest) = segments.first() else {
                // Records the writer reported durable are not supposed to vanish.
                if durable.is_some() {
                    return Err(self.missing("the journal has no files left".into()));
                }
                return Ok(false);
            };
            if self.next_seq < oldest.first_seq {
                if self.started {
                    return Err(MiniStoreError::Truncated {
                        path: self.base.clone(),
                        requested: self.next_seq,
                        oldest: oldest.first_seq,
                    });
                }
                self.next_seq = oldest.first_seq;
            }
            let seg = segments
                .iter()
                .rev()
                .find(|s| s.first_seq <= self.next_seq)
                .expect("next_seq >= oldest first_seq");
            let next_first = segments
                .iter()
                .find(|s| s.first_seq > seg.first_seq)
                .map(|s| s.first_seq);
            let metas = meta::list(&self.base)?;
            let Some(mut open) = OpenSegment::open(seg, next_first, &metas)? else {
                continue;
            };
            open.faults = self.faults.clone();
            let cap = durable
                .filter(|d| d.active_first_seq == open.first_seq)
                .map(|d| d.active_len);
            let at = if self.next_seq > open.first_seq {
                open.seek_indexed(&self.active_index, self.next_seq, cap)?
            } else {
                open.first_seq
            };
            let wanted = self.next_seq - at;
            let skipped = open.skip_lines(wanted, cap)?;
            if skipped < wanted {
                let end = at + skipped;
                // A later file would have been chosen if it held `next_seq`: the records
                // between this file's end and its start are gone.
                if let Some(next) = segments.iter().find(|s| s.first_seq > open.first_seq) {
                    return Err(self.missing(segment::describe_gap(
                        &open.path,
                        open.first_seq,
                        end,
                        &next.path,
                        next.first_seq,
                    )));
                }
                if let Some(d) = durable {
                    return Err(self.missing(format!(
                        "{} ends before record {end} but its writer reported records up to {} durable",
                        open.path.display(),
                        d.last_seq
                    )));
                }
                // The target is past the end of the journal: nothing to read until it
                // exists. Position again then, so every record returned has its true seq.
                return Ok(false);
            }
            self.started = true;
            self.recent.push((open.first_seq, open.path.clone()));
            self.open = Some(open);
            return Ok(true);
        }
        Err(MiniStoreError::Io {
            op: "positioning a reader in",
            path: self.base.clone(),
            source: std::io::Error::other("segments kept changing while being opened"),
        })
    }
}

impl OpenSegment {
    /// Opens `seg` after its header, with its metadata file: the one among `metas` covering
    /// seqs from `seg.first_seq` up to `next_first` (the next segment's). `None` if the
    /// file is no longer the one catalogued.
    fn open(
        seg: &Segment,
        next_first: Option<u64>,
        metas: &[(u64, PathBuf)],
    ) -> Result<Option<OpenSegment>> {
        let file = match File::open(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(MiniStoreError::io("opening", &seg.path, e)),
        };
        let header = segment::parse_header(&seg.path, &segment::read_head(&file, &seg.path)?)?;
        if header.first_seq.is_some_and(|f| f != seg.first_seq) {
            return Ok(None);
        }
        let checks = LineChecks::open(metas, seg.first_seq, next_first, seg.number.is_some())?;
        Ok(Some(OpenSegment {
            file,
            path: seg.path.clone(),
            first_seq: seg.first_seq,
            rotated: seg.number.is_some(),
            header_len: header.len,
            line: 1,
            pos: header.len,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            checks,
            faults: Faults::default(),
        }))
    }

    /// Gives back the memory a large record made the buffer grow to, between batches: a
    /// reader that met one record of megabytes would otherwise keep that much for good.
    fn release_large_buffer(&mut self) {
        if self.buf.capacity() > 4 * READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.shrink_to(READ_CHUNK.max(self.buf.len()));
        }
    }

    /// Moves to the greatest indexed record at or before `seq`, using the segment's sidecar
    /// (rotated) or its writer's in-memory index (active, found through `active`). Returns
    /// the seq of the record it now stands before: `first_seq` when there is no usable
    /// index, and the cursor is then still right after the header.
    ///
    /// An index is a hint: the entry is used only if the byte before it is a line break,
    /// which the first read after seeking shows for free. That read takes one index step,
    /// everything the caller then skips.
    fn seek_indexed(&mut self, active: &ActiveIndex, seq: u64, cap: Option<u64>) -> Result<u64> {
        let entry = if self.rotated {
            let len = self
                .file
                .metadata()
                .map_err(|e| MiniStoreError::io("reading metadata of", &self.path, e))?
                .len();
            let shape = SegmentShape {
                first_seq: self.first_seq,
                header_len: self.header_len,
                len,
            };
            index::load_sidecar(&self.path, shape).and_then(|i| i.lookup(seq))
        } else {
            active.lookup(self.first_seq, seq)
        };
        let Some(entry) = entry.filter(|e| e.offset <= cap.unwrap_or(u64::MAX)) else {
            return Ok(self.first_seq);
        };
        self.buf.clear();
        self.start = 0;
        self.pos = entry.offset - 1;
        if self.fill(cap, index::STEP as usize + READ_CHUNK)? && self.buf[0] == b'\n' {
            self.start = 1;
            self.line = 1 + (entry.seq - self.first_seq);
            return Ok(entry.seq);
        }
        tracing::debug!(segment = %self.path.display(), ?entry, "ignoring an index entry that does not start a line");
        self.buf.clear();
        self.pos = self.header_len;
        Ok(self.first_seq)
    }

    /// The next complete line (record `seq`), reading no further than `cap` bytes into the
    /// file. `None` at the end of what is readable; an incomplete last line is left unread.
    /// A line longer than `max_line` is refused before more of it is read.
    fn next_line(
        &mut self,
        cap: Option<u64>,
        max_line: usize,
        seq: u64,
        check: Check,
    ) -> Result<Option<String>> {
        loop {
            let newline = self.buf[self.start..].iter().position(|&b| b == b'\n');
            if newline.unwrap_or(self.buf.len() - self.start) > max_line {
                return Err(MiniStoreError::RecordTooLarge {
                    path: self.path.clone(),
                    seq,
                    max: max_line,
                });
            }
            if let Some(i) = newline {
                let bytes = &self.buf[self.start..self.start + i];
                let offset = self.pos - (self.buf.len() - self.start) as u64;
                let damage = |reason| MiniStoreError::Checksum {
                    path: self.path.clone(),
                    seq,
                    offset,
                    reason,
                };
                if matches!(check, Check::NotYet) {
                    return Ok(None);
                }
                if let Some(reason) = check.failure(|| crc32c::crc32c(bytes)) {
                    return Err(damage(reason));
                }
                let line = std::str::from_utf8(bytes)
                    .map_err(|e| MiniStoreError::Corrupt {
                        path: self.path.clone(),
                        line: self.line + 1,
                        reason: format!("a line is not UTF-8: {e}"),
                    })?
                    .to_owned();
                // Consumed only once valid: asked again, the reader refuses the same line
                // again instead of giving the next record its sequence number.
                self.start += i + 1;
                self.line += 1;
                return Ok(Some(line));
            }
            if !self.fill(cap, READ_CHUNK)? {
                return Ok(None);
            }
        }
    }

    /// Skips `n` complete lines without copying them out, counting line breaks a large
    /// chunk at a time: after an index seek this is less than one step, and in a segment
    /// without an index (middle of 64 MiB: ~10 ms warm) still not a line-by-line scan.
    /// Returns how many were skipped (fewer at the end of what is readable).
    fn skip_lines(&mut self, n: u64, cap: Option<u64>) -> Result<u64> {
        let mut left = n;
        while left > 0 {
            let unread = &self.buf[self.start..];
            // memchr finds line breaks with SIMD, several times faster than a byte loop.
            let breaks = memchr::memchr_iter(b'\n', unread).count() as u64;
            if breaks >= left {
                let at = memchr::memchr_iter(b'\n', unread)
                    .nth((left - 1) as usize)
                    .expect("counted enough line breaks");
                self.start += at + 1;
                self.line += left;
                return Ok(n);
            }
            if let Some(last) = memchr::memrchr(b'\n', unread) {
                self.start += last + 1;
            }
            self.line += breaks;
            left -= breaks;
            if !self.fill(cap, SKIP_CHUNK)? {
                break;
            }
        }
        Ok(n - left)
    }

    /// Reads up to `chunk` more bytes after the buffered ones, never past `cap`. `false`
    /// at the end of what is readable.
    fn fill(&mut self, cap: Option<u64>, chunk: usize) -> Result<bool> {
        let end = cap.unwrap_or(u64::MAX);
        if self.pos >= end {
            return Ok(false);
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let have = self.buf.len();
        let want = chunk.min((end - self.pos).min(usize::MAX as u64) as usize);
        self.buf.resize(have + want, 0);
        let n = match self
            .faults
            .read_at(&self.file, &self.path, &mut self.buf[have..], self.pos)
        {
            Ok(n) => n,
            Err(e) => {
                // Drop the zeros we made room with, or a retry would read them as data.
                self.buf.truncate(have);
                return Err(MiniStoreError::io("reading", &self.path, e));
            }
        };
        // The active file may end in zeros the writer wrote ahead of its records (see
        // `Writer::preallocate`); they are overwritten in place, so the first NUL is the end
        // of what is written. Zeros are never kept: bytes read later would follow them
        // and make a line of stale zeros and new records. The next fill reads from the NUL
        // again. (A rotated segment ends at its last record: it has no zeros to stop at.)
        let n = match memchr::memchr(0, &self.buf[have..have + n]) {
            Some(unwritten) if !self.rotated => unwritten,
            _ => n,
        };
        self.buf.truncate(have + n);
        self.pos += n as u64;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::MiniStore;

    #[tokio::test]
    async fn a_reader_starts_exactly_at_its_seq_across_skip_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let mut store = MiniStore::open(&path).await.unwrap();
        // ~3 MB in one segment: skipping crosses several 1 MiB chunks.
        let records: Vec<u64> = (1..=300_000).collect();
        store.append_batch(&records).await.unwrap();
        for from in [1, 2, 99_999, 150_001, 299_999, 300_000] {
            let mut reader = MiniStore::read_from(&path, from);
            let batch = reader.next_batch(2).await.unwrap();
            assert_eq!(batch[0].seq, from);
            assert_eq!(batch[0].json, from.to_string());
        }
        // Past the end: nothing, until the asked-for record exists.
        let mut reader = MiniStore::read_from(&path, 300_002);
        assert!(reader.next_batch(1).await.unwrap().is_empty());
        store.append(&300_001u64).await.unwrap();
        assert!(reader.next_batch(1).await.unwrap().is_empty());
        store.append(&300_002u64).await.unwrap();
        let batch = reader.next_batch(1).await.unwrap();
        assert_eq!((batch[0].seq, batch[0].json.as_str()), (300_002, "300002"));
    }
}
