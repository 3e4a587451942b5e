//! The `ministore.v1.Journal` service: request -> journal -> response. Each method checks
//! its input, then delegates to [`Journals`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ministore::proto::journal_server::Journal as JournalRpc;
use ministore::proto::{
    AppendBatchRequest, AppendBatchResponse, AppendRequest, AppendResponse, InfoRequest,
    InfoResponse, Record, RecordFormat, ReplayRequest, ReplayResponse, StreamRequest,
    append_request, record,
};
use ministore::{JournalReader, JsonLine};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{Grant, Right, grant_of};
use crate::error::ServerError;
use crate::journals::{Journal, Journals, validate_name};
use crate::limits::{StreamLimits, StreamPermit};
use crate::value;

/// Records per Replay page when the request says 0.
pub const DEFAULT_PAGE: u32 = 1000;
/// Most records per Replay page.
pub const MAX_PAGE: u32 = 10_000;
/// Most JSON bytes per Replay page, under gRPC's common 4 MiB message limit. A page always
/// holds at least one record.
const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Records read from disk at a time by a stream.
const STREAM_BATCH: usize = 256;
/// Records buffered per stream: a slow reader holds at most this many (plus one batch),
/// never the journal.
const STREAM_BUFFER: usize = 64;

/// The gRPC service over a set of journals.
#[derive(Debug, Clone)]
pub struct JournalService {
    journals: Arc<Journals>,
    max_payload_bytes: usize,
    streams: Arc<StreamLimits>,
    shutdown: watch::Receiver<bool>,
}

impl JournalService {
    /// A service over `journals` that refuses records larger than `max_payload_bytes`,
    /// keeps open streams within `streams`, and ends them when `shutdown` turns true.
    pub fn new(
        journals: Arc<Journals>,
        max_payload_bytes: usize,
        streams: Arc<StreamLimits>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        JournalService {
            journals,
            max_payload_bytes,
            streams,
            shutdown,
        }
    }

    fn check_size(&self, size: usize) -> Result<(), ServerError> {
        if size > self.max_payload_bytes {
            return Err(ServerError::PayloadTooLarge {
                size,
                max: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// A record given as JSON bytes: size-checked before it is parsed.
    fn line_from_payload(&self, journal: &str, payload: &[u8]) -> Result<JsonLine, ServerError> {
        self.check_size(payload.len())?;
        let line = JsonLine::from_slice(payload).map_err(|e| ServerError::store(journal, e))?;
        value::check_depth(&line)?;
        Ok(line)
    }

    /// A record given as a structured value.
    fn line_from_value(
        &self,
        journal: &str,
        value: &prost_types::Value,
    ) -> Result<JsonLine, ServerError> {
        let line = JsonLine::from_value(&value::to_json(value)?)
            .map_err(|e| ServerError::store(journal, e))?;
        self.check_size(line.as_bytes().len())?;
        Ok(line)
    }

    /// The journal to read, and where to start: `from_seq` may be at most one past the end.
    async fn open_for_read(&self, name: &str, from_seq: u64) -> Result<Arc<Journal>, ServerError> {
        let journal = self.journals.get(name, false).await?;
        let last_seq = journal.durable().last_seq;
        if from_seq > last_seq + 1 {
            return Err(ServerError::PastEnd {
                journal: name.to_owned(),
                from_seq,
                last_seq,
            });
        }
        Ok(journal)
    }
}

/// Runs one RPC inside a span named after it, logging its outcome and duration.
async fn traced<T>(
    method: &'static str,
    journal: &str,
    rpc: impl Future<Output = Result<T, ServerError>>,
) -> Result<T, Status> {
    let span = tracing::debug_span!("rpc", method, journal, seq = tracing::field::Empty);
    let started = Instant::now();
    let result = rpc.instrument(span.clone()).await;
    let _entered = span.enter();
    let micros = started.elapsed().as_micros() as u64;
    match &result {
        Ok(_) => tracing::debug!(micros, "ok"),
        Err(e) => tracing::debug!(micros, error = %e, "failed"),
    }
    result.map_err(Status::from)
}

/// Converts a stored record to its wire form.
fn to_wire(record: ministore::Record, format: RecordFormat) -> Result<Record, ServerError> {
    let body = match format {
        RecordFormat::Value => {
            record::Body::Value(value::from_json_text(&record.json).map_err(|e| {
                ServerError::InvalidArgument(format!(
                    "record {} cannot be shown as a value ({e}); read it with RECORD_FORMAT_PAYLOAD",
                    record.seq
                ))
            })?)
        }
        RecordFormat::Unspecified | RecordFormat::Payload => {
            record::Body::Payload(record.json.into_bytes())
        }
    };
    Ok(Record {
        seq: record.seq,
        body: Some(body),
    })
}

fn format_of(raw: i32) -> Result<RecordFormat, ServerError> {
    RecordFormat::try_from(raw)
        .map_err(|_| ServerError::InvalidArgument(format!("unknown record format {raw}")))
}

/// The stream of a Stream RPC: records as they are read, then the end or an error status.
pub type RecordStream = Pin<Box<dyn Stream<Item = Result<Record, Status>> + Send>>;

#[tonic::async_trait]
impl JournalRpc for JournalService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("Append", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Append)?;
            let line = match &req.record {
                Some(append_request::Record::Payload(bytes)) => self.line_from_payload(name, bytes)?,
                Some(append_request::Record::Value(value)) => self.line_from_value(name, value)?,
                None => {
                    return Err(ServerError::InvalidArgument(
                        "AppendRequest has no record: set `payload` (JSON text as bytes) or `value` (a JSON value)".into(),
                    ));
                }
            };
            let journal = self.journals.get(name, true).await?;
            let seq = journal.append(vec![line]).await?.start;
            tracing::Span::current().record("seq", seq);
            Ok(Response::new(AppendResponse { seq }))
        })
        .await
    }

    async fn append_batch(
        &self,
        request: Request<AppendBatchRequest>,
    ) -> Result<Response<AppendBatchResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("AppendBatch", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Append)?;
            let lines = match (req.payloads.is_empty(), req.values.is_empty()) {
                (false, false) => {
                    return Err(ServerError::InvalidArgument(
                        "AppendBatchRequest sets both `payloads` and `values`; use one".into(),
                    ));
                }
                (true, true) => {
                    return Err(ServerError::InvalidArgument(
                        "AppendBatchRequest has no records: set `payloads` or `values`".into(),
                    ));
                }
                (false, true) => req
                    .payloads
                    .iter()
                    .enumerate()
                    .map(|(i, p)| self.line_from_payload(name, p).map_err(|e| at_index(i, e)))
                    .collect::<Result<Vec<_>, _>>()?,
                (true, false) => req
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.line_from_value(name, v).map_err(|e| at_index(i, e)))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let journal = self.journals.get(name, true).await?;
            let range = journal.append(lines).await?;
            tracing::Span::current().record("seq", range.end - 1);
            Ok(Response::new(AppendBatchResponse {
                first_seq: range.start,
                last_seq: range.end - 1,
            }))
        })
        .await
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("Replay", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Read)?;
            let format = format_of(req.format)?;
            let limit = match req.limit {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => {
                    return Err(ServerError::InvalidArgument(format!(
                        "limit {n} is more than the maximum page of {MAX_PAGE} records; page with next_seq"
                    )));
                }
                n => n,
            } as usize;
            let journal = self.open_for_read(name, req.from_seq).await?;
            let mut reader = JournalReader::with_durable(journal.path(), req.from_seq, journal.watch_durable());
            let last_seq = journal.durable().last_seq;
            let mut records = Vec::new();
            let mut bytes = 0;
            'pages: while records.len() < limit {
                let batch = reader
                    .next_batch((limit - records.len()).min(STREAM_BATCH))
                    .await
                    .map_err(|e| ServerError::store(name, e))?;
                if batch.is_empty() {
                    break;
                }
                for record in batch {
                    bytes += record.json.len();
                    if bytes > MAX_PAGE_BYTES && !records.is_empty() {
                        break 'pages;
                    }
                    records.push(to_wire(record, format)?);
                }
            }
            let next_seq = records.last().map_or(reader.next_seq(), |r| r.seq + 1);
            Ok(Response::new(ReplayResponse {
                records,
                next_seq,
                last_seq,
            }))
        })
        .await
    }

    type StreamStream = RecordStream;

    async fn stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let grant = grant_of(&request);
        let peer = request.remote_addr();
        let req = request.into_inner();
        let (journal, format, permit) = traced("Stream", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Read)?;
            let format = format_of(req.format)?;
            let permit = self.streams.acquire(peer)?;
            Ok((
                self.open_for_read(name, req.from_seq).await?,
                format,
                permit,
            ))
        })
        .await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let reader =
            JournalReader::with_durable(journal.path(), req.from_seq, journal.watch_durable());
        let task = feed_stream(
            permit,
            journal,
            reader,
            format,
            req.follow,
            self.shutdown.clone(),
            tx,
        );
        tokio::spawn(task.instrument(tracing::debug_span!("stream", journal = %req.journal)));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("Info", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Read)?;
            let durable = self.journals.get(name, false).await?.durable();
            Ok(Response::new(InfoResponse {
                first_seq: durable.first_seq,
                last_seq: durable.last_seq,
                segments: durable.segments as u32,
            }))
        })
        .await
    }
}

/// The validated journal name, if `grant` allows `right` on it.
fn authorize<'a>(grant: &Grant, journal: &'a str, right: Right) -> Result<&'a str, ServerError> {
    let name = validate_name(journal)?;
    grant.check(right, name)?;
    Ok(name)
}

fn at_index(i: usize, err: ServerError) -> ServerError {
    ServerError::InvalidArgument(format!(
        "record {i} of the batch: {}",
        Status::from(err).message()
    ))
}

/// Feeds one Stream RPC: reads batches of durable records and sends them, waiting for new
/// ones when following. Stops when the client goes away (`send` fails), at shutdown (with
/// UNAVAILABLE), or on an error (sent as the final status).
async fn feed_stream(
    // Held for the stream's lifetime: its place in the stream limits.
    _permit: StreamPermit,
    journal: Arc<Journal>,
    mut reader: JournalReader,
    format: RecordFormat,
    follow: bool,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<Record, Status>>,
) {
    let name = journal.name().to_owned();
    let end = loop {
        let batch = match reader.next_batch(STREAM_BATCH).await {
            Ok(batch) => batch,
            Err(e) => break Some(ServerError::store(&name, e)),
        };
        if batch.is_empty() {
            if !follow {
                break None;
            }
            tokio::select! {
                more = reader.wait() => if !more { break Some(ServerError::ShuttingDown) },
                _ = shutdown.wait_for(|stop| *stop) => break Some(ServerError::ShuttingDown),
                _ = tx.closed() => return,
            }
            continue;
        }
        for record in batch {
            let item = to_wire(record, format).map_err(Status::from);
            if tx.send(item).await.is_err() {
                return; // the client went away
            }
        }
        if *shutdown.borrow() {
            break Some(ServerError::ShuttingDown);
        }
    };
    if let Some(err) = end {
        let _ = tx.send(Err(err.into())).await;
    }
}
