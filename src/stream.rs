//! [`JournalStream`]: the published API's line stream over one journal file, parsed on
//! demand, each line that has a metadata entry checked against its CRC32C.

use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, BufReader};

use crate::blocking::blocking;
use crate::meta::{self, EntryCursor};
use crate::read::READ_CHUNK;
use crate::segment;
use crate::{MiniStoreError, Result};

/// A record line, and why it fails its CRC32C check if it does: (seq, why).
type CheckedLine = (Vec<u8>, Option<(u64, String)>);

type LineFuture =
    Pin<Box<dyn Future<Output = (Cursor, std::io::Result<Option<CheckedLine>>)> + Send>>;

/// A stream over the records of a single journal file, parsed on demand.
///
/// It implements `tokio_stream::Stream<Item = Result<T, MiniStoreError>>`, and also has an
/// inherent async [`next`](Self::next). Memory stays flat: one line at a time. A line that
/// does not parse yields an error naming the file and line, and the stream goes on. An
/// incomplete last line (a write in progress or cut by a crash) is not a record, and
/// neither is anything from a NUL byte on (space the writer has not written yet).
pub struct JournalStream<T> {
    /// `None` while a line is being read (`pending` has it).
    cursor: Option<Cursor>,
    pending: Option<LineFuture>,
    _record: PhantomData<fn() -> T>,
}

/// Where a [`JournalStream`] is: its file, and the metadata it checks lines against.
struct Cursor {
    reader: LineReader,
    /// The file's metadata, when it has some: each line that has a whole entry is checked
    /// against its CRC32C. Lines without one (a write in progress, or records of the
    /// published crate) are read as they are, as the published API reads them.
    check: Option<StreamCheck>,
}

impl Cursor {
    /// The next line and its check. The line is read through tokio's file (on the blocking
    /// pool); the metadata is read there too, when the entries the cursor holds in memory
    /// do not cover the line (once per 64 KiB of metadata): no file I/O on the caller's
    /// runtime thread.
    async fn next(mut self) -> (Self, std::io::Result<Option<CheckedLine>>) {
        let (reader, line) = self.reader.next_line().await;
        self.reader = reader;
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => return (self, Ok(None)),
            Err(e) => return (self, Err(e)),
        };
        let Some(mut check) = self.check.take() else {
            return (self, Ok(Some((line, None))));
        };
        // The header is line 1: the line just read is record `first_seq + line - 2`.
        let seq = check.first_seq + self.reader.line - 2;
        let crc = crc32c::crc32c(&line);
        let why = match check.mismatch(seq, crc) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let checked = tokio::task::spawn_blocking(move || {
                    check.entries.may_read = true;
                    let why = check.mismatch(seq, crc);
                    check.entries.may_read = false;
                    (check, why)
                })
                .await;
                match checked {
                    Ok((back, why)) => {
                        check = back;
                        why
                    }
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            why => why,
        };
        self.check = Some(check);
        // A metadata file that cannot be read checks nothing: the line is read as it is.
        let why = why.ok().flatten().map(|why| (seq, why));
        (self, Ok(Some((line, why))))
    }
}

/// What a [`JournalStream`] checks its lines against.
struct StreamCheck {
    /// The seq of the file's first record.
    first_seq: u64,
    entries: EntryCursor,
}

impl StreamCheck {
    /// The metadata of the segment file at `path`, whose first record is `first_seq`: found
    /// beside it as a reader finds it. `None` when there is none, or it cannot be read (the
    /// stream then reads the file as the published API does).
    fn find(path: &Path, first_seq: u64) -> Option<StreamCheck> {
        let name = path.file_name()?.to_str()?;
        // A rotated segment `journal.jsonl.000003` belongs to the journal `journal.jsonl`.
        let base_name = match name.rsplit_once('.') {
            Some((stem, digits))
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                stem
            }
            _ => name,
        };
        let base = path.with_file_name(base_name);
        let next_first = segment::catalog(&base)
            .ok()?
            .iter()
            .find(|s| s.first_seq > first_seq)
            .map(|s| s.first_seq);
        let metas = meta::list(&base).ok()?;
        let mut entries =
            EntryCursor::open(meta::of_segment(&metas, first_seq, next_first)?).ok()??;
        entries.may_read = false;
        Some(StreamCheck { first_seq, entries })
    }

    /// `Some(why)` if record `seq`, whose line's CRC32C is `crc`, does not match its entry.
    /// `WouldBlock` when that needs a read the cursor may not make now (nothing consumed).
    fn mismatch(&mut self, seq: u64, crc: u32) -> std::io::Result<Option<String>> {
        if seq < self.entries.first_seq {
            return Ok(None);
        }
        match self.entries.entry_for(seq)? {
            Ok(Some(entry)) if crc != entry.record_crcs[(seq - entry.first_seq) as usize] => Ok(
                Some("fails its CRC32C: its bytes are not those written".into()),
            ),
            _ => Ok(None),
        }
    }
}

impl<T> std::fmt::Debug for JournalStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStream")
            .field("path", &self.cursor.as_ref().map(|c| &c.reader.path))
            .finish_non_exhaustive()
    }
}

struct LineReader {
    lines: BufReader<tokio::fs::File>,
    path: PathBuf,
    /// Line number of the last line read (the header is line 1).
    line: u64,
    /// File offset where the next line starts.
    pos: u64,
}

impl LineReader {
    /// The next complete line. At the end of what is written (the end of the file, or a NUL:
    /// zeros the writer wrote ahead of its records, see `Writer::preallocate`), the reader
    /// goes back to the start of the unfinished line, so that it never keeps bytes that
    /// are about to be overwritten, and a later call reads the line whole once it is.
    async fn next_line(mut self) -> (Self, std::io::Result<Option<Vec<u8>>>) {
        let mut buf = Vec::new();
        let mut reread = false;
        let result = loop {
            let chunk = match self.lines.fill_buf().await {
                Ok(chunk) => chunk,
                Err(e) => break Err(e),
            };
            match memchr::memchr2(b'\n', 0, chunk) {
                Some(i) if chunk[i] == b'\n' => {
                    buf.extend_from_slice(&chunk[..i]);
                    self.lines.consume(i + 1);
                    self.pos += buf.len() as u64 + 1;
                    self.line += 1;
                    break Ok(Some(std::mem::take(&mut buf)));
                }
                // A NUL: the end of what is written, if the bytes are fresh. Buffered ones
                // may be zeros the writer has overwritten since: read again from the line's
                // start, once.
                Some(_) if !reread => {
                    reread = true;
                    buf.clear();
                    if let Err(e) = self.lines.seek(std::io::SeekFrom::Start(self.pos)).await {
                        break Err(e);
                    }
                }
                Some(_) => break Ok(None),
                None if chunk.is_empty() => break Ok(None),
                None => {
                    let n = chunk.len();
                    buf.extend_from_slice(chunk);
                    self.lines.consume(n);
                }
            }
        };
        // Seeking also drops the buffer, and any zeros in it: the writer overwrites them.
        if matches!(result, Ok(None))
            && let Err(e) = self.lines.seek(std::io::SeekFrom::Start(self.pos)).await
        {
            return (self, Err(e));
        }
        (self, result)
    }
}

impl<T> JournalStream<T>
where
    T: for<'de> serde::Deserialize<'de>,
{
    pub(crate) async fn open(path: &Path) -> Result<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| MiniStoreError::io("opening", path, e))?;
        let mut lines = BufReader::with_capacity(READ_CHUNK, file);
        let mut head = Vec::new();
        (&mut lines)
            .take(4096)
            .read_until(b'\n', &mut head)
            .await
            .map_err(|e| MiniStoreError::io("reading", path, e))?;
        let header = segment::parse_header(path, &head)?;
        // Listing the directory and opening the metadata file: on the blocking pool.
        let check = match header.first_seq {
            Some(first_seq) => {
                let path = path.to_path_buf();
                blocking(move || Ok(StreamCheck::find(&path, first_seq))).await?
            }
            None => None,
        };
        Ok(JournalStream {
            cursor: Some(Cursor {
                reader: LineReader {
                    lines,
                    path: path.to_path_buf(),
                    line: 1,
                    pos: header.len,
                },
                check,
            }),
            pending: None,
            _record: PhantomData,
        })
    }

    /// Asynchronously yields the next record from the journal.
    ///
    /// Returns `None` when the file ends, `Some(Err(..))` on an I/O or deserialization
    /// error.
    pub async fn next(&mut self) -> Option<Result<T>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next_record(cx)).await
    }

    fn poll_next_record(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        if self.pending.is_none() {
            let Some(cursor) = self.cursor.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(Box::pin(cursor.next()));
        }
        let (cursor, result) =
            std::task::ready!(self.pending.as_mut().expect("set").as_mut().poll(cx));
        self.pending = None;
        let reader = &cursor.reader;
        let item = match result {
            Ok(None) => None,
            Ok(Some((line, Some((seq, reason))))) => Some(Err(MiniStoreError::Checksum {
                path: reader.path.clone(),
                seq,
                offset: reader.pos - line.len() as u64 - 1,
                reason,
            })),
            Ok(Some((line, None))) => {
                Some(
                    serde_json::from_slice(&line).map_err(|e| MiniStoreError::Corrupt {
                        path: reader.path.clone(),
                        line: reader.line,
                        reason: format!("record does not deserialize: {e}"),
                    }),
                )
            }
            Err(e) => Some(Err(MiniStoreError::io("reading", &reader.path, e))),
        };
        self.cursor = Some(cursor);
        Poll::Ready(item)
    }
}

impl<T> tokio_stream::Stream for JournalStream<T>
where
    T: for<'de> serde::Deserialize<'de>,
{
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_record(cx)
    }
}
