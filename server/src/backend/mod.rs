//! The storage seam: the gRPC service ([`crate::service`]) talks to a [`Backend`], and
//! everything the service owns (validation, statuses, limits, auth, metrics, paging,
//! read budgets) is the same whichever backend holds the records.
//!
//! Two backends exist: [`local::LocalBackend`], the embedded store on this machine's disk
//! (the default), and [`jetstream::JetStreamBackend`], journals kept as replicated NATS
//! JetStream streams (`--backend nats://...`), so that several stateless ministore-servers
//! can serve the same journals.

pub mod jetstream;
pub mod local;

use std::future::Future;
use std::pin::Pin;

use ministore::proto::{InfoResponse, JournalSummary};
use ministore::{Append, Appended, Record};
use tokio::sync::watch;

use crate::error::ServerError;

/// An append handed to its backend, resolving once it is committed (or failed). Dropping
/// it does not withdraw the request.
pub type PendingCommit = Pin<Box<dyn Future<Output = Result<Appended, ServerError>> + Send>>;

/// Where journals live. Each method takes a journal name already validated by the service
/// (see [`crate::journals::validate_name`]) and already authorized.
#[tonic::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Appends `request`'s records (one for Append, several for AppendBatch: all or none),
    /// creating the journal on its first append. Returns once the records are durable as
    /// the backend promises (fsync here, or a majority of replicas), with their seqs; a
    /// request whose key was already committed is answered with the original seqs and
    /// `duplicate = true`, before `expected_last_seq` is checked.
    async fn append(&self, journal: &str, request: Append) -> Result<Appended, ServerError>;

    /// Hands `request` to `journal` (creating it on its first append) and returns its
    /// commit to come, as [`Backend::append`] would answer it: what AppendStream pipelines.
    /// Requests one caller submits one after another are sent in that order, so their seqs
    /// follow it (on JetStream, unless a leader change fails one and not the next).
    async fn submit(&self, journal: &str, request: Append) -> Result<PendingCommit, ServerError>;

    /// A reader of `journal`'s acknowledged records from `from_seq` (a seq before the
    /// oldest retained starts at the oldest). [`ServerError::JournalNotFound`] if the
    /// journal was never written. Every record acknowledged before this call is delivered
    /// by the reader: never a gap, never a duplicate.
    async fn reader(
        &self,
        journal: &str,
        from_seq: u64,
        max_record_bytes: usize,
    ) -> Result<Box<dyn RecordReader>, ServerError>;

    /// What the Info RPC reports about `journal`.
    async fn info(&self, journal: &str) -> Result<InfoResponse, ServerError>;

    /// Every journal's name, sorted.
    async fn list_names(&self) -> Result<Vec<String>, ServerError>;

    /// One ListJournals entry for `journal`; a journal that cannot be read is reported in
    /// the entry's `error`, so it does not hide the others.
    async fn summary(&self, journal: &str) -> JournalSummary;

    /// Changes when a journal may have been created: what a follower of a journal that does
    /// not exist yet waits on before looking again.
    fn watch_created(&self) -> watch::Receiver<u64>;

    /// Whether the backend can serve now: what the server's health reports (a load
    /// balancer sends no clients to a server cut off from its cluster). The local store is
    /// always reachable.
    fn watch_reachable(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    /// Commits what is queued and releases the backend's resources, at shutdown.
    async fn shut_down(&self);
}

/// A cursor over one journal's acknowledged records, as the Replay and Stream RPCs use it.
#[tonic::async_trait]
pub trait RecordReader: Send {
    /// The seq of the next record this reader returns.
    fn next_seq(&self) -> u64;

    /// The journal's last acknowledged seq as this reader last learned it (0: none).
    fn last_seq(&self) -> u64;

    /// Up to `max` records from [`RecordReader::next_seq`], stopping after the record that
    /// reaches `max_bytes` of JSON (at least one record if any is there). Empty when the
    /// reader has returned every record acknowledged so far.
    async fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, ServerError>;

    /// Waits until more records may be there. `false` when none ever will through this
    /// reader (the backend is shutting down). A reader still waiting after `park_after`
    /// may let go of what it holds per reader (the local store's open files and buffer),
    /// so that many idle followers cost little.
    async fn wait(&mut self, park_after: std::time::Duration) -> bool;
}

/// A time in nanoseconds since the Unix epoch as a protobuf Timestamp.
pub(crate) fn timestamp(unix_ns: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (unix_ns / 1_000_000_000) as i64,
        nanos: (unix_ns % 1_000_000_000) as i32,
    }
}
