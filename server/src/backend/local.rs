//! The embedded store as a [`Backend`]: a thin layer over [`Journals`], which keeps one
//! group-committing writer per journal under the data directory.

use std::sync::Arc;

use ministore::proto::{InfoResponse, JournalSummary};
use ministore::{Append, Appended, JournalReader, Record};
use tokio::sync::watch;

use super::{Backend, PendingCommit, RecordReader};
use crate::error::ServerError;
use crate::journals::{Journal, Journals};

/// Journals on this machine's disk, fsynced before each acknowledgement.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    journals: Arc<Journals>,
}

impl LocalBackend {
    /// The backend over `journals`.
    pub fn new(journals: Arc<Journals>) -> Self {
        LocalBackend { journals }
    }

    /// The journals it serves (for metrics and the data-directory watchdog).
    pub fn journals(&self) -> &Arc<Journals> {
        &self.journals
    }
}

/// A reader of one local journal's durable records.
struct LocalReader {
    journal: Arc<Journal>,
    reader: JournalReader,
}

#[tonic::async_trait]
impl RecordReader for LocalReader {
    fn next_seq(&self) -> u64 {
        self.reader.next_seq()
    }

    fn last_seq(&self) -> u64 {
        self.journal.durable().last_seq
    }

    async fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, ServerError> {
        self.reader
            .next_batch_within(max, max_bytes)
            .await
            .map_err(|e| ServerError::store(self.journal.name(), e))
    }

    async fn wait(&mut self, park_after: std::time::Duration) -> bool {
        self.reader.wait_parking(park_after).await
    }
}

impl LocalBackend {
    fn open_reader(&self, journal: &Arc<Journal>, from_seq: u64, max: usize) -> LocalReader {
        LocalReader {
            journal: journal.clone(),
            reader: JournalReader::with_durable(journal.path(), from_seq, journal.watch_durable())
                .max_record_bytes(max)
                .with_faults(self.journals.faults()),
        }
    }

    /// The commit time of record `seq` (`None` for a record written without metadata, or
    /// one retention deleted meanwhile): one record read, through the usual reader.
    async fn commit_time(
        &self,
        journal: &Arc<Journal>,
        seq: u64,
    ) -> Result<Option<prost_types::Timestamp>, ServerError> {
        let mut reader = self.open_reader(journal, seq, usize::MAX).reader;
        let record = match reader.next_batch(1).await {
            Ok(mut records) => records.pop(),
            Err(ministore::MiniStoreError::Truncated { .. }) => None,
            Err(e) => return Err(ServerError::store(journal.name(), e)),
        };
        Ok(record
            .filter(|r| r.seq == seq)
            .and_then(|r| r.commit_unix_ns)
            .map(super::timestamp))
    }
}

#[tonic::async_trait]
impl Backend for LocalBackend {
    async fn append(&self, journal: &str, request: Append) -> Result<Appended, ServerError> {
        self.journals
            .get(journal, true)
            .await?
            .append(request)
            .await
    }

    async fn submit(&self, journal: &str, request: Append) -> Result<PendingCommit, ServerError> {
        let pending = self
            .journals
            .get(journal, true)
            .await?
            .submit(request)
            .await?;
        Ok(Box::pin(pending))
    }

    async fn reader(
        &self,
        journal: &str,
        from_seq: u64,
        max_record_bytes: usize,
    ) -> Result<Box<dyn RecordReader>, ServerError> {
        let journal = self.journals.get(journal, false).await?;
        Ok(Box::new(self.open_reader(
            &journal,
            from_seq,
            max_record_bytes,
        )))
    }

    async fn info(&self, name: &str) -> Result<InfoResponse, ServerError> {
        let journal = self.journals.get(name, false).await?;
        let durable = journal.durable();
        let (first_commit_time, last_commit_time) = match durable.last_seq {
            0 => (None, None),
            last => (
                self.commit_time(&journal, durable.first_seq).await?,
                self.commit_time(&journal, last).await?,
            ),
        };
        Ok(InfoResponse {
            first_seq: durable.first_seq,
            last_seq: durable.last_seq,
            segments: durable.segments as u32,
            damage: journal.damage().unwrap_or_default().to_owned(),
            first_commit_time,
            last_commit_time,
            checksums_from_seq: durable.checksums_from,
        })
    }

    async fn list_names(&self) -> Result<Vec<String>, ServerError> {
        let journals = self.journals.clone();
        blocking(move || journals.list_names()).await
    }

    async fn summary(&self, name: &str) -> JournalSummary {
        let journals = self.journals.clone();
        let name = name.to_owned();
        // Reads the files of a journal that is not open: off the async runtime.
        blocking(move || Ok(summarize(&journals, name)))
            .await
            .unwrap_or_else(|e| JournalSummary {
                error: tonic::Status::from(e).message().to_owned(),
                ..JournalSummary::default()
            })
    }

    fn watch_created(&self) -> watch::Receiver<u64> {
        self.journals.watch_opened()
    }

    async fn shut_down(&self) {
        self.journals.shut_down().await;
    }
}

fn summarize(journals: &Journals, name: String) -> JournalSummary {
    match journals.summary(&name) {
        Ok(summary) => JournalSummary {
            name,
            first_seq: summary.first_seq,
            last_seq: summary.last_seq,
            size_bytes: summary.size_bytes,
            segments: summary.segments as u32,
            error: String::new(),
        },
        // One journal that cannot be read does not hide the others.
        Err(e) => JournalSummary {
            size_bytes: ministore::disk_bytes(
                journals
                    .data_dir()
                    .join(&name)
                    .join(ministore::verify::JOURNAL_FILE),
            )
            .unwrap_or(0),
            name,
            error: tonic::Status::from(e).message().to_owned(),
            ..JournalSummary::default()
        },
    }
}

/// Runs `work` (which reads files) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime that is shutting down cancels a blocking task.
            Err(_) => ServerError::ShuttingDown,
        })?
}
