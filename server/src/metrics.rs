//! Prometheus metrics: the typed handles the server records into, the tower layer that
//! counts every Journal RPC with the status its client got, and the `GET /metrics`
//! endpoint of `--metrics-listen`.
//!
//! Recording is always on (a few atomic operations per RPC and per group commit); only the
//! endpoint is opt-in. What changes fast is counted where it happens; what a journal holds
//! (segments, bytes on disk, queued appends) is read when scraped, so it costs nothing
//! between scrapes. Only gauges are labelled by journal, and only for open journals, so
//! their series are bounded by `--max-journals`; the high-rate counters are not.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::Code;

use crate::journals::{Journal, Journals};

/// Bounds of `ministore_rpc_duration_seconds`: 100 µs (a no-op call) to 10 s.
const RPC_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Bounds of `ministore_commit_duration_seconds`: 50 µs (a fast fdatasync) to 1 s.
const COMMIT_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bounds of `ministore_commit_records`: one record to a large batch.
const COMMIT_RECORD_BUCKETS: [f64; 8] = [1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

/// Scrape connections served at once; more wait to be accepted.
const MAX_SCRAPE_CONNECTIONS: usize = 16;
/// Time a scrape connection has to send its request.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's metrics: cheap to clone (one `Arc`), recorded from anywhere.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Handles>);

#[derive(Debug)]
struct Handles {
    rpcs: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    appended_records: Counter,
    appended_bytes: Counter,
    commit_duration: Histogram,
    commit_records: Histogram,
    commit_failures: Counter,
    streams_open: Gauge,
    followers_open: Gauge,
    append_streams_open: Gauge,
    append_acks: Family<CodeLabels, Counter>,
    journal_opens: Family<HowLabels, Counter>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            rpcs: Family::default(),
            rpc_duration: Family::new_with_constructor(|| Histogram::new(RPC_BUCKETS)),
            appended_records: Counter::default(),
            appended_bytes: Counter::default(),
            commit_duration: Histogram::new(COMMIT_BUCKETS),
            commit_records: Histogram::new(COMMIT_RECORD_BUCKETS),
            commit_failures: Counter::default(),
            streams_open: Gauge::default(),
            followers_open: Gauge::default(),
            append_streams_open: Gauge::default(),
            append_acks: Family::default(),
            journal_opens: Family::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HowLabels {
    how: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

impl Metrics {
    /// The registry to scrape: every handle, and the per-journal gauges of `journals`
    /// read at each scrape. Names get the `ministore_` prefix.
    pub fn registry(&self, journals: Arc<Journals>) -> Registry {
        let h = &self.0;
        let mut registry = Registry::with_prefix("ministore");
        registry.register(
            "rpcs",
            "Journal RPCs finished, by method and the status code the client got (an RPC its client cancelled, or that ran past its deadline, is CANCELLED; a Stream counts when it ends)",
            h.rpcs.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "Time from a Journal RPC's request to the server's answer: the reply of a unary RPC, the opened stream (or its refusal) of a Stream",
            h.rpc_duration.clone(),
        );
        registry.register(
            "appended_records",
            "Records committed (written and fsynced), all journals",
            h.appended_records.clone(),
        );
        registry.register(
            "appended_bytes",
            "Bytes of JSON committed, without line breaks, all journals",
            h.appended_bytes.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Time of one group commit in a journal's writer: the write and the fsync (and a reopen after a failure)",
            h.commit_duration.clone(),
        );
        registry.register(
            "commit_records",
            "Records per group commit",
            h.commit_records.clone(),
        );
        registry.register(
            "commit_failures",
            "Group commits that failed (every append in them got an error)",
            h.commit_failures.clone(),
        );
        registry.register(
            "streams_open",
            "Stream RPCs open, followers included",
            h.streams_open.clone(),
        );
        registry.register(
            "followers_open",
            "Stream RPCs open with follow set",
            h.followers_open.clone(),
        );
        registry.register(
            "append_streams_open",
            "AppendStream RPCs open",
            h.append_streams_open.clone(),
        );
        registry.register(
            "append_stream_acks",
            "Requests of AppendStream RPCs answered, by the status code of their ack (OK: the record is durable); the RPC itself counts in ministore_rpcs when it ends",
            h.append_acks.clone(),
        );
        registry.register(
            "journal_opens",
            "Journal stores opened, by how: warm (from the state kept when it closed, its files checked unchanged), changed (state kept, but its files changed while closed: opened in full), full (no state kept: first open, or forgotten beyond --warm-journal-bytes)",
            h.journal_opens.clone(),
        );
        registry.register_collector(Box::new(JournalGauges(journals)));
        registry
    }

    /// The layer that counts and times every Journal RPC at the edge of the server, so it
    /// sees what the client sees: refusals by the token check and undecodable requests
    /// too, a Stream's final status, and calls dropped on a deadline or by their client.
    pub fn rpc_layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer(self.clone())
    }

    /// Records one group commit of `records` records and `bytes` bytes of JSON that took
    /// `took`.
    pub fn committed(&self, took: Duration, records: usize, bytes: usize, ok: bool) {
        let h = &self.0;
        h.commit_duration.observe(took.as_secs_f64());
        h.commit_records.observe(records as f64);
        if ok {
            h.appended_records.inc_by(records as u64);
            h.appended_bytes.inc_by(bytes as u64);
        } else {
            h.commit_failures.inc();
        }
    }

    /// Counts a Stream RPC as open until the returned guard is dropped.
    pub fn stream_opened(&self, follow: bool) -> OpenStream {
        self.0.streams_open.inc();
        if follow {
            self.0.followers_open.inc();
        }
        OpenStream {
            metrics: self.clone(),
            follow,
        }
    }

    /// Counts an AppendStream RPC as open until the returned guard is dropped.
    pub fn append_stream_opened(&self) -> OpenAppendStream {
        self.0.append_streams_open.inc();
        OpenAppendStream(self.clone())
    }

    /// Counts one opening of a journal's store, `how` it was opened (`warm`, `changed` or
    /// `full`: see `ministore_journal_opens_total`).
    pub fn journal_opened(&self, how: &'static str) {
        self.0.journal_opens.get_or_create(&HowLabels { how }).inc();
    }

    /// Counts one AppendStream request answered with `code`.
    pub fn append_acked(&self, code: tonic::Code) {
        let code = ministore::proto::code_name(code);
        self.0.append_acks.get_or_create(&CodeLabels { code }).inc();
    }
}

/// One open AppendStream RPC, counted in `ministore_append_streams_open` while it lives.
#[derive(Debug)]
pub struct OpenAppendStream(Metrics);

impl Drop for OpenAppendStream {
    fn drop(&mut self) {
        self.0.0.append_streams_open.dec();
    }
}

/// One open Stream RPC, counted in `ministore_streams_open` (and `ministore_followers_open`)
/// while it lives.
#[derive(Debug)]
pub struct OpenStream {
    metrics: Metrics,
    follow: bool,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.metrics.0.streams_open.dec();
        if self.follow {
            self.metrics.0.followers_open.dec();
        }
    }
}

/// The per-journal gauges, read from the journals the server holds at each scrape: the
/// cost of a scrape is one directory listing per journal held (those with open files, at
/// most `--max-journals`, and those followers or RPCs in progress use).
#[derive(Debug)]
struct JournalGauges(Arc<Journals>);

impl Collector for JournalGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let journals = self.0.open_journals();
        ConstGauge::new(self.0.open_stores() as i64).encode(encoder.encode_descriptor(
            "journals_open",
            "Journals whose files are open (at most --max-journals; idle ones are closed).",
            None,
            MetricType::Gauge,
        )?)?;
        let (warm, warm_bytes) = self.0.warm_journals();
        ConstGauge::new(warm as i64).encode(encoder.encode_descriptor(
            "journals_warm",
            "Closed journals whose state is kept in memory, to reopen without a full open.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(warm_bytes as i64).encode(encoder.encode_descriptor(
            "warm_journal_bytes",
            "Memory of the state kept for closed journals (at most --warm-journal-bytes).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(self.0.key_memory_bytes() as i64).encode(encoder.encode_descriptor(
            "dedupe_key_bytes",
            "Memory of the idempotency keys of all journals, open and closed warm (a budget of --dedupe-key-bytes, which each journal's newest 1,024 keys may pass).",
            None,
            MetricType::Gauge,
        )?)?;
        type Read = fn(&Journal) -> i64;
        let per_journal: [(&str, &str, Read); 3] = [
            (
                "journal_segments",
                "Segment files of an open journal, the active one included.",
                |j| j.durable().segments as i64,
            ),
            (
                "journal_disk_bytes",
                "Bytes of an open journal's files on disk (segments, their indexes and metadata files).",
                |j| ministore::disk_bytes(j.path()).unwrap_or(0) as i64,
            ),
            (
                "writer_queue_depth",
                "Appends waiting for an open journal's writer (not counting the group it is committing).",
                |j| j.queued_appends() as i64,
            ),
        ];
        for (name, help, read) in per_journal {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for journal in &journals {
                let labels = [("journal", journal.name())];
                ConstGauge::new(read(journal)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The Journal method a request path names (`/ministore.v1.Journal/Append`); `None` for
/// other services (health, reflection) and unknown methods, so the label stays bounded.
fn journal_method(path: &str) -> Option<&'static str> {
    const METHODS: [&str; 6] = [
        "Append",
        "AppendBatch",
        "Replay",
        "Stream",
        "Info",
        "ListJournals",
    ];
    let name = path
        .strip_prefix('/')?
        .strip_prefix(ministore::proto::journal_server::SERVICE_NAME)?
        .strip_prefix('/')?;
    METHODS.into_iter().find(|m| *m == name)
}

/// The gRPC status in `headers` (a trailers-only response) or trailers.
fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

/// One Journal RPC in flight, recorded exactly once: when its status is known, or as
/// CANCELLED when it is dropped before (client gone, deadline passed, connection closed).
#[derive(Debug)]
struct Rpc {
    metrics: Metrics,
    method: &'static str,
    started: Instant,
}

impl Rpc {
    fn answered(&self) {
        self.metrics
            .0
            .rpc_duration
            .get_or_create(&MethodLabels {
                method: self.method,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }

    fn finished(self, code: Code) {
        self.metrics
            .0
            .rpcs
            .get_or_create(&RpcLabels {
                method: self.method,
                code: ministore::proto::code_name(code),
            })
            .inc();
    }
}

/// Records the RPC in `slot` as finished with `code`, unless it already was.
fn finish(slot: &mut Option<Rpc>, code: Code) {
    if let Some(rpc) = slot.take() {
        rpc.finished(code);
    }
}

/// See [`Metrics::rpc_layer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(Metrics);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> RpcMetricsService<S> {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<MeteredBody>;
    type Error = S::Error;
    type Future = MeteredCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = journal_method(request.uri().path()).map(|method| Rpc {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
        });
        MeteredCall {
            inner: self.inner.call(request),
            rpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RpcMetricsService`].
    pub struct MeteredCall<F> {
        #[pin]
        inner: F,
        rpc: Option<Rpc>,
    }

    impl<F> PinnedDrop for MeteredCall<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped unanswered: tonic's deadline fired (the client gets CANCELLED), or
            // the client or its connection went away.
            if let Some(rpc) = this.project().rpc.take() {
                rpc.answered();
                rpc.finished(Code::Cancelled);
            }
        }
    }
}

impl<F, E> Future for MeteredCall<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = Result<http::Response<MeteredBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut rpc = this.rpc.take();
        if let Some(rpc) = &rpc {
            rpc.answered();
        }
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                // tonic turns the error into a status with this code.
                finish(&mut rpc, Code::Unknown);
                return Poll::Ready(Err(e));
            }
        };
        // A trailers-only response (every error a handler returns) has its status now;
        // any other has it in the trailers at the end of its body.
        if let Some(code) = grpc_status(response.headers()) {
            finish(&mut rpc, code);
        }
        Poll::Ready(Ok(response.map(|body| MeteredBody { body, rpc })))
    }
}

/// A response body that records its RPC's status from the trailers, or CANCELLED if it
/// is dropped before they are sent.
#[derive(Debug)]
pub struct MeteredBody {
    body: tonic::body::Body,
    rpc: Option<Rpc>,
}

impl http_body::Body for MeteredBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if self.rpc.is_some() {
            let code = match &polled {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|trailers| grpc_status(trailers).unwrap_or(Code::Unknown)),
                // The stream is reset: the client sees an error without a status.
                Some(Err(_)) => Some(Code::Unknown),
                None => Some(Code::Unknown),
            };
            if let Some(code) = code {
                finish(&mut self.rpc, code);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        finish(&mut self.rpc, Code::Cancelled);
    }
}

/// Serves `GET /metrics` from `registry` on `listener` until the task is dropped:
/// HTTP/1.1, one request per connection, at most 16 connections at once.
pub async fn serve(listener: TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    // Dropped with this task, which aborts the connections still open.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or memory: back off rather than spin.
                tracing::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&request, registry).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("metrics connection: {e}");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn respond<B>(
    request: &http::Request<B>,
    registry: Arc<Registry>,
) -> http::Response<Full<Bytes>> {
    let reply = |status: http::StatusCode, text: String| {
        let mut response = http::Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            http::StatusCode::NOT_FOUND,
            "not found: try /metrics\n".into(),
        );
    }
    if request.method() != http::Method::GET {
        let mut response = reply(http::StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    // Reading the journals' directories is file I/O: off the runtime's threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).map(|()| text)
    })
    .await;
    match encoded {
        Ok(Ok(text)) => {
            let mut response = reply(http::StatusCode::OK, text);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        _ => reply(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_journal_methods_are_labelled() {
        assert_eq!(
            journal_method("/ministore.v1.Journal/Append"),
            Some("Append")
        );
        assert_eq!(journal_method("/ministore.v1.Journal/Info"), Some("Info"));
        assert_eq!(journal_method("/ministore.v1.Journal/Nope"), None);
        assert_eq!(journal_method("/grpc.health.v1.Health/Check"), None);
    }
}
