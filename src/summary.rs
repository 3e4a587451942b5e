//! A journal's summary read from its files, without opening it: its retained range of
//! sequence numbers, its segment files and its bytes on disk. What the server's
//! `ListJournals` reports for journals it has not opened, and what a listing tool needs.
//!
//! Like [`verify`](crate::verify), it only reads: no lock, no repair, no write, so it is
//! safe on the files of a journal a server has open (it then sees the files as they are,
//! which may be ahead of what is durable, by a write in progress).

use std::fs::File;
use std::path::Path;

use crate::segment::{self, Segment};
use crate::{MiniStoreError, Result, meta};

/// Reads of one journal, when its files change under the read (a live rotation or
/// retention deleting a segment between listing and opening it).
const MAX_ATTEMPTS: usize = 3;

/// What [`summary`] found: the same numbers as [`Durable`](crate::Durable) gives for an
/// open journal, and the journal's bytes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSummary {
    /// The oldest retained sequence number (`last_seq + 1` when the journal holds no
    /// records).
    pub first_seq: u64,
    /// The last sequence number on disk (0 when the journal has never held a record).
    pub last_seq: u64,
    /// Segment files: the rotated ones and the active one.
    pub segments: usize,
    /// Bytes of the journal's files: see [`disk_bytes`].
    pub size_bytes: u64,
}

impl JournalSummary {
    /// How many records are retained.
    pub fn records(&self) -> u64 {
        (self.last_seq + 1).saturating_sub(self.first_seq)
    }
}

/// The summary of the journal whose active file is `base` (`DIR/journal.jsonl`), read from
/// its files.
///
/// The first seq is the oldest segment's (its header). The last seq comes from the newest
/// metadata file (`journal.jsonl.from-<seq>.meta`): its last entry says where the last
/// request's records end, so the segment is not scanned; only lines after that entry
/// (written by a writer without metadata files, such as the published crate) are read and
/// counted. A segment without a metadata file (the published crate's, older versions') is
/// read and its complete JSON lines counted. After a crash, before the journal is opened
/// again, this counts the complete lines of an unfinished request that `open` would cut.
///
/// A journal with no files (an empty directory) has no records: `first_seq` 1, `last_seq` 0.
///
/// # Errors
/// A file that cannot be read ([`MiniStoreError::Io`]), a header that is not a journal's
/// ([`MiniStoreError::BadHeader`]), an invalid line with records after it
/// ([`MiniStoreError::Corrupt`]). A file renamed or deleted during the read (a live
/// rotation) makes it start again, three times at most.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ministore::MiniStoreError> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("journal.jsonl");
/// let mut store = ministore::MiniStore::open(&path).await?;
/// store.append_batch(&["a", "b", "c"]).await?;
/// drop(store);
///
/// let summary = ministore::summary(&path)?;
/// assert_eq!((summary.first_seq, summary.last_seq), (1, 3));
/// assert_eq!((summary.records(), summary.segments), (3, 1));
/// assert_eq!(summary.size_bytes, ministore::disk_bytes(&path)?);
/// # Ok(())
/// # }
/// ```
pub fn summary(base: impl AsRef<Path>) -> Result<JournalSummary> {
    let base = base.as_ref();
    let mut attempt = 1;
    loop {
        match read_summary(base) {
            Err(e)
                if attempt < MAX_ATTEMPTS && e.io_kind() == Some(std::io::ErrorKind::NotFound) =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The bytes on disk of the journal whose active file is `base`: every file in its
/// directory whose name starts with the active file's (`journal.jsonl`, its rotated
/// segments, their indexes and metadata files, the lock, evidence kept by a repair). A
/// missing directory holds 0 bytes.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("journal.jsonl"), "// MINISTORE JOURNAL v0.1.4\n1\n").unwrap();
/// std::fs::write(dir.path().join("notes.txt"), "not the journal's").unwrap();
/// assert_eq!(ministore::disk_bytes(dir.path().join("journal.jsonl")).unwrap(), 30);
/// ```
///
/// # Errors
/// The directory cannot be listed.
pub fn disk_bytes(base: impl AsRef<Path>) -> Result<u64> {
    let base = base.as_ref();
    let dir = segment::dir_of(base);
    let Some(stem) = base.file_name() else {
        return Err(MiniStoreError::InvalidArgument(format!(
            "journal path {} must end in a file name",
            base.display()
        )));
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(MiniStoreError::io("listing", dir, e)),
    };
    let mut bytes = 0;
    for entry in entries {
        let entry = entry.map_err(|e| MiniStoreError::io("listing", dir, e))?;
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(stem.as_encoded_bytes())
        {
            continue;
        }
        // A file deleted since the listing (retention) holds nothing any more.
        if let Ok(metadata) = entry.metadata()
            && metadata.is_file()
        {
            bytes += metadata.len();
        }
    }
    Ok(bytes)
}

fn read_summary(base: &Path) -> Result<JournalSummary> {
    let segments = segment::catalog(base)?;
    let size_bytes = disk_bytes(base)?;
    let (Some(oldest), Some(newest)) = (segments.first(), segments.last()) else {
        return Ok(JournalSummary {
            first_seq: 1,
            last_seq: 0,
            segments: 0,
            size_bytes,
        });
    };
    let end = end_seq(base, newest)?;
    Ok(JournalSummary {
        first_seq: oldest.first_seq,
        last_seq: end.saturating_sub(1),
        segments: segments.len(),
        size_bytes,
    })
}

/// The seq after the last record of `newest`, the journal's newest segment.
fn end_seq(base: &Path, newest: &Segment) -> Result<u64> {
    let path = &newest.path;
    let file = File::open(path).map_err(|e| MiniStoreError::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| MiniStoreError::io("reading metadata of", path, e))?
        .len();
    let (seq, offset) = match covered_by_meta(base, newest, &file, len)? {
        Some(covered) => covered,
        None => (newest.first_seq, newest.header_len),
    };
    if offset == len || unwritten_at(&file, offset) {
        return Ok(seq);
    }
    // Lines no metadata entry covers: count the complete JSON lines, up to the first NUL
    // (the zeros a preallocating writer leaves ahead of its records). Bounded by the
    // file's length, measured when the scan starts.
    let body = segment::scan_body(&file, path, offset, true, |_, _| {})?;
    Ok(seq + body.records)
}

/// Where the newest metadata entry that fits `segment` ends: (the seq after its last
/// record, the offset after it). `None` when the segment has no metadata file, or its
/// metadata file cannot be read (the caller counts lines instead). An entry fits when its
/// records end inside the file on a line break: after a crash the last entry may be
/// durable while its records are not, and `open` would drop it.
fn covered_by_meta(
    base: &Path,
    segment: &Segment,
    file: &File,
    len: u64,
) -> Result<Option<(u64, u64)>> {
    let metas = meta::list(base)?;
    // Metadata files are named by the first seq they cover; the segment's own is the
    // newest, at or after its first seq. An older one belongs to a rotated segment.
    let Some((_, path)) = metas.last().filter(|(seq, _)| *seq >= segment.first_seq) else {
        return Ok(None);
    };
    let contents = match meta::read(path) {
        Ok(contents) => contents,
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => return Err(e),
        Err(_) => return Ok(None),
    };
    let fits = |end: u64| {
        end <= len && (end == segment.header_len || segment::follows_line_break(file, end))
    };
    // Newest first; each step looks at one entry of a list read once.
    for (_, entry) in contents.entries.iter().rev() {
        if fits(entry.data_end()) {
            return Ok(Some((entry.end_seq(), entry.data_end())));
        }
    }
    let header = contents.header;
    Ok(fits(header.data_offset).then_some((header.first_seq, header.data_offset)))
}

/// Whether the byte at `offset` is a NUL: space written ahead of the records, not a record.
fn unwritten_at(file: &File, offset: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut byte = [0xffu8];
    matches!(file.read_at(&mut byte, offset), Ok(1) if byte[0] == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_journal_of_the_published_crate_is_counted_by_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("journal.jsonl");
        write(
            &segment::rotated_path(&base, 1),
            "// MINISTORE JOURNAL v0.1.4\n1\n2\n",
        );
        write(&base, "// MINISTORE JOURNAL v0.1.4\n3\n{\"torn\":");
        let summary = summary(&base).unwrap();
        assert_eq!((summary.first_seq, summary.last_seq), (1, 3));
        assert_eq!(summary.segments, 2);
    }

    #[test]
    fn an_empty_directory_is_a_journal_without_records() {
        let dir = tempfile::tempdir().unwrap();
        let summary = summary(dir.path().join("journal.jsonl")).unwrap();
        assert_eq!(
            summary,
            JournalSummary {
                first_seq: 1,
                last_seq: 0,
                segments: 0,
                size_bytes: 0
            }
        );
        assert_eq!(summary.records(), 0);
    }

    #[tokio::test]
    async fn lines_after_the_last_metadata_entry_are_counted_and_zeros_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("journal.jsonl");
        let mut store = crate::MiniStore::open(&base).await.unwrap();
        store.append_batch(&[1, 2]).await.unwrap();
        drop(store);
        // A writer without metadata (the published crate) appended two more lines; then
        // zeros, as a preallocating writer's crash leaves them.
        let mut bytes = std::fs::read(&base).unwrap();
        bytes.extend_from_slice(b"3\n4\n\0\0\0\0");
        std::fs::write(&base, bytes).unwrap();
        assert_eq!(summary(&base).unwrap().last_seq, 4);
    }

    #[tokio::test]
    async fn a_metadata_entry_whose_records_are_torn_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("journal.jsonl");
        let mut store = crate::MiniStore::open(&base).await.unwrap();
        store.append_batch(&[1, 2]).await.unwrap();
        store.append_batch(&[30, 40]).await.unwrap();
        drop(store);
        // A crash left the second batch's entry durable and its records cut short.
        let bytes = std::fs::read(&base).unwrap();
        std::fs::write(&base, &bytes[..bytes.len() - 4]).unwrap();
        assert_eq!(summary(&base).unwrap().last_seq, 2);
    }
}
