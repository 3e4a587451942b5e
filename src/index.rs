//! The sparse index of a segment: where some of its records start, so that a reader finds
//! record `n` by reading at most one step of the file instead of counting every line
//! before it.
//!
//! An entry `(seq, offset)` says that the line of record `seq` starts at byte `offset`.
//! The writer adds one whenever a record starts at least [`STEP`] bytes after the previous
//! entry (or after the header), so a reader seeks to the greatest entry at or before the
//! record it wants and counts the line breaks of less than one step.
//!
//! The index is derived data, never the truth. The writer knows every offset it commits, so
//! it keeps the index of the active segment in memory (readers in its process find it
//! through the [`ActiveIndex`] they are given) and, when it seals a segment at rotation,
//! writes that segment's index beside it as `<segment>.idx`. A sidecar carries the segment's first seq, header length and byte
//! length and a checksum of its own bytes; a reader that finds any of them wrong, or whose
//! chosen entry does not follow a line break in the segment, ignores the index and counts
//! lines from the header as it would without one. Segments without a sidecar (those of
//! the published crate, of older versions, or written before a crash) are simply scanned.
//!
//! Sidecar layout, little-endian: `MAGIC` (8 bytes), first_seq, header_len, segment_len,
//! entry count (u64 each), the entries (seq, offset: u64 each), then the FNV-1a 64 checksum
//! of every byte before it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::{MiniStoreError, Result};

/// Bytes of segment between index entries: the most a positioned reader reads before the
/// record it wants. 64 KiB costs one small read even with a cold page cache, and a 64 MiB
/// segment's sidecar holds about 1,000 entries (16 KiB).
pub(crate) const STEP: u64 = 64 * 1024;

/// The first bytes of every sidecar; the trailing digits are the layout version.
const MAGIC: &[u8; 8] = b"MSIDX001";
/// Magic, first_seq, header_len, segment_len, count.
const PREAMBLE_LEN: usize = 8 + 4 * 8;
const ENTRY_LEN: usize = 16;
const CHECKSUM_LEN: usize = 8;
/// No sidecar is larger than this: a segment would need more than 2^20 steps (64 GiB).
/// Anything bigger is not one of ours, and is not read into memory.
const MAX_SIDECAR_LEN: u64 = (PREAMBLE_LEN + (1 << 20) * ENTRY_LEN + CHECKSUM_LEN) as u64;

/// Where one record's line starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub offset: u64,
}

/// The sparse index of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SparseIndex {
    first_seq: u64,
    header_len: u64,
    /// Strictly increasing in both seq and offset; the header end (record `first_seq`) is
    /// implied, not stored.
    entries: Vec<Entry>,
}

impl SparseIndex {
    /// An index with no entries for the segment whose records start at `first_seq`, right
    /// after a header of `header_len` bytes.
    pub(crate) fn new(first_seq: u64, header_len: u64) -> Self {
        SparseIndex {
            first_seq,
            header_len,
            entries: Vec::new(),
        }
    }

    /// The first seq of the segment this index belongs to.
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Offset from which the next record start becomes an entry.
    fn next_due(&self) -> u64 {
        self.entries.last().map_or(self.header_len, |e| e.offset) + STEP
    }

    /// Notes that record `seq` starts at `offset`. Records must be noted in order; most
    /// are not kept.
    pub(crate) fn note(&mut self, seq: u64, offset: u64) {
        if offset >= self.next_due() {
            self.entries.push(Entry { seq, offset });
        }
    }

    /// Notes the records of `lines` (complete `\n`-terminated lines, the first of them
    /// record `first_seq`), written at `offset`. Only the line breaks before the last
    /// step boundary crossed are counted: a commit costs one `memchr` pass at most.
    pub(crate) fn note_lines(&mut self, first_seq: u64, offset: u64, lines: &[u8]) {
        let end = offset + lines.len() as u64;
        // `at` is the start of record `seq`, both relative to what is noted so far.
        let (mut seq, mut at) = (first_seq, offset);
        loop {
            let due = self.next_due();
            if at >= due {
                self.note(seq, at);
                continue;
            }
            if due >= end {
                return;
            }
            // The line break that ends the line holding byte `due - 1`: the next line
            // starts at or after `due`.
            let from = (at - offset) as usize;
            let search = (due - 1 - offset) as usize;
            let Some(found) = memchr::memchr(b'\n', &lines[search..]) else {
                return; // not complete lines; nothing more to note
            };
            let next = search + found + 1;
            if next as u64 + offset >= end {
                return; // that line is the last one: no record starts after it here
            }
            seq += memchr::memchr_iter(b'\n', &lines[from..next]).count() as u64;
            at = offset + next as u64;
        }
    }

    /// The greatest entry at or before `seq`, if there is one past the header.
    pub(crate) fn lookup(&self, seq: u64) -> Option<Entry> {
        let after = self.entries.partition_point(|e| e.seq <= seq);
        after.checked_sub(1).map(|i| self.entries[i])
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in order (the implied one at the header excluded).
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The sidecar bytes of this index for a segment of `segment_len` bytes.
    fn encode(&self, segment_len: u64) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(PREAMBLE_LEN + self.entries.len() * ENTRY_LEN + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        for n in [
            self.first_seq,
            self.header_len,
            segment_len,
            self.entries.len() as u64,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for e in &self.entries {
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
        }
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes sidecar bytes, checking them against the segment they claim to index.
    /// `Err` says why they do not fit.
    fn decode(bytes: &[u8], seg: &SegmentShape) -> std::result::Result<SparseIndex, String> {
        let body_len = bytes
            .len()
            .checked_sub(PREAMBLE_LEN + CHECKSUM_LEN)
            .ok_or("too short")?;
        let (data, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if data[..8] != MAGIC[..] {
            return Err("not a ministore index".into());
        }
        if fnv1a64(data).to_le_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        let (first_seq, header_len, segment_len, count) = (word(8), word(16), word(24), word(32));
        if (first_seq, header_len, segment_len) != (seg.first_seq, seg.header_len, seg.len) {
            return Err(format!(
                "made for a segment with first_seq={first_seq}, header {header_len} bytes, \
                 {segment_len} bytes long; this one has {}, {}, {}",
                seg.first_seq, seg.header_len, seg.len
            ));
        }
        if count.checked_mul(ENTRY_LEN as u64) != Some(body_len as u64) {
            return Err(format!("{count} entries do not fill {body_len} bytes"));
        }
        let mut index = SparseIndex::new(first_seq, header_len);
        let mut prev = Entry {
            seq: first_seq,
            offset: header_len,
        };
        for i in 0..count as usize {
            let at = PREAMBLE_LEN + i * ENTRY_LEN;
            let e = Entry {
                seq: word(at),
                offset: word(at + 8),
            };
            // Every record takes at least one byte (its line break), so seqs cannot run
            // ahead of offsets; and every entry starts a record inside the segment.
            let fits = e.seq > prev.seq
                && e.offset > prev.offset
                && e.seq - prev.seq <= e.offset - prev.offset
                && e.offset < segment_len;
            if !fits {
                return Err(format!(
                    "entry {i} ({e:?}) is out of order or out of the segment"
                ));
            }
            index.entries.push(e);
            prev = e;
        }
        Ok(index)
    }
}

/// What a sidecar is checked against: the segment as a reader opened it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentShape {
    pub first_seq: u64,
    pub header_len: u64,
    /// The segment's byte length now.
    pub len: u64,
}

/// FNV-1a, 64 bits: enough to tell a torn or foreign sidecar from a good one (it guards
/// against accidents, not against someone forging an index).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The sidecar of the segment at `segment`: `journal.jsonl.000003` -> `journal.jsonl.000003.idx`.
pub(crate) fn sidecar_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(".idx");
    PathBuf::from(name)
}

/// Writes the sidecar of the sealed segment at `segment` (`segment_len` bytes long).
/// Nothing is written for an index without entries: reading such a segment from its start
/// already costs less than a step.
///
/// Written to a temporary name and renamed, so a reader never sees a half-written sidecar
/// under the real name; not fsynced, because nothing depends on it surviving a crash: a
/// sidecar lost, torn or zero-filled by a power loss fails its checks and is ignored, and
/// the segment is scanned as if it had none.
pub(crate) fn write_sidecar(segment: &Path, index: &SparseIndex, segment_len: u64) -> Result<()> {
    if index.is_empty() {
        return Ok(());
    }
    let path = sidecar_path(segment);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, index.encode(segment_len))
        .map_err(|e| MiniStoreError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| MiniStoreError::io("renaming index to", &path, e))
}

/// The sidecar index of the segment at `segment`, if it has one that fits it. Any problem
/// (none, unreadable, torn, stale, foreign) means no index: the caller scans instead.
pub(crate) fn load_sidecar(segment: &Path, seg: SegmentShape) -> Option<SparseIndex> {
    match check_sidecar(segment, seg) {
        Sidecar::Fits(index) => Some(index),
        Sidecar::Missing => None,
        Sidecar::Unfit(reason) => {
            tracing::debug!(index = %sidecar_path(segment).display(), reason, "ignoring a segment index that does not fit its segment");
            None
        }
    }
}

/// What the sidecar beside a segment is, as `load_sidecar` judges it.
#[derive(Debug)]
pub(crate) enum Sidecar {
    /// There is none.
    Missing,
    /// It fits the segment (checksum, first seq, header and segment length, entry order).
    Fits(SparseIndex),
    /// It exists but cannot be read or does not fit: readers ignore it. Why, for a person.
    Unfit(String),
}

/// Reads and checks the sidecar of the segment at `segment` against `seg`.
pub(crate) fn check_sidecar(segment: &Path, seg: SegmentShape) -> Sidecar {
    let path = sidecar_path(segment);
    let bytes = match std::fs::metadata(&path) {
        Ok(m) if m.len() <= MAX_SIDECAR_LEN => std::fs::read(&path),
        Ok(m) => Err(std::io::Error::other(format!(
            "{} bytes is too large",
            m.len()
        ))),
        Err(e) => Err(e),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Sidecar::Missing,
        Err(e) => return Sidecar::Unfit(format!("cannot be read: {e}")),
    };
    match SparseIndex::decode(&bytes, &seg) {
        Ok(index) => Sidecar::Fits(index),
        Err(reason) => Sidecar::Unfit(reason),
    }
}

/// Deletes the sidecar of a segment about to be deleted. Called before the segment goes, so
/// a crash in between leaves a segment without an index (scanned), not an index without a
/// segment. A failure is only logged: the orphan is harmless (it fits no segment) and the
/// next open removes it.
pub(crate) fn remove_sidecar(segment: &Path) {
    let path = sidecar_path(segment);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(index = %path.display(), error = %e, "could not delete the index of a deleted segment")
        }
    }
}

/// The index of the active segment, shared between its writer and the readers in its
/// process: the writer adds an entry (after the fsync that made the record durable) about
/// once per step and replaces the whole index at rotation.
pub(crate) type SharedIndex = Arc<Mutex<SparseIndex>>;

/// The index behind `shared`. Every change to it is one push or one replacement, so a
/// panic while it was held cannot have left it half-changed: a poisoned lock is taken over.
pub(crate) fn lock(shared: &Mutex<SparseIndex>) -> MutexGuard<'_, SparseIndex> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the readers of a journal in its writer's process find the index of the active
/// segment, which the writer keeps in memory as it commits (a sealed segment's index is its
/// sidecar). With it, a reader positioned in the active segment reads less than 64 KiB
/// before its record, as in a sealed one; without it (no writer in this process, or none
/// open now) the reader counts the segment's lines from its start.
///
/// A handle, cheap to clone, that readers get with the durable position
/// ([`DurableWatch`](crate::DurableWatch)). It can outlive a store: a journal reopened with the
/// same handle ([`MiniStoreOptions::active_index`](crate::MiniStoreOptions::active_index))
/// fills it again, and the readers holding it find the new writer's index (ministore-server
/// reopens idle journals this way). One handle serves one journal.
#[derive(Debug, Clone, Default)]
pub struct ActiveIndex(Arc<Mutex<Weak<Mutex<SparseIndex>>>>);

/// The same handle (clones of one another), as options compare it.
impl PartialEq for ActiveIndex {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ActiveIndex {}

impl ActiveIndex {
    fn slot(&self) -> MutexGuard<'_, Weak<Mutex<SparseIndex>>> {
        // It only ever holds a whole `Weak`: a panic while it was held changed nothing.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `index`, the writer's of the journal at `base`, the one readers with this
    /// handle find while the writer holds it. Refused while another writer's is there:
    /// one journal's readers would seek by another journal's offsets, which the checks on
    /// an entry (the segment's first seq, a line break before it) do not always catch.
    pub(crate) fn publish(&self, base: &Path, index: &SharedIndex) -> Result<()> {
        let mut slot = self.slot();
        if slot.upgrade().is_some() {
            return Err(MiniStoreError::InvalidArgument(format!(
                "the active index handle given to open {} is filled by another open journal; \
                 give each journal its own",
                base.display()
            )));
        }
        *slot = Arc::downgrade(index);
        Ok(())
    }

    /// Empties the handle if it holds `index`: its writer is closing, and a reader that
    /// looks it up meanwhile scans instead. (Were it left to the `Weak` to die, a lookup
    /// holding it for a moment could make a reopen with this handle look like a second
    /// writer.)
    pub(crate) fn withdraw(&self, index: &SharedIndex) {
        let mut slot = self.slot();
        if slot.ptr_eq(&Arc::downgrade(index)) {
            *slot = Weak::new();
        }
    }

    /// The greatest entry at or before `seq` in the in-memory index of the active segment
    /// starting at `first_seq`, if a writer fills this handle now.
    pub(crate) fn lookup(&self, first_seq: u64, seq: u64) -> Option<Entry> {
        let index = self.slot().upgrade()?;
        let index = lock(&index);
        if index.first_seq() != first_seq {
            return None; // rotated since the reader listed the segments
        }
        index.lookup(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of the given lengths (newline included) after a header of 10 bytes.
    fn lines(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &len in lens {
            out.extend(std::iter::repeat_n(b'x', len - 1));
            out.push(b'\n');
        }
        out
    }

    /// Every entry noted, the slow way: one `note` per record.
    fn noted_one_by_one(first_seq: u64, header_len: u64, bytes: &[u8]) -> SparseIndex {
        let mut index = SparseIndex::new(first_seq, header_len);
        let mut at = header_len;
        for (i, line) in bytes.split_inclusive(|&b| b == b'\n').enumerate() {
            index.note(first_seq + i as u64, at);
            at += line.len() as u64;
        }
        index
    }

    #[test]
    fn noting_a_batch_finds_the_same_entries_as_noting_each_record() {
        let sizes: Vec<usize> = (0..20_000).map(|i| 1 + (i * 7919) % 300).collect();
        let bytes = lines(&sizes);
        let whole = noted_one_by_one(5, 10, &bytes);
        assert!(whole.entries.len() > 20);
        // The same bytes committed in batches of every shape.
        for batch in [1, 2, 3, 100, 999, 20_000] {
            let mut index = SparseIndex::new(5, 10);
            let (mut seq, mut offset) = (5, 10);
            for chunk in sizes.chunks(batch) {
                let chunk_bytes = lines(chunk);
                index.note_lines(seq, offset, &chunk_bytes);
                seq += chunk.len() as u64;
                offset += chunk_bytes.len() as u64;
            }
            assert_eq!(index, whole, "batches of {batch}");
        }
    }

    #[test]
    fn lookup_gives_the_greatest_entry_at_or_before_a_seq() {
        let bytes = lines(&[STEP as usize / 2; 10]);
        let index = noted_one_by_one(1, 10, &bytes);
        let seqs: Vec<u64> = index.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 5, 7, 9]);
        assert_eq!(index.lookup(2), None);
        assert_eq!(index.lookup(3).unwrap().seq, 3);
        assert_eq!(index.lookup(4).unwrap().seq, 3);
        assert_eq!(index.lookup(100).unwrap().seq, 9);
    }

    #[test]
    fn a_sidecar_decodes_only_for_its_own_segment_and_only_intact() {
        let bytes = lines(&[1000; 300]);
        let index = noted_one_by_one(7, 40, &bytes);
        let seg = SegmentShape {
            first_seq: 7,
            header_len: 40,
            len: 40 + bytes.len() as u64,
        };
        let encoded = index.encode(seg.len);
        assert_eq!(SparseIndex::decode(&encoded, &seg), Ok(index));
        for other in [
            SegmentShape {
                len: seg.len + 1,
                ..seg
            },
            SegmentShape {
                first_seq: 8,
                ..seg
            },
            SegmentShape {
                header_len: 41,
                ..seg
            },
        ] {
            assert!(SparseIndex::decode(&encoded, &other).is_err(), "{other:?}");
        }
        for cut in 0..encoded.len() {
            assert!(
                SparseIndex::decode(&encoded[..cut], &seg).is_err(),
                "cut at {cut}"
            );
        }
        for at in 0..encoded.len() {
            let mut flipped = encoded.clone();
            flipped[at] ^= 0x20;
            assert!(SparseIndex::decode(&flipped, &seg).is_err(), "flip at {at}");
        }
    }
}
