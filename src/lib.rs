//! A durable, append-only journal of JSON records.
//!
//! `ministore` is a write-ahead log engine: [`MiniStore::append`] writes a record as one
//! JSON line and fsyncs it before returning; [`MiniStore::replay`] reads every record back
//! in order. On top of the published crate's API (kept as documented) it adds sequence
//! numbers, batch appends with one fsync, readers from any position that see only durable
//! records, and crash repair.
//!
//! ```
//! use ministore::MiniStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! enum Counter { Set { value: u32 }, Inc { delta: u32 } }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("counter.log");
//!
//! let mut store = MiniStore::open(&path).await?;
//! store.append(&Counter::Set { value: 100 }).await?;
//! store.append(&Counter::Inc { delta: 25 }).await?;
//! assert_eq!(store.last_seq(), 2);
//!
//! let records: Vec<Counter> = MiniStore::replay(&path).await?;
//! assert_eq!(records, vec![Counter::Set { value: 100 }, Counter::Inc { delta: 25 }]);
//! # Ok(())
//! # }
//! ```
//!
//! # File format
//!
//! A journal at `dir/journal.jsonl` is the active file `journal.jsonl` and rotated
//! segments `journal.jsonl.000001`, `journal.jsonl.000002`, ... (higher is newer; any
//! number of digits is read, ordered numerically). Every file is text:
//!
//! ```text
//! // MINISTORE JOURNAL v0.1.4 first_seq=1
//! {"Set":{"value":100}}
//! {"Inc":{"delta":25}}
//! ```
//!
//! - Line 1, the header: the published crate's magic `// MINISTORE JOURNAL v0.1.4`, then
//!   `first_seq=N`, the sequence number of the file's first record. Readers accept any
//!   first line starting with `// MINISTORE JOURNAL v` and ignore `key=value` tokens they
//!   do not know, so this format and the published crate's read each other's files.
//! - Every following `\n`-terminated line is one record: compact JSON, never containing a
//!   raw newline. Record `k` of a file (from 0) has sequence number `first_seq + k`.
//! - A last line without `\n` is not a record: it is a write that never completed.
//! - A NUL byte (never part of JSON text) ends what is written. By default nothing is
//!   written past the last record, so every file is plain JSON lines at every instant,
//!   even right after a crash. With
//!   [`MiniStoreOptions::preallocate(true)`](MiniStoreOptions::preallocate()), while a
//!   journal is open its active file ends in zeros after its last record: space the writer
//!   extends the file with ahead of time (256 KiB at a time, never past
//!   `max_bytes_per_segment`) so that appends overwrite allocated space in place and their
//!   `fdatasync` has no file size to commit. Readers stop at the first NUL; a clean close
//!   cuts the zeros, so a journal at rest (and every rotated segment) ends at its last
//!   record, as the published crate writes it. After a crash the zeros stay until the next
//!   open cuts them.
//!
//! Sequence numbers start at 1, are contiguous, and never change: rotation and retention
//! move and delete whole files, and each file carries its own `first_seq`. (A journal
//! written by the published crate, which has no `first_seq`, is numbered by counting from
//! its oldest file; `open` then records the numbers in its headers.)
//!
//! Beside the journal live `journal.jsonl.lock` (held by the one open writer) and, after a
//! repair that cut more than a partial line, `journal.jsonl.broken-<offset>` with the bytes
//! that were cut.
//!
//! **Metadata files.** Each segment written by this version has a binary metadata file,
//! `journal.jsonl.from-<first_seq>.meta`, named by the first seq it covers and never
//! renamed: one entry per append request (an `append`, an `append_batch`, one [`Append`]
//! of [`MiniStore::append_requests`]) holding its seqs and byte range (the batch
//! boundary), its idempotency key, its commit time, a CRC32C of each record and a CRC of
//! the entry. Nothing of it is inside the JSON lines, so the segments stay readable by
//! `jq`, `tail -f` and the published crate. Segments without one (the published crate's,
//! earlier versions', or records written before this version first opened the journal)
//! are read as before. Layout and reasons: `docs/metadata-design.md`.
//!
//! **Segment indexes.** A rotated segment larger than 64 KiB gets a sparse index beside it,
//! `journal.jsonl.000003.idx`, written by the writer when it seals the segment: where one
//! record starts in every 64 KiB of the file, so that a reader starting at any sequence
//! number seeks there and reads less than 64 KiB, instead of counting every line before
//! it. It is derived data and never trusted: the layout (little-endian) is the magic
//! `MSIDX001`, then `first_seq`, header length, segment length and entry count as u64,
//! then the entries as (seq, byte offset of its line) u64 pairs, then the FNV-1a 64
//! checksum of all bytes before it. An index that is missing, torn, for another file
//! (first seq, header or length differ), or whose entry does not follow a line break is
//! ignored, and the segment is read from its start. Segments of the published crate and
//! of older versions have none and are read that way. The writer keeps the active
//! segment's index in memory, for readers in its process: they find it through the
//! [`ActiveIndex`] handle they are given with the durable position ([`DurableWatch`]).
//!
//! # Durability contract
//!
//! **What `Ok` means.** When `append`, `append_batch` or `append_json` returns `Ok`, the
//! records are written and `fdatasync`ed: they survive the process being killed and the
//! machine losing power (on storage that honours flushes). Their sequence numbers are
//! final.
//!
//! **The order of operations**, each step documented where it happens in `store.rs`:
//! 0. create: each missing directory of the journal's path is created and fsynced in its
//!    parent, top down, before the journal's first file is created (and fsynced in it), so
//!    a power loss cannot take a new journal's directory with its acknowledged records.
//! 1. append: with preallocation, when the records would go past the end of the active
//!    file, first extend it with written zeros (if that fails, e.g. on a full disk, cut them off again and append
//!    as if there were none); `pwrite` the records at the end of the durable data and
//!    their metadata entries at the end of the metadata file's, then `fdatasync` both at
//!    the same time (the segment's covers the zeros too); only when both succeed are the
//!    records counted, their keys remembered, the records shown to readers and
//!    acknowledged. After a failed write or fsync both files are cut back to their
//!    durable lengths (with the zeros) and that is fsynced (see below).
//! 2. rotation (after an append reaches `max_bytes_per_segment`): cut any zeros after the
//!    last record and fsync; rename the active file to
//!    the next segment number, fsync the directory; write the sealed segment's index
//!    (through a temporary name, not fsynced: it is checked on use); create the new
//!    segment's metadata file (header written to a temporary name, fsynced, renamed into
//!    place, directory fsynced: no one sees it other than whole); create the new active
//!    file with its header, fsync it and the directory; delete segments beyond
//!    `max_segments` (each its index, the segment, then its metadata file), fsync the directory.
//!    So a reader that finds a segment always finds its whole metadata beside it.
//! 3. open: take the lock; finish an interrupted rotation (no active file, or one with a
//!    torn header, or, beside rotated segments, one whose header a power loss left as
//!    zeros: it is created from the end of the newest segment); cut an incomplete
//!    tail from the active file (logging file, offset and length; more than a partial line
//!    is first saved as `.broken-<offset>`; zeros alone are logged as information), fsync;
//!    keep the longest prefix of metadata entries whose records are all present and match
//!    their CRC32C, and cut both files after it (so a batch is kept whole or not at all);
//!    rebuild the idempotency keys from the retained metadata files; only then accept
//!    appends. Indexes and metadata files whose segment is gone are deleted, and so are
//!    metadata files a crash left half-created (`.meta.tmp`).
//! 4. close (dropping the store): cut the zeros after the last record and fsync, best
//!    effort (a writer poisoned by a failure leaves the file to the next open).
//! 5. warm close and reopen ([`MiniStore::blocking_close_warm`], [`WarmJournal`]): the
//!    close of step 4, but what the writer knows (lengths, seqs, segments, keys) is kept in
//!    memory, with how the active segment, its metadata file and their directory looked
//!    (`fstat`). The reopen takes the lock again, and if those files are the same (device,
//!    inode, length, change time) and no segment or metadata file came or went, it goes on
//!    from the kept state without reading them; if anything differs (another process
//!    appended, rotated, cut or removed something meanwhile) it is the full open of step 3.
//!
//! **What a crash can leave, and what open makes of it.** A crash of an open journal
//! leaves zeros after its last record; open cuts them. A crash during an append can
//! leave any part of the unacknowledged request, in either file: open keeps it only if
//! its entry and all its records are whole and verify, so a batch is all or none, and a
//! key is never kept without its records or the reverse. (A journal whose active segment
//! has no metadata file, as the published crate leaves it, keeps the complete lines and
//! cuts an incomplete one, as before.) A damaged entry or record followed by an entry of
//! a later commit was acknowledged: that is damage, refused with
//! [`MiniStoreError::BadMeta`], never cut. As appends
//! overwrite zeros in place, the pages of one append reach the disk in any order: a power
//! loss can also leave a page of it still zeros and a later one written, so the first NUL
//! byte ends the records, and everything from the line holding it on is cut (and kept as
//! `.broken-<offset>` if it holds a line break, as for any tail). A crash during
//! rotation leaves the journal in one of the states listed at each step of `rotate`, all
//! of which open repairs. Nothing acknowledged is ever cut: an acknowledged record was
//! fsynced before anything after it was written, so it holds no NUL and precedes the
//! first one; only bytes after the last complete, valid line go, and invalid lines are
//! only cut at the end of the active file or after a NUL byte. Damage anywhere else (an
//! invalid line followed by valid ones, a foreign header) is refused with an error and
//! the file is not modified.
//!
//! **Errors.** An `Err` from an append means the records are not acknowledged: after a
//! crash they may or may not be there. A failed `fsync` is never trusted or retried into
//! success: the kernel may have dropped the dirty pages and marked them clean, so a later
//! fsync would report success over lost data (PostgreSQL's "fsyncgate"). The writer knows
//! the length the last successful fsync covered; after a failed write or fsync it cuts the
//! active file back to it and fsyncs that, before anything reads or appends, and then goes
//! on (the next append is written where the failed one was). If even that cut fails, it
//! writes nothing until a later append manages it; it never reopens over the bytes, which
//! a scan could take for records. Every file operation of the writer can be made to fail
//! in tests ([`io`]).
//!
//! **Readers** made by [`MiniStore::reader`] (in the writer's process) never return a
//! record that is not yet durable: they read only up to the length of the active segment
//! that the last fsync covered. [`MiniStore::replay`], [`MiniStore::stream`] and
//! [`MiniStore::read_from`] read files as they are on disk, skipping an incomplete last line
//! and stopping at the first NUL byte of an active file (the zeros ahead of the records);
//! they never keep those zeros, so they read the records written over them afterwards.
//!
//! **Checking files offline.** [`verify`] reads a journal's files without opening it (no
//! lock, no repair, no write) and reports each problem with its file, seq and byte offset,
//! telling damage apart from what a crash leaves and `open` repairs; the `ministore verify`
//! command prints its report.
//!
//! **Retries.** An [`Append`] with an idempotency key is committed with its key in the same
//! entry; a retry of it (after a lost reply, a crash, a reopen, rotations) is answered with
//! the original seqs and written nowhere, for as long as its records are retained and it
//! is among the newest [`MiniStoreOptions::max_keys`] keys (and, for journals sharing a
//! [`KeyMemory`], within it or among the newest [`KEYS_EACH_JOURNAL_KEEPS`]).
//!
//! **Checksums.** Each record's CRC32C is kept in its metadata entry and checked by
//! `open` (the active segment) and by every [`JournalReader`] ([`MiniStore::replay`],
//! [`MiniStore::read_from`], [`MiniStore::reader`]): a record whose bytes are not those
//! written is [`MiniStoreError::Checksum`], naming file, seq and byte offset, and the
//! files are left as they are. Such readers also return only whole requests: a line whose
//! entry, or a request's last line, is not written yet is not read. [`Record`] carries
//! the commit time. The one-file line stream [`MiniStore::stream`] (the published API)
//! checks each line that has a whole entry against its CRC32C (an error item, and the
//! stream goes on), and reads the others as they are, as the published crate does.
//!
//! **Writers without metadata.** Lines appended by a writer that keeps no metadata (the
//! published crate) are read unverified in a sealed segment; in the active segment,
//! after its last entry, `open` cannot tell them from an interrupted commit and moves
//! them aside as `.broken-<offset>` (logged). Do not append to a journal with another
//! writer while this version uses it.
//!
//! **Not guaranteed**: `ministore verify` does not check the CRCs yet; protection against
//! another program writing to the files.

#![warn(missing_docs)]

mod append;
mod blocking;
mod durable;
mod error;
mod index;
pub mod io;
mod json;
mod keys;
mod meta;
mod options;
mod read;
mod recovery;
mod segment;
mod store;
mod stream;
mod summary;
mod syncer;
pub mod verify;
mod warm;
mod writer;

pub use append::{Append, Appended};
pub use durable::{Durable, DurableWatch};
pub use error::{MiniStoreError, Result};
pub use index::ActiveIndex;
pub use json::JsonLine;
pub use keys::{KEY_BYTES, KEYS_EACH_JOURNAL_KEEPS, KeyMemory};
pub use meta::MAX_KEY_BYTES;
pub use options::{
    DEFAULT_MAX_BYTES_PER_SEGMENT, DEFAULT_MAX_KEYS, DEFAULT_MAX_SEGMENTS, MiniStoreOptions,
};
pub use read::{JournalReader, Record};
pub use store::MiniStore;
pub use stream::JournalStream;
pub use summary::{JournalSummary, disk_bytes, summary};
pub use warm::{Reopened, WarmJournal};

/// The gRPC wire types and stubs generated from `proto/ministore/v1/journal.proto`
/// (feature `grpc`), shared by ministore-server and ministore-client.
#[cfg(feature = "grpc")]
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("ministore.v1");

    /// The encoded file descriptor set of the proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("ministore_descriptor");

    /// The journal a request means when it leaves `journal` empty (see the proto).
    pub const DEFAULT_JOURNAL: &str = "default";

    /// The trailer of an OUT_OF_RANGE status for records deleted by retention: the oldest
    /// retained seq, where the reader can resume.
    pub const FIRST_SEQ_TRAILER: &str = "ministore-first-seq";

    /// The trailer of an ABORTED status for an append whose `expected_last_seq` did not
    /// hold: the journal's last seq when the append's turn came.
    pub const LAST_SEQ_TRAILER: &str = "ministore-last-seq";

    /// HTTP/2 flow-control window of each call, that ministore-server and ministore-client
    /// both offer: bytes the other side may send that have not been read yet (requests
    /// for the server, replies for the client).
    ///
    /// Small against [`CONNECTION_WINDOW`] because of how h2 guards against floods of tiny
    /// frames: a DATA frame of `n < 256` bytes waiting unread costs `256 - n` of a budget
    /// of half the connection window, and when the budget runs out the whole connection is
    /// closed (GOAWAY ENHANCE_YOUR_CALM), every call on it with it. gRPC peers send each
    /// small message in a frame of its own (grpcio's producers; the server's replies to a
    /// follower as single records arrive), and a reader that has stopped (the server's
    /// read-ahead bound of an AppendStream, a slow follower) leaves a whole call window of
    /// them waiting. With hyper's defaults (1 MiB for both on a server) a producer some
    /// 2,500 small records ahead lost its connection; with these, one call window of even
    /// the smallest requests (11 bytes each) costs under 6 MiB of the 8 MiB budget, and of
    /// 60-byte records ten calls fit. Bulk data is not slowed on loopback or a LAN; across
    /// a 50 ms link one call moves about 5 MB/s.
    pub const STREAM_WINDOW: u32 = 256 * 1024;

    /// HTTP/2 flow-control window of a connection, across its calls: what one connection's
    /// unread messages may hold in memory (with h2's per-frame overhead, at most half as
    /// much again). See [`STREAM_WINDOW`].
    pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

    /// The canonical name of a gRPC status code, as the gRPC docs and the README's error
    /// table write it (metrics labels and the CLI's messages use it).
    ///
    /// ```
    /// assert_eq!(ministore::proto::code_name(tonic::Code::DataLoss), "DATA_LOSS");
    /// ```
    pub fn code_name(code: tonic::Code) -> &'static str {
        use tonic::Code;
        match code {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}
