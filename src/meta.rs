//! The metadata file beside each segment: one entry per append request, holding its
//! batch boundary, idempotency key, commit time and a CRC32C of each record. Kept out of
//! the JSON lines, so a segment stays plain JSON lines for `jq`, `tail -f` and the
//! published crate. The design, and why each field exists: `docs/metadata-design.md`.
//!
//! A metadata file is named by the seq of the first record it covers,
//! `journal.jsonl.from-<seq>.meta` (`segment::meta_path`), and is never renamed: rotation
//! renames the segment only, so no crash can leave a segment paired with another segment's
//! metadata. Layout, little-endian:
//!
//! ```text
//! header  "MSMETA01" first_seq:u64 data_offset:u64 created_unix_ns:u64 crc:u32
//! entry   len:u32 (bytes after this field)
//!         first_seq:u64 count:u32 group_first_seq:u64 data_offset:u64 data_len:u64
//!         commit_unix_ns:u64 fingerprint:u64 key_len:u8 key[key_len]
//!         record_crc:u32 x count  crc:u32 (CRC32C of the entry from first_seq on)
//! ```
//!
//! `data_offset` in the header is where record `first_seq` starts in the segment (after
//! the header line, or after the records of a segment that was written before the journal
//! had metadata). `group_first_seq` is the first seq of the commit group the entry was
//! written in: recovery uses it to tell a torn last group (cut) from damage to a group that
//! was acknowledged (refused).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::segment;
use crate::{MiniStoreError, Result};

/// First bytes of every metadata file.
const MAGIC: &[u8; 8] = b"MSMETA01";
/// Bytes of the header.
pub(crate) const HEADER_LEN: u64 = 8 + 8 + 8 + 8 + 4;
/// Bytes of an entry's fixed fields after `len` (before the key and the record CRCs).
const ENTRY_FIXED: usize = 8 + 4 + 8 + 8 + 8 + 8 + 8 + 1;
/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// The header of a metadata file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// The seq of the first record the file covers.
    pub first_seq: u64,
    /// Where that record starts in its segment.
    pub data_offset: u64,
    /// When the file was created.
    pub created_unix_ns: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.data_offset.to_le_bytes());
        out.extend_from_slice(&self.created_unix_ns.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> std::result::Result<Header, String> {
        if bytes.len() < HEADER_LEN as usize {
            return Err(format!(
                "{} bytes is shorter than a header ({HEADER_LEN})",
                bytes.len()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err("it does not start with MSMETA01".into());
        }
        let body = &bytes[..HEADER_LEN as usize - 4];
        if crc32c::crc32c(body) != u32_at(bytes, HEADER_LEN as usize - 4) {
            return Err("its header fails its checksum".into());
        }
        Ok(Header {
            first_seq: u64_at(bytes, 8),
            data_offset: u64_at(bytes, 16),
            created_unix_ns: u64_at(bytes, 24),
        })
    }
}

/// One append request's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub first_seq: u64,
    pub count: u32,
    pub group_first_seq: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub commit_unix_ns: u64,
    pub fingerprint: u64,
    pub key: Option<Box<str>>,
    pub record_crcs: Vec<u32>,
}

impl Entry {
    /// Bytes the entry takes in its file, its `len` field included.
    pub(crate) fn encoded_len(&self) -> u64 {
        4 + self.body_len() as u64
    }

    /// Bytes after the `len` field: the fixed fields, the key, the CRCs, the entry's CRC.
    fn body_len(&self) -> usize {
        let key = self.key.as_deref().map_or(0, str::len);
        ENTRY_FIXED + key + 4 * self.record_crcs.len() + 4
    }

    /// The entry's bytes, `len` field first, appended to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let key = self.key.as_deref().unwrap_or("").as_bytes();
        debug_assert!(key.len() <= MAX_KEY_BYTES);
        out.extend_from_slice(&(self.body_len() as u32).to_le_bytes());
        let start = out.len();
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.group_first_seq.to_le_bytes());
        out.extend_from_slice(&self.data_offset.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.commit_unix_ns.to_le_bytes());
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.push(key.len() as u8);
        out.extend_from_slice(key);
        for crc in &self.record_crcs {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Decodes an entry's bytes after its `len` field.
    fn decode(body: &[u8]) -> std::result::Result<Entry, String> {
        if body.len() < ENTRY_FIXED + 4 {
            return Err("the entry is shorter than its fixed fields".into());
        }
        let (fields, crc) = body.split_at(body.len() - 4);
        if crc32c::crc32c(fields) != u32_at(crc, 0) {
            return Err("the entry fails its checksum".into());
        }
        let count = u32_at(fields, 8);
        let key_len = fields[ENTRY_FIXED - 1] as usize;
        if key_len > MAX_KEY_BYTES || fields.len() != ENTRY_FIXED + key_len + 4 * count as usize {
            return Err("the entry's lengths do not add up".into());
        }
        let key_bytes = &fields[ENTRY_FIXED..ENTRY_FIXED + key_len];
        let key = match key_len {
            0 => None,
            _ => Some(
                std::str::from_utf8(key_bytes)
                    .map_err(|_| "the entry's key is not UTF-8".to_string())?
                    .into(),
            ),
        };
        let crcs = &fields[ENTRY_FIXED + key_len..];
        Ok(Entry {
            first_seq: u64_at(fields, 0),
            count,
            group_first_seq: u64_at(fields, 12),
            data_offset: u64_at(fields, 20),
            data_len: u64_at(fields, 28),
            commit_unix_ns: u64_at(fields, 36),
            fingerprint: u64_at(fields, 44),
            key,
            record_crcs: crcs.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
        })
    }

    /// The seq after the entry's last record.
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// The offset after the entry's last record in its segment.
    pub(crate) fn data_end(&self) -> u64 {
        self.data_offset + self.data_len
    }
}

/// The fingerprint of a request's records (their lines, newlines included): tells a retry
/// of the same request from a different request that reuses its key.
pub(crate) fn fingerprint(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// The CRC32C of each line of `data` (each `\n`-terminated, the newline not included).
pub(crate) fn line_crcs(data: &[u8], out: &mut Vec<u32>) {
    for line in data.split_inclusive(|&b| b == b'\n') {
        out.push(crc32c::crc32c(line.strip_suffix(b"\n").unwrap_or(line)));
    }
}

/// What reading a metadata file found: its header, then its entries as far as they are
/// whole and pass their checksums.
#[derive(Debug)]
pub(crate) struct Contents {
    pub header: Header,
    /// Entries in file order, each with the offset of its `len` field in the file.
    pub entries: Vec<(u64, Entry)>,
    /// The file's length.
    pub file_len: u64,
    /// Why reading stopped before the end of the file (a torn or damaged entry).
    pub stopped: Option<String>,
    /// Whole, valid entries found after the one that stopped the reading, by following
    /// the length fields on (with their offsets): a later commit group among them proves
    /// the bad entry was acknowledged (see `recovery::recover_active`).
    pub after_damage: Vec<(u64, Entry)>,
}

/// Reads the metadata file at `path`: the header (an error if it is missing or damaged),
/// then every entry that is whole and passes its checksum, in order, up to the first that
/// is not; after it, the valid entries its length fields lead to. An entry is never larger
/// than the file, so memory stays within the file's size. The loop ends: every step
/// consumes at least 4 bytes of a file of fixed length (read once, from an open
/// descriptor).
pub(crate) fn read(path: &Path) -> Result<Contents> {
    let file = File::open(path).map_err(|e| MiniStoreError::io("opening", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| MiniStoreError::io("reading metadata of", path, e))?
        .len();
    let mut input = std::io::BufReader::with_capacity(256 << 10, file.take(file_len));
    let mut head = [0u8; HEADER_LEN as usize];
    let bad = |reason: String| MiniStoreError::BadMeta {
        path: path.to_path_buf(),
        reason,
    };
    input
        .read_exact(&mut head)
        .map_err(|_| bad(format!("{file_len} bytes is shorter than a header")))?;
    let header = Header::decode(&head).map_err(bad)?;
    let mut entries = Vec::new();
    let mut after_damage = Vec::new();
    let mut offset = HEADER_LEN;
    let mut stopped: Option<String> = None;
    let mut body = Vec::new();
    while offset < file_len {
        let mut len = [0u8; 4];
        if file_len - offset < 4 || input.read_exact(&mut len).is_err() {
            stopped.get_or_insert_with(|| format!("a torn entry at byte {offset}"));
            break;
        }
        let len = u32::from_le_bytes(len);
        if u64::from(len) > file_len - offset - 4 {
            stopped.get_or_insert_with(|| {
                format!("the entry at byte {offset} claims {len} bytes, more than the file holds")
            });
            break;
        }
        body.resize(len as usize, 0);
        if let Err(e) = input.read_exact(&mut body) {
            return Err(MiniStoreError::io("reading", path, e));
        }
        match (Entry::decode(&body), &stopped) {
            (Ok(entry), None) => entries.push((offset, entry)),
            (Ok(entry), Some(_)) => after_damage.push((offset, entry)),
            (Err(reason), None) => {
                stopped = Some(format!("the entry at byte {offset}: {reason}"));
            }
            (Err(_), Some(_)) => {}
        }
        offset += 4 + u64::from(len);
    }
    Ok(Contents {
        header,
        entries,
        file_len,
        stopped,
        after_damage,
    })
}

/// Reads a metadata file's entries in order, beside its segment, for readers. Reads are
/// `pread`s into a buffer of its own, so a file another writer is appending to is read as
/// far as its entries are whole, and a later call reads on from there.
#[derive(Debug)]
pub(crate) struct EntryCursor {
    file: File,
    pub path: PathBuf,
    /// The first seq the file covers.
    pub first_seq: u64,
    /// Offset of the next entry not yet read.
    next: u64,
    /// Bytes of the file from offset `buf_at`.
    buf: Vec<u8>,
    buf_at: u64,
    /// The last entry read.
    current: Option<Entry>,
    /// Whether it may read the file; when not, what it would have to read fails with
    /// `WouldBlock` and nothing is consumed (see [`JournalStream`](crate::JournalStream),
    /// which reads on the blocking pool only then).
    pub may_read: bool,
}

/// Bytes a reader reads from a metadata file at a time.
const CURSOR_CHUNK: usize = 64 * 1024;

impl EntryCursor {
    /// Opens the metadata file at `path` and reads its header; `None` if it is gone.
    pub(crate) fn open(path: &Path) -> Result<Option<EntryCursor>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(MiniStoreError::io("opening", path, e)),
        };
        let mut head = [0u8; HEADER_LEN as usize];
        let header = std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
            .map_err(|e| e.to_string())
            .and_then(|()| Header::decode(&head))
            .map_err(|reason| MiniStoreError::BadMeta {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(Some(EntryCursor {
            file,
            path: path.to_path_buf(),
            first_seq: header.first_seq,
            next: HEADER_LEN,
            buf: Vec::new(),
            buf_at: HEADER_LEN,
            current: None,
            may_read: true,
        }))
    }

    /// The entry that holds record `seq` (at least `first_seq`). `Ok(None)`: no whole entry
    /// for it (yet); `Err(why)`: the entry where it should be is damaged.
    pub(crate) fn entry_for(
        &mut self,
        seq: u64,
    ) -> std::io::Result<Result<Option<&Entry>, String>> {
        // Entries are contiguous in seq: each step reads the next one, and stops at the
        // first that holds `seq`, or at the end of what is whole.
        while self.current.as_ref().is_none_or(|e| e.end_seq() <= seq) {
            match self.next_entry()? {
                Ok(Some(entry)) => self.current = Some(entry),
                Ok(None) => return Ok(Ok(None)),
                Err(why) => return Ok(Err(why)),
            }
        }
        let entry = self.current.as_ref().expect("read above");
        if entry.first_seq > seq {
            return Ok(Err(format!(
                "its entries skip from seq {} to seq {}",
                seq, entry.first_seq
            )));
        }
        Ok(Ok(Some(entry)))
    }

    fn next_entry(&mut self) -> std::io::Result<Result<Option<Entry>, String>> {
        let at = self.next;
        let Some(len) = self.bytes_at(at, 4)? else {
            return Ok(Ok(None));
        };
        let len = u32_at(len, 0) as usize;
        let Some(body) = self.bytes_at(at + 4, len)? else {
            return Ok(Ok(None));
        };
        match Entry::decode(body) {
            Ok(entry) => {
                self.next = at + 4 + len as u64;
                Ok(Ok(Some(entry)))
            }
            Err(why) => Ok(Err(format!(
                "the entry at byte {at} of {}: {why}",
                self.path.display()
            ))),
        }
    }

    /// `n` bytes of the file from `at`, or `None` if the file does not hold them (yet).
    fn bytes_at(&mut self, at: u64, n: usize) -> std::io::Result<Option<&[u8]>> {
        let in_buf = at >= self.buf_at && at + n as u64 <= self.buf_at + self.buf.len() as u64;
        if !in_buf && !self.may_read {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        if !in_buf {
            // A damaged length field asks for up to 4 GiB: never hold more than the file
            // has. (Checked now, not once: the file of an active segment grows.)
            if at.saturating_add(n as u64) > self.file.metadata()?.len() {
                return Ok(None);
            }
            self.buf.clear();
            self.buf_at = at;
            self.buf.resize(n.max(CURSOR_CHUNK), 0);
            let mut got = 0;
            // Ends: each turn reads more, or stops at the end of the file.
            while got < n {
                match std::os::unix::fs::FileExt::read_at(
                    &self.file,
                    &mut self.buf[got..],
                    at + got as u64,
                )? {
                    0 => break,
                    read => got += read,
                }
            }
            self.buf.truncate(got);
            if got < n {
                return Ok(None);
            }
        }
        let from = (at - self.buf_at) as usize;
        Ok(Some(&self.buf[from..from + n]))
    }
}

/// The metadata file among `metas` (as [`list`] gives them) of the segment whose records
/// run from `first_seq` to before `next_first` (the next segment's; `None` for the
/// newest): the one named by `first_seq`, as every segment a writer of this version
/// started has; else (a segment started before the journal had metadata, whose coverage
/// starts after its first records) the newest whose first seq is in that range.
///
/// The exact name comes first because a rotation creates the next segment's metadata
/// before the segment itself: meanwhile the sealed segment is the newest, and the range
/// alone would pair it with its successor's file.
pub(crate) fn of_segment(
    metas: &[(u64, PathBuf)],
    first_seq: u64,
    next_first: Option<u64>,
) -> Option<&Path> {
    metas
        .iter()
        .find(|(m, _)| *m == first_seq)
        .or_else(|| {
            metas
                .iter()
                .rev()
                .find(|(m, _)| *m > first_seq && next_first.is_none_or(|next| *m < next))
        })
        .map(|(_, path)| path.as_path())
}

/// What the metadata says of a record: its CRC32C and commit time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected {
    pub crc: u32,
    pub commit_unix_ns: u64,
}

/// How a record's line is checked against the metadata.
#[derive(Debug)]
pub(crate) enum Check {
    /// Not covered by metadata (a segment, or records, from before it): read as is.
    Unverified,
    /// Its line must match this.
    Crc(Expected),
    /// No whole entry for it yet: a line there is not committed yet (an active segment
    /// read as it is on disk), so it is not read.
    NotYet,
    /// No valid entry where there must be one: a line there is damage (why).
    NoEntry(String),
}

impl Check {
    /// Why a line whose CRC32C is `crc` is not the record written, if it is not (`crc` is
    /// asked only of a line with an entry). `NotYet` is the caller's: such a line is not
    /// read.
    pub(crate) fn failure(&self, crc: impl FnOnce() -> u32) -> Option<String> {
        match self {
            Check::Unverified | Check::NotYet => None,
            Check::Crc(expected) if crc() == expected.crc => None,
            Check::Crc(_) => Some("fails its CRC32C: its bytes are not those written".into()),
            Check::NoEntry(why) => Some(why.clone()),
        }
    }
}

/// The checks of one segment's records against its metadata entries, in order: what every
/// reader, `open`'s scan aside, and `verify` apply to each line.
#[derive(Debug)]
pub(crate) struct LineChecks {
    /// The segment's metadata entries, read in step with its records; `None` for a
    /// segment without metadata (read unverified, as the published crate's).
    entries: Option<EntryCursor>,
    /// A rotated segment: complete, every line of it was committed with its entry.
    sealed: bool,
    /// The first seq of the entry last found whole in the file (see `check_for`).
    whole_entry: Option<u64>,
}

impl LineChecks {
    /// The checks of the segment whose records start at `first_seq`, against its metadata
    /// file: the one among `metas` covering seqs from `first_seq` up to `next_first` (the
    /// next segment's).
    pub(crate) fn open(
        metas: &[(u64, PathBuf)],
        first_seq: u64,
        next_first: Option<u64>,
        sealed: bool,
    ) -> Result<LineChecks> {
        let entries = match of_segment(metas, first_seq, next_first) {
            Some(path) => EntryCursor::open(path)?,
            None => None,
        };
        Ok(LineChecks {
            entries,
            sealed,
            whole_entry: None,
        })
    }

    /// How record `seq` of `segment` is to be checked (see [`Check`]); records are asked
    /// for in order. A sealed segment's record, or one a durable reader was told is
    /// durable, needs a whole, valid entry; an active segment read as it is on disk may
    /// have lines whose entry is not written yet.
    pub(crate) fn check_for(
        &mut self,
        segment: &File,
        seq: u64,
        durable_reader: bool,
    ) -> Result<Check> {
        let Some(meta) = self.entries.as_mut().filter(|m| seq >= m.first_seq) else {
            return Ok(Check::Unverified);
        };
        let found = match meta.entry_for(seq) {
            Err(e) => {
                let path = meta.path.clone();
                return Err(MiniStoreError::io("reading", &path, e));
            }
            Ok(found) => found,
        };
        let settled = self.sealed || durable_reader;
        Ok(match found {
            // Read as it is on disk, an active segment may hold part of a request's lines:
            // its records are readable only once all its lines are there (a request is
            // all or none), which the last byte of its data tells.
            Ok(Some(entry))
                if !settled
                    && self.whole_entry != Some(entry.first_seq)
                    && !segment::follows_line_break(segment, entry.data_end()) =>
            {
                Check::NotYet
            }
            Ok(Some(entry)) => {
                self.whole_entry = Some(entry.first_seq);
                Check::Crc(Expected {
                    crc: entry.record_crcs[(seq - entry.first_seq) as usize],
                    commit_unix_ns: entry.commit_unix_ns,
                })
            }
            Ok(None) | Err(_) if !settled => Check::NotYet,
            // Lines after a sealed segment's last entry were appended by a writer that
            // keeps no metadata (the published crate, which rotates on its own): read as
            // such a writer's records are. (This writer seals a segment only after
            // committing every line of it with its entry.)
            Ok(None) if self.sealed => Check::Unverified,
            Ok(None) => Check::NoEntry(format!("has no entry in {}", meta.path.display())),
            Err(why) => Check::NoEntry(format!("has no valid metadata: {why}")),
        })
    }
}

/// The metadata files of the journal at `base`: (first seq in the name, path), ascending.
pub(crate) fn list(base: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = segment::list_siblings(base)?
        .into_iter()
        .filter_map(|(sibling, path)| match sibling {
            segment::Sibling::Meta(seq) => Some((seq, path)),
            _ => None,
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_flipped_bit_is_seen() {
        let entry = Entry {
            first_seq: 7,
            count: 2,
            group_first_seq: 5,
            data_offset: 100,
            data_len: 10,
            commit_unix_ns: 123,
            fingerprint: fingerprint(b"1\n22\n"),
            key: Some("order-42".into()),
            record_crcs: vec![1, 2],
        };
        let mut bytes = Vec::new();
        entry.encode_into(&mut bytes);
        assert_eq!(Entry::decode(&bytes[4..]).unwrap(), entry);
        assert_eq!(entry.encoded_len(), bytes.len() as u64);
        for bit in 0..(bytes.len() - 4) * 8 {
            let mut bad = bytes[4..].to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Entry::decode(&bad).is_err(),
                "bit {bit} flipped went unseen"
            );
        }
        let header = Header {
            first_seq: 9,
            data_offset: 40,
            created_unix_ns: 1,
        };
        assert_eq!(Header::decode(&header.encode()).unwrap(), header);
    }

    #[test]
    fn a_damaged_length_is_no_whole_entry_and_not_a_4_gib_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl.from-1.meta");
        let header = Header {
            first_seq: 1,
            data_offset: 40,
            created_unix_ns: 1,
        };
        let mut bytes = header.encode();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let mut cursor = EntryCursor::open(&path).unwrap().unwrap();
        assert_eq!(cursor.entry_for(1).unwrap(), Ok(None));
        assert!(
            cursor.buf.capacity() <= CURSOR_CHUNK,
            "{}",
            cursor.buf.capacity()
        );
    }

    #[test]
    fn line_crcs_leave_the_newline_out() {
        let mut crcs = Vec::new();
        line_crcs(b"{\"a\":1}\n2\n", &mut crcs);
        assert_eq!(
            crcs,
            vec![crc32c::crc32c(b"{\"a\":1}"), crc32c::crc32c(b"2")]
        );
    }
}
