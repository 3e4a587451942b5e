//! The `ministore.v1.Journal` service: request -> backend -> response. Each method checks
//! its input, then delegates to a [`Backend`]: the local store or a JetStream cluster, with
//! the same validation, statuses, limits, auth and metrics in front of both.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use ministore::proto::journal_server::Journal as JournalRpc;
use ministore::proto::{
    AppendBatchRequest, AppendBatchResponse, AppendRequest, AppendResponse, CaughtUp, Heartbeat,
    InfoRequest, InfoResponse, ListJournalsRequest, ListJournalsResponse, Record, RecordFormat,
    ReplayRequest, ReplayResponse, StreamEvent, StreamRequest, append_request, record,
    stream_event,
};
use ministore::{Append, JsonLine};
use prost::Message;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::append_stream::{self, AckStream};
use crate::auth::{Grant, Right, grant_of};
use crate::backend::local::LocalBackend;
use crate::backend::{Backend, RecordReader};
use crate::error::ServerError;
use crate::journals::{Journals, validate_name};
use crate::limits::{Held, HeldForReply, ReadBudget, StreamLimits, StreamPermit};
use crate::metrics::{Metrics, OpenStream};
use crate::value;

/// Records per Replay page when the request says 0.
pub const DEFAULT_PAGE: u32 = 1000;
/// Most records per Replay page.
pub const MAX_PAGE: u32 = 10_000;
/// Most bytes of records per Replay page in the form sent (encoded, in the requested
/// format), under gRPC's common 4 MiB message limit. A page always holds at least one record.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Bytes of JSON a Replay reads from disk at a time.
pub const READ_STEP: usize = 256 * 1024;
/// Bytes of JSON a Stream reads ahead of its client at most (or one record, if larger).
/// Small enough that `--max-streams` unread streams of small records (1024 x 2 x 64 KiB =
/// 128 MiB, record and encoded copy) cannot hold the default read budget between them.
pub const STREAM_STEP: usize = 64 * 1024;
/// Journals per ListJournals page when the request says 0.
pub const DEFAULT_LIST_PAGE: u32 = 100;
/// Most journals per ListJournals page: a page summarizes each of its journals not yet
/// open from its files, so this bounds the reads one request makes.
pub const MAX_LIST_PAGE: u32 = 1000;
/// Bytes of JSON above which a request's records are checked, or a page's records
/// converted to values, on the blocking pool instead of the async runtime: parsing runs at
/// a few hundred MB/s, so this keeps each step on the runtime well under ~500 µs, and
/// small appends (most) keep the shorter path.
pub const OFFLOAD_JSON_BYTES: usize = 64 * 1024;
/// How long a following Stream waits at the end before its reader closes its files and
/// frees its buffers (and positions again when records come): at once, so a follower holds
/// descriptors only while it has records to send, and 10,000 idle followers hold none
/// (with two each they would need 20,000, a common hard limit). The price is a
/// positioning per wake-up (two directory listings, two opens, an index lookup).
const PARK_AFTER: std::time::Duration = std::time::Duration::ZERO;
/// Records a Stream reads from disk at a time (bytes bound it first for records over 64 B).
const STREAM_BATCH: usize = 4096;
/// What a streamed record costs in memory, in multiples of its JSON: the record, and its
/// encoded copy in HTTP/2's buffer until the client takes it.
const STREAM_COPIES: usize = 2;

/// The gRPC service over a set of journals.
#[derive(Debug, Clone)]
pub struct JournalService {
    backend: Arc<dyn Backend>,
    max_payload_bytes: usize,
    streams: Arc<StreamLimits>,
    budget: ReadBudget,
    shutdown: watch::Receiver<bool>,
    metrics: Metrics,
}

impl JournalService {
    /// A service over the local `journals` that refuses records larger than
    /// `max_payload_bytes`, keeps open streams within `streams` and records held for
    /// readers within `budget`, and ends streams when `shutdown` turns true.
    pub fn new(
        journals: Arc<Journals>,
        max_payload_bytes: usize,
        streams: Arc<StreamLimits>,
        budget: ReadBudget,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let backend = Arc::new(LocalBackend::new(journals));
        JournalService::with_backend(backend, max_payload_bytes, streams, budget, shutdown)
    }

    /// A service like [`JournalService::new`] over any [`Backend`].
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        max_payload_bytes: usize,
        streams: Arc<StreamLimits>,
        budget: ReadBudget,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        JournalService {
            backend,
            max_payload_bytes,
            streams,
            budget,
            shutdown,
            metrics: Metrics::default(),
        }
    }

    /// The metrics the service records in.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts open streams in `metrics` (by default, in metrics nobody reads).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The memory one read of `step` bytes from disk may need: the step plus the one record
    /// that may end past it, twice (the records, and their encoded copy in the reply), and
    /// in the value format one record's conversion.
    fn read_reservation(&self, step: usize, as_value: bool) -> usize {
        2 * (step + self.max_payload_bytes) + if as_value { value::MAX_VALUE_HEAP } else { 0 }
    }

    /// Reads one Replay page: up to `limit` records and [`MAX_PAGE_BYTES`] in the form
    /// sent, holding read budget for them. The first reservation waits (holding nothing);
    /// later ones are only taken if free, and the page ends where they are not: under
    /// memory pressure pages get shorter instead of the server growing or readers
    /// deadlocking on each other's reservations.
    async fn read_page(
        &self,
        reader: &mut dyn RecordReader,
        limit: usize,
        as_value: bool,
    ) -> Result<(Vec<Record>, Held), ServerError> {
        let mut records = Vec::new();
        let mut held = Held::default();
        let (mut wire, mut memory) = (0, 0);
        let want = self.read_reservation(READ_STEP, as_value);
        'page: while records.len() < limit {
            match records.is_empty() {
                true => held.merge(self.budget.reserve(want).await),
                false => match self.budget.try_reserve(want) {
                    Some(more) => held.merge(more),
                    None => break,
                },
            }
            let batch = reader
                .next_batch_within(limit - records.len(), READ_STEP)
                .await?;
            if batch.is_empty() {
                break;
            }
            // Converting to values parses every record: a large batch is converted on
            // the blocking pool (the page so far goes with it, and comes back).
            let json_bytes = match as_value {
                true => batch.iter().map(|r| r.json.len()).sum(),
                false => 0,
            };
            let page = Page {
                records: std::mem::take(&mut records),
                wire,
                memory,
                budget: held.bytes(),
            };
            let (page, full) = off_runtime(json_bytes, move || page.extend(batch, as_value)).await;
            (records, wire, memory) = (page.records, page.wire, page.memory);
            if full {
                break 'page;
            }
            held.shrink_to(memory);
        }
        held.shrink_to(memory);
        Ok((records, held))
    }

    /// An AppendRequest checked (rights, name, record) and made the store's request, with
    /// the name of the journal to append it to. A record of more than
    /// [`OFFLOAD_JSON_BYTES`] is checked on a low-priority JSON thread (`background`).
    pub(crate) async fn append_of(
        &self,
        grant: &Grant,
        req: AppendRequest,
    ) -> Result<(String, Append), ServerError> {
        let name = authorize(grant, &req.journal, Right::Append)?;
        let max = self.max_payload_bytes;
        let line = match req.record {
            Some(append_request::Record::Payload(bytes)) => {
                let journal = name.to_owned();
                off_runtime(bytes.len(), move || {
                    line_from_payload(max, &journal, &bytes)
                })
                .await?
            }
            Some(append_request::Record::Value(value)) => {
                let journal = name.to_owned();
                off_runtime(value.encoded_len(), move || {
                    line_from_value(max, &journal, &value)
                })
                .await?
            }
            None => {
                return Err(ServerError::InvalidArgument(
                    "AppendRequest has no record: set `payload` (JSON text as bytes) or `value` (a JSON value)".into(),
                ));
            }
        };
        let request = append_with(vec![line], req.idempotency_key, req.expected_last_seq);
        Ok((name.to_owned(), request))
    }

    /// The backend the service stores in (AppendStream submits through it).
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A reader of the journal from `from_seq`, which may be at most one past the end. It
    /// refuses records larger than this server accepts, so no file makes it hold more than
    /// it budgets.
    async fn open_for_read(
        &self,
        name: &str,
        from_seq: u64,
    ) -> Result<Box<dyn RecordReader>, ServerError> {
        let reader = self
            .backend
            .reader(name, from_seq, self.max_payload_bytes)
            .await?;
        let last_seq = reader.last_seq();
        if from_seq > last_seq + 1 {
            return Err(ServerError::PastEnd {
                journal: name.to_owned(),
                from_seq,
                last_seq,
            });
        }
        Ok(reader)
    }
}

/// Runs `work` (JSON parsing or conversion of about `bytes` bytes) on the low-priority JSON
/// threads (`background`) when it is larger than [`OFFLOAD_JSON_BYTES`], so one large
/// request cannot hold an async worker (and every RPC queued behind it) for milliseconds,
/// nor take a core from them while it runs; inline otherwise.
async fn off_runtime<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    if bytes <= OFFLOAD_JSON_BYTES {
        return work();
    }
    crate::background::run(work).await
}

/// A record given as JSON bytes: size-checked before it is parsed.
fn line_from_payload(max: usize, journal: &str, payload: &[u8]) -> Result<JsonLine, ServerError> {
    check_size(max, payload.len())?;
    value::readable_line(journal, payload)
}

/// A record given as a structured value.
fn line_from_value(
    max: usize,
    journal: &str,
    value: &prost_types::Value,
) -> Result<JsonLine, ServerError> {
    let line = JsonLine::from_value(&value::to_json(value)?)
        .map_err(|e| ServerError::store(journal, e))?;
    check_size(max, line.as_bytes().len())?;
    value::check_readable(&line)?;
    Ok(line)
}

fn check_size(max: usize, size: usize) -> Result<(), ServerError> {
    if size > max {
        return Err(ServerError::PayloadTooLarge { size, max });
    }
    Ok(())
}

/// The records of an AppendBatch, each checked; the error names the first bad one.
fn batch_lines(
    max: usize,
    journal: &str,
    payloads: &[Vec<u8>],
    values: &[prost_types::Value],
) -> Result<Vec<JsonLine>, ServerError> {
    match (payloads.is_empty(), values.is_empty()) {
        (false, false) => Err(ServerError::InvalidArgument(
            "AppendBatchRequest sets both `payloads` and `values`; use one".into(),
        )),
        (true, true) => Err(ServerError::InvalidArgument(
            "AppendBatchRequest has no records: set `payloads` or `values`".into(),
        )),
        (false, true) => payloads
            .iter()
            .enumerate()
            .map(|(i, p)| line_from_payload(max, journal, p).map_err(|e| at_index(i, e)))
            .collect(),
        (true, false) => values
            .iter()
            .enumerate()
            .map(|(i, v)| line_from_value(max, journal, v).map_err(|e| at_index(i, e)))
            .collect(),
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

/// A Replay page being built: its records, their bytes on the wire, the memory they hold,
/// and the read budget held for them.
struct Page {
    records: Vec<Record>,
    wire: usize,
    memory: usize,
    budget: usize,
}

impl Page {
    /// Adds `batch` in wire form until the page is full; whether it is (a record was read
    /// but not sent: the page ends before it, and the next page starts there).
    fn extend(mut self, batch: Vec<ministore::Record>, as_value: bool) -> (Page, bool) {
        for stored in batch {
            let (record, form) = to_wire(stored, as_value);
            let len = record.encoded_len() + 8; // the field's tag and length
            let cost = form + len; // and its encoded copy, made as the reply is sent
            if !self.records.is_empty()
                && (self.wire + len > MAX_PAGE_BYTES || self.memory + cost > self.budget)
            {
                return (self, true);
            }
            self.wire += len;
            self.memory += cost;
            self.records.push(record);
        }
        (self, false)
    }
}

/// A stored record in its wire form, and the memory that form holds.
fn to_wire(record: ministore::Record, as_value: bool) -> (Record, usize) {
    let body = value::to_wire(record.json, as_value);
    let cost = match &body {
        record::Body::Value(v) => value::heap_bytes(v),
        record::Body::Payload(p) => p.len(),
    };
    let record = Record {
        seq: record.seq,
        body: Some(body),
        commit_time: record.commit_unix_ns.map(crate::backend::timestamp),
    };
    (record, cost)
}

/// Whether records go as values: the requested format, checked.
fn as_value(raw: i32) -> Result<bool, ServerError> {
    match RecordFormat::try_from(raw) {
        Ok(format) => Ok(format == RecordFormat::Value),
        Err(_) => Err(ServerError::InvalidArgument(format!(
            "unknown record format {raw}"
        ))),
    }
}

/// The stream of a Stream RPC: records (and, when following, where it is) as they are read,
/// then the end or an error status.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Status>> + Send>>;

/// Seconds of silence before a following stream's heartbeat, when the request says 0.
pub const DEFAULT_HEARTBEAT_SECONDS: u32 = 30;
/// The longest heartbeat interval a request may ask for.
pub const MAX_HEARTBEAT_SECONDS: u32 = 3600;

/// The store's request for `lines` with the wire's key (empty: none) and expectation.
fn append_with(lines: Vec<JsonLine>, key: String, expected_last_seq: Option<u64>) -> Append {
    Append {
        lines,
        key: (!key.is_empty()).then_some(key),
        expected_last_seq,
    }
}

#[tonic::async_trait]
impl JournalRpc for JournalService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        let journal_name = req.journal.clone();
        traced("Append", &journal_name, async {
            let (name, request) = self.append_of(&grant, req).await?;
            let appended = self.backend.append(&name, request).await?;
            let seq = appended.seqs.start;
            tracing::Span::current().record("seq", seq);
            Ok(Response::new(AppendResponse {
                seq,
                duplicate: appended.duplicate,
            }))
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
            let max = self.max_payload_bytes;
            let bytes = req.payloads.iter().map(Vec::len).sum::<usize>()
                + req.values.iter().map(Message::encoded_len).sum::<usize>();
            let (journal, payloads, values) = (name.to_owned(), req.payloads, req.values);
            let lines = off_runtime(bytes, move || {
                batch_lines(max, &journal, &payloads, &values)
            })
            .await?;
            let request = append_with(lines, req.idempotency_key, req.expected_last_seq);
            let appended = self.backend.append(name, request).await?;
            let range = appended.seqs;
            tracing::Span::current().record("seq", range.end - 1);
            Ok(Response::new(AppendBatchResponse {
                first_seq: range.start,
                last_seq: range.end - 1,
                duplicate: appended.duplicate,
            }))
        })
        .await
    }

    type AppendStreamStream = AckStream;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let grant = grant_of(&request);
        let permit = self.streams.acquire(request.remote_addr())?;
        let requests = request.into_inner();
        Ok(Response::new(append_stream::start(
            self.clone(),
            grant,
            permit,
            self.shutdown.clone(),
            requests,
        )))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("Replay", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Read)?;
            let as_value = as_value(req.format)?;
            let limit = match req.limit {
                0 => DEFAULT_PAGE,
                n if n > MAX_PAGE => {
                    return Err(ServerError::InvalidArgument(format!(
                        "limit {n} is more than the maximum page of {MAX_PAGE} records; page with next_seq"
                    )));
                }
                n => n,
            } as usize;
            let mut reader = self.open_for_read(name, req.from_seq).await?;
            let last_seq = reader.last_seq();
            let (records, held) = self.read_page(reader.as_mut(), limit, as_value).await?;
            let next_seq = records.last().map_or(reader.next_seq(), |r| r.seq + 1);
            let mut response = Response::new(ReplayResponse {
                records,
                next_seq,
                last_seq,
            });
            // The page is in memory until it is sent, not only until we return it.
            response.extensions_mut().insert(HeldForReply::new(held));
            Ok(response)
        })
        .await
    }

    type StreamStream = EventStream;

    async fn stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let grant = grant_of(&request);
        let peer = request.remote_addr();
        let req = request.into_inner();
        let (name, reader, as_value, permit) = traced("Stream", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Read)?.to_owned();
            let as_value = as_value(req.format)?;
            let heartbeat = req.heartbeat_seconds;
            if heartbeat > MAX_HEARTBEAT_SECONDS {
                return Err(ServerError::InvalidArgument(format!(
                    "heartbeat_seconds {heartbeat} is more than {MAX_HEARTBEAT_SECONDS}; 0 means {DEFAULT_HEARTBEAT_SECONDS}"
                )));
            }
            let permit = self.streams.acquire(peer)?;
            // A follower may start before its journal exists: it waits for it in the feed.
            let reader = match self.open_for_read(&name, req.from_seq).await {
                Ok(reader) => Some(reader),
                Err(ServerError::JournalNotFound(_)) if req.follow && req.from_seq <= 1 => None,
                Err(e) => return Err(e),
            };
            Ok((name, reader, as_value, permit))
        })
        .await?;
        let heartbeat = match req.heartbeat_seconds {
            0 => DEFAULT_HEARTBEAT_SECONDS,
            n => n,
        };
        let feed = StreamFeed {
            _permit: permit,
            _open: self.metrics.stream_opened(req.follow),
            reader,
            name,
            from_seq: req.from_seq,
            service: self.clone(),
            opened: self.backend.watch_created(),
            heartbeat: std::time::Duration::from_secs(heartbeat.into()),
            behind: true,
            as_value,
            follow: req.follow,
            shutdown: self.shutdown.clone(),
            ahead: VecDeque::new(),
            held: Held::default(),
            sent: Held::default(),
            ended: false,
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            feed,
            StreamFeed::next,
        ))))
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("Info", &req.journal, async {
            let name = authorize(&grant, &req.journal, Right::Read)?;
            Ok(Response::new(self.backend.info(name).await?))
        })
        .await
    }

    async fn list_journals(
        &self,
        request: Request<ListJournalsRequest>,
    ) -> Result<Response<ListJournalsResponse>, Status> {
        let grant = grant_of(&request);
        let req = request.into_inner();
        traced("ListJournals", "", async {
            // Listing shows what Info shows, so it takes the read right; a token limited
            // to some journals sees only those, and cannot learn the others' names.
            grant.check_right(Right::Read)?;
            let page_size = match req.page_size {
                0 => DEFAULT_LIST_PAGE,
                n if n > MAX_LIST_PAGE => {
                    return Err(ServerError::InvalidArgument(format!(
                        "page_size {n} is more than the maximum page of {MAX_LIST_PAGE} journals; page with next_page_token"
                    )));
                }
                n => n,
            } as usize;
            // The token is the last name of the page before: anything else is not ours.
            let after = match req.page_token.as_str() {
                "" => None,
                token if validate_name(token).is_ok_and(|name| name == token) => {
                    Some(token.to_owned())
                }
                token => {
                    return Err(ServerError::InvalidArgument(format!(
                        "page_token {:?} is not one this server gave; pass the next_page_token of the page before as it came, or none for the first page",
                        token.chars().take(80).collect::<String>()
                    )));
                }
            };
            list_page(self.backend.as_ref(), &grant, after.as_deref(), page_size)
                .await
                .map(Response::new)
        })
        .await
    }
}

/// One ListJournals page: the journals after `after` that `grant` covers, at most
/// `page_size`, each summarized; and the token of the next page (empty at the end).
async fn list_page(
    backend: &dyn Backend,
    grant: &Grant,
    after: Option<&str>,
    page_size: usize,
) -> Result<ListJournalsResponse, ServerError> {
    let names = backend.list_names().await?;
    // Sorted, so the page starts right after the token's name, whether or not that
    // journal still exists.
    let start = after.map_or(0, |after| {
        names.partition_point(|name| name.as_str() <= after)
    });
    let mut visible = names[start..].iter().filter(|name| grant.covers(name));
    let page: Vec<&String> = visible.by_ref().take(page_size).collect();
    let next_page_token = match (visible.next(), page.last()) {
        (Some(_), Some(last)) => (*last).clone(),
        _ => String::new(),
    };
    let mut journals = Vec::with_capacity(page.len());
    for name in page {
        journals.push(backend.summary(name).await);
    }
    Ok(ListJournalsResponse {
        journals,
        next_page_token,
    })
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

/// One Stream RPC, read as its client takes records: nothing is read ahead of what the
/// client consumes but one step of at most [`STREAM_STEP`] bytes of JSON (plus one record),
/// held in the read budget. A client that stops reading leaves tonic not asking for more,
/// so the stream holds that step and the one record in flight, never the journal; one
/// that goes away drops the stream and everything it held.
struct StreamFeed {
    // Held for the stream's lifetime: its place in the stream limits.
    _permit: StreamPermit,
    _open: OpenStream,
    /// `None` while a follower waits for its journal to exist.
    reader: Option<Box<dyn RecordReader>>,
    name: String,
    from_seq: u64,
    service: JournalService,
    /// Changes when a journal is opened: what a follower without a journal waits on.
    opened: watch::Receiver<u64>,
    heartbeat: std::time::Duration,
    /// Records were durable that this stream had not read at its last read: the next time
    /// it reaches the end, it says `caught_up`.
    behind: bool,
    as_value: bool,
    follow: bool,
    shutdown: watch::Receiver<bool>,
    /// Records read and not yet sent, and the budget they hold.
    ahead: VecDeque<ministore::Record>,
    held: Held,
    /// The budget of the record sent last: kept until the client asks for the next, so it
    /// covers the record while tonic and HTTP/2 still buffer it.
    sent: Held,
    ended: bool,
}

/// What a following stream waiting at the end (or for its journal) woke up for.
enum Woke {
    /// Records (or the journal) may be there now.
    More,
    /// Silence for the heartbeat interval.
    Heartbeat,
}

impl StreamFeed {
    /// The next message of the stream: a record or an event, or the final error; `None` at
    /// the end. Stops at shutdown (UNAVAILABLE) and on an error, sent as the last message.
    async fn next(mut self) -> Option<(Result<StreamEvent, Status>, StreamFeed)> {
        if self.ended {
            return None;
        }
        drop(std::mem::take(&mut self.sent));
        match self.next_event().await {
            Ok(Some(event)) => Some((Ok(StreamEvent { event: Some(event) }), self)),
            Ok(None) => None,
            Err(e) => {
                self.ended = true;
                Some((Err(e.into()), self))
            }
        }
    }

    fn last_seq(&self) -> u64 {
        self.reader.as_ref().map_or(0, |r| r.last_seq())
    }

    async fn next_event(&mut self) -> Result<Option<stream_event::Event>, ServerError> {
        loop {
            if let Some(stored) = self.ahead.pop_front() {
                self.sent = self.held.take(STREAM_COPIES * stored.json.len());
                // Converted only now, one at a time: a value takes several times its JSON.
                // A large one is converted on the blocking pool.
                let as_value = self.as_value;
                let bytes = if as_value { stored.json.len() } else { 0 };
                let (record, _) = off_runtime(bytes, move || to_wire(stored, as_value)).await;
                return Ok(Some(stream_event::Event::Record(record)));
            }
            if *self.shutdown.borrow() {
                return Err(ServerError::ShuttingDown);
            }
            let Some(reader) = self.reader.as_mut() else {
                // A follower whose journal does not exist yet: look again whenever a
                // journal is opened, until this one is.
                match self.service.open_for_read(&self.name, self.from_seq).await {
                    Ok(reader) => {
                        self.reader = Some(reader);
                        continue;
                    }
                    Err(ServerError::JournalNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                if self.behind {
                    self.behind = false;
                    return Ok(Some(stream_event::Event::CaughtUp(CaughtUp {
                        last_seq: 0,
                    })));
                }
                // This receiver, not a clone: `changed` marks what it has seen, so each
                // journal opened wakes the follower once, never in a loop.
                let opened = &mut self.opened;
                let woke = wait(self.heartbeat, self.shutdown.clone(), async move {
                    opened.changed().await.is_ok()
                })
                .await?;
                if let Woke::Heartbeat = woke {
                    return Ok(Some(self.heartbeat()));
                }
                continue;
            };
            let reserved = tokio::select! {
                held = self.service.budget.reserve(self.service.read_reservation(STREAM_STEP, false)) => held,
                _ = self.shutdown.wait_for(|stop| *stop) => return Err(ServerError::ShuttingDown),
            };
            self.held = reserved;
            let batch = reader.next_batch_within(STREAM_BATCH, STREAM_STEP).await?;
            let reached = reader.next_seq();
            let last_seq = reader.last_seq();
            self.held
                .shrink_to(STREAM_COPIES * batch.iter().map(|r| r.json.len()).sum::<usize>());
            if !batch.is_empty() {
                // More was durable than one read took: the stream is behind.
                if reached <= last_seq {
                    self.behind = true;
                }
                self.ahead.extend(batch);
                continue;
            }
            self.held = Held::default();
            if !self.follow {
                return Ok(None);
            }
            if self.behind {
                self.behind = false;
                let last_seq = self.last_seq();
                return Ok(Some(stream_event::Event::CaughtUp(CaughtUp { last_seq })));
            }
            // Nothing is held while waiting: a burst's batch queue is not kept either.
            if self.ahead.capacity() > 16 {
                self.ahead = VecDeque::new();
            }
            let reader = self.reader.as_mut().expect("checked above");
            let more = reader.wait(PARK_AFTER);
            match wait(self.heartbeat, self.shutdown.clone(), more).await? {
                Woke::More => continue,
                Woke::Heartbeat => return Ok(Some(self.heartbeat())),
            }
        }
    }

    fn heartbeat(&self) -> stream_event::Event {
        stream_event::Event::Heartbeat(Heartbeat {
            last_seq: self.last_seq(),
        })
    }
}

/// Waits for `more` (`false`: the journal's writer is gone, which means shutdown), for
/// `heartbeat` of silence, or for shutdown.
async fn wait(
    heartbeat: std::time::Duration,
    mut shutdown: watch::Receiver<bool>,
    more: impl Future<Output = bool>,
) -> Result<Woke, ServerError> {
    tokio::select! {
        more = more => match more {
            true => Ok(Woke::More),
            false => Err(ServerError::ShuttingDown),
        },
        _ = tokio::time::sleep(heartbeat) => Ok(Woke::Heartbeat),
        _ = shutdown.wait_for(|stop| *stop) => Err(ServerError::ShuttingDown),
    }
}
