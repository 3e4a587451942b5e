//! Journals as replicated NATS JetStream streams (`--backend nats://...`).
//!
//! Layout: one stream per journal, `ministore_<name>`, on subjects `ministore.<name>` and
//! `ministore.<name>.>` (the name escaped so that any journal name is one subject token and
//! a valid stream name). One stream per journal keeps every promise of the local store:
//! seqs are the stream's own, so they stay dense (1, 2, 3, ... with no gaps), an
//! expectation is the stream's last seq, and retention by bytes is per journal. The price
//! is a Raft group per journal (about 75 ms to create, on the first append) — see the
//! README, "Running a cluster", for the trade-offs against a shared stream.
//!
//! Promises and how they are kept:
//! - Append/AppendBatch are acknowledged once JetStream acknowledged them: stored by a
//!   majority of replicas, which fsync before acknowledging only with the servers'
//!   `sync_interval: always` (checked at start when `--nats-monitor` is given).
//! - Idempotency keys are `Nats-Msg-Id`s (`<journal>:<key>`), remembered for the stream's
//!   duplicate window (`--nats-dedupe-window-seconds`). A keyed batch is also written on the
//!   subject `ministore.<name>.k.<hex key>`, so that a retried batch, which JetStream refuses
//!   (10201) instead of answering, is answered with its original seqs from the last message
//!   on that subject.
//! - Expected seqs are `Nats-Expected-Last-Sequence`; batches are atomic batches
//!   (`Nats-Batch-Id`/`-Sequence`/`-Commit`, on streams with `allow_atomic`).
//! - Readers learn the last acknowledged seq from the stream leader first, then read
//!   through an ordered consumer until they have it: a record acknowledged before a read
//!   began is never missing from it, and the reader drops any record it already returned
//!   (the ordered consumer may restart from an earlier seq after a reset).
//! - A stream under a journal's name that ministore did not make (or that was changed so it
//!   cannot keep these promises) is refused with FAILED_PRECONDITION and left untouched:
//!   see `check_stream_fits`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, consumer, context::PublishErrorKind, message::PublishMessage as Publish, stream,
};
use bytes::Bytes;
use futures_util::StreamExt;
use ministore::proto::{InfoResponse, JournalSummary};
use ministore::{Append, Appended, MiniStoreError, Record};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Backend, PendingCommit, RecordReader};
use crate::config::Config;
use crate::error::ServerError;

/// Stream names are this and the escaped journal name.
pub const STREAM_PREFIX: &str = "ministore_";
/// Subjects are this and the escaped journal name.
pub const SUBJECT_PREFIX: &str = "ministore.";
/// JetStream's limit of messages in one atomic batch (error 10199 past it).
pub const MAX_BATCH: usize = 1000;
/// How long a reader waits for a record it knows was acknowledged before it reports the
/// cluster unavailable (a replica catching up, or an election).
const READ_PATIENCE: Duration = Duration::from_secs(10);
/// How long a follower at the end waits for its consumer before it checks with the
/// stream leader that nothing was appended which the consumer failed to deliver.
const FOLLOW_CHECK: Duration = Duration::from_secs(2);
/// How long a JetStream request (publish ack, stream or consumer info) is waited for.
/// Short: during an election (6-14 s) a request fails fast as UNAVAILABLE and the client
/// retries it with its key, rather than one request waiting past the client's budget.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest an append (or AppendStream request) waits for its answer, all JetStream
/// requests together; past it, UNAVAILABLE.
const APPEND_DEADLINE: Duration = Duration::from_secs(15);
/// JetStream API error: an atomic batch holds a `Nats-Msg-Id` already stored.
const BATCH_DUPLICATE: u64 = 10201;
/// JetStream API error: a `Nats-Msg-Id` whose first message is still being committed.
const MSG_ID_IN_PROCESS: u64 = 10158;
/// JetStream API error: a wrong `Nats-Expected-Last-Sequence`.
const WRONG_LAST_SEQUENCE: u64 = 10071;
/// Header on each message of a keyed batch: the number of records in it.
const BATCH_SIZE_HEADER: &str = "Ministore-Batch-Size";

/// The JetStream backend: a NATS connection and what it knows about the journals' streams.
#[derive(Debug)]
pub struct JetStreamBackend {
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    max_bytes: i64,
    max_message_bytes: i32,
    dedupe_window: Duration,
    /// Journals whose stream this server saw exist: appends to them skip the lookup.
    known: Mutex<HashSet<String>>,
    /// The creations under way, one gate per journal: concurrent first appends to a new
    /// journal wait for one creation instead of sending JetStream several (which it
    /// answers slowly), while other journals' creations go on beside it, so one creation
    /// waiting out a placement outage holds up no other journal. An entry lives while
    /// someone holds its gate (see [`CreationGate`]): at most one per append in flight.
    creating: CreationGates,
    created: watch::Sender<u64>,
    batch_prefix: String,
    batches: AtomicU64,
    advisories: JoinHandle<()>,
    /// Asking again the monitoring URLs that did not answer at start.
    monitor_rechecks: Vec<JoinHandle<()>>,
    /// Whether the NATS connection is up.
    reachable: watch::Sender<bool>,
}

impl JetStreamBackend {
    /// Connects to the NATS servers of `config.backend` with the NATS options of `config`,
    /// checks that JetStream answers (and, with `--nats-monitor`, that every server fsyncs
    /// before acknowledging), and watches for journals created by other ministore-servers.
    ///
    /// # Errors
    /// [`ServerError::Startup`] naming the servers and what failed.
    pub async fn connect(config: &Config) -> Result<Self, ServerError> {
        let startup = |op: &'static str, e: String| ServerError::Startup {
            op,
            path: config.backend.clone(),
            source: std::sync::Arc::new(std::io::Error::other(e)),
        };
        let servers = nats_servers(&config.backend)
            .map_err(|e| startup("parsing --backend", e.to_string()))?;
        // The connection's state, for health: async-nats reconnects by itself, through any
        // server of the list, and says when it lost and regained the cluster.
        let (reachable, _) = watch::channel(true);
        let mut options = async_nats::ConnectOptions::new()
            .name("ministore-server")
            .connection_timeout(Duration::from_secs(5))
            .event_callback({
                let reachable = reachable.clone();
                move |event| {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            reachable.send_replace(true);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the NATS connection; reconnecting (health NOT_SERVING until then)");
                            reachable.send_replace(false);
                        }
                        _ => {}
                    }
                    std::future::ready(())
                }
            });
        if let Some(creds) = &config.nats_creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| startup("reading --nats-creds of", e.to_string()))?;
        }
        if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.nats_token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &config.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&config.nats_tls_cert, &config.nats_tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let client = options
            .connect(servers)
            .await
            .map_err(|e| startup("connecting to NATS at", e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(JETSTREAM_TIMEOUT)
            .build(client.clone());
        js.query_account().await.map_err(|e| {
            startup(
                "asking JetStream (is it enabled, with -js?) at",
                e.to_string(),
            )
        })?;
        let monitor_rechecks = check_sync_always(&config.nats_monitor)
            .await
            .map_err(|e| startup("checking sync_interval of", e))?;
        let (created, _) = watch::channel(0);
        let advisories = client
            .subscribe("$JS.EVENT.ADVISORY.STREAM.CREATED.>")
            .await
            .map_err(|e| startup("subscribing to stream advisories at", e.to_string()))?;
        let advisories = tokio::spawn({
            let created = created.clone();
            async move {
                let mut advisories = advisories;
                while advisories.next().await.is_some() {
                    created.send_modify(|n| *n += 1);
                }
            }
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(JetStreamBackend {
            client,
            js,
            replicas: config.nats_replicas,
            max_bytes: match config.max_segments {
                0 => -1,
                n => config
                    .max_bytes_per_segment
                    .saturating_mul(n as u64)
                    .min(i64::MAX as u64) as i64,
            },
            // Room for our headers and the batch headers beside the largest record.
            max_message_bytes: (config.max_payload_bytes + 4096).min(i32::MAX as usize) as i32,
            dedupe_window: Duration::from_secs(config.nats_dedupe_window_seconds),
            known: Mutex::new(HashSet::new()),
            creating: Mutex::new(HashMap::new()),
            created,
            batch_prefix: format!("{:x}{:x}", std::process::id(), nanos),
            batches: AtomicU64::new(0),
            advisories,
            monitor_rechecks,
            reachable,
        })
    }

    fn stream_config(&self, journal: &str) -> stream::Config {
        let subject = subject(journal);
        stream::Config {
            name: stream_name(journal),
            subjects: vec![subject.clone(), format!("{subject}.>")],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: self.dedupe_window,
            max_message_size: self.max_message_bytes,
            allow_atomic_publish: true,
            ..Default::default()
        }
    }

    /// Creates `journal`'s stream unless this server knows it exists, and checks that a
    /// stream found under its name is one that can hold it.
    async fn ensure_stream(&self, journal: &str) -> Result<(), ServerError> {
        if self.known.lock().expect("not poisoned").contains(journal) {
            return Ok(());
        }
        let gate = CreationGate::enter(&self.creating, journal);
        let _creating = gate.gate.lock().await;
        if self.known.lock().expect("not poisoned").contains(journal) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + READ_PATIENCE;
        let mut told = false;
        let wanted = self.stream_config(journal);
        let mut stream = loop {
            match self.js.get_or_create_stream(wanted.clone()).await {
                Ok(stream) => {
                    // Found, not created, when it exists: whoever made it.
                    check_stream_fits(journal, &stream.cached_info().config, Use::Append)?;
                    break stream;
                }
                Err(e) if subject_taken(&e) => {
                    return Err(ServerError::ForeignStream {
                        journal: journal.to_owned(),
                        stream: wanted.name,
                        reason: format!(
                            "it cannot be created, because another stream takes its subject {:?} ({e}). Remove that stream or change its subjects, or use another journal name",
                            wanted.subjects[0]
                        ),
                    });
                }
                // The meta leader refuses to place a stream while it counts a peer offline
                // or is being elected, and may answer late while it places many. All pass:
                // our CI met "no suitable peers for placement, peer offline" once on a
                // healthy 3-node cluster under load. So ask again until the patience runs
                // out, instead of failing the append.
                Err(e) if placement_is_passing(&e) && tokio::time::Instant::now() < deadline => {
                    if !std::mem::replace(&mut told, true) {
                        tracing::warn!(
                            journal,
                            "the cluster cannot place the journal yet ({e}); asking again for up to {READ_PATIENCE:?}"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(unavailable(journal, "creating the journal's stream", e)),
            }
        };
        // A stream just created has no leader for a moment, and a publish then finds no
        // responder: wait (polling its info) until it has one.
        while stream
            .cached_info()
            .cluster
            .as_ref()
            .is_some_and(|c| c.leader.is_none())
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(
                    journal,
                    "creating the journal's stream",
                    "no leader elected",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream
                .info()
                .await
                .map_err(|e| unavailable(journal, "creating the journal's stream", e))?;
        }
        self.await_route(journal, deadline).await?;
        self.known
            .lock()
            .expect("not poisoned")
            .insert(journal.to_owned());
        self.created.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Waits until the NATS server we talk to routes `journal`'s subject to its stream.
    ///
    /// A stream leader is elected before the other servers learn of its subscription, and
    /// until then a publish through them finds no responder. Such a publish is sent again,
    /// and an AppendStream's later requests, sent meanwhile, would be stored before it (CI
    /// once saw the first ack of a new journal's stream at seq 29). So the first append
    /// waits for the route: a probe whose expected last seq no stream can have is refused
    /// by the leader (nothing stored, no seq used) once it reaches it.
    async fn await_route(
        &self,
        journal: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), ServerError> {
        loop {
            let probe = Publish::build()
                .payload(Bytes::new())
                .expected_last_sequence(u64::MAX);
            let answer = self
                .js
                .send_publish(subject(journal), probe)
                .await
                .map_err(|e| unavailable(journal, "reaching the journal's stream", e))?
                .await;
            match answer {
                Err(e) if no_responder(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) if no_responder(&e) => {
                    return Err(unavailable(
                        journal,
                        "reaching the journal's stream",
                        "no server routes its subject yet",
                    ));
                }
                // Refused as wrong last sequence (or any other answer): the leader heard it.
                _ => return Ok(()),
            }
        }
    }

    /// The journal's stream, its state as the stream leader reports it.
    async fn stream(&self, journal: &str) -> Result<stream::Stream, ServerError> {
        match self.js.get_stream(stream_name(journal)).await {
            Ok(stream) => {
                check_stream_fits(journal, &stream.cached_info().config, Use::Read)?;
                Ok(stream)
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Err(ServerError::JournalNotFound(journal.to_owned()))
            }
            Err(e) => Err(unavailable(journal, "reading the journal's stream", e)),
        }
    }

    /// An append, without the overall deadline.
    async fn append_now(&self, journal: &str, request: Append) -> Result<Appended, ServerError> {
        self.ensure_stream(journal).await?;
        let key = request.key.as_deref();
        match request.lines.as_slice() {
            [line] => {
                self.append_one(journal, line, key, request.expected_last_seq)
                    .await
            }
            lines => {
                let deadline = tokio::time::Instant::now() + READ_PATIENCE;
                loop {
                    let result = self
                        .append_batch(journal, lines, key, request.expected_last_seq)
                        .await;
                    // No responder for the commit: the batch was never committed (an
                    // uncommitted batch is dropped), so it is sent again, with a new id.
                    match result {
                        Err(NoResponder) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(NoResponder) => {
                            return Err(unavailable(journal, "publishing a batch", "no responder"));
                        }
                        Ok(result) => return result,
                    }
                }
            }
        }
    }

    async fn append_one(
        &self,
        journal: &str,
        line: &ministore::JsonLine,
        key: Option<&str>,
        expected: Option<u64>,
    ) -> Result<Appended, ServerError> {
        let acked = send_one(&self.js, journal, line, key, expected)
            .await?
            .await;
        answer_one(&self.js, journal, line, key, expected, acked).await
    }

    /// An atomic batch: every message but the last is published without waiting, the last
    /// commits the batch and carries its acknowledgement (the seq of its last record).
    async fn append_batch(
        &self,
        journal: &str,
        lines: &[ministore::JsonLine],
        key: Option<&str>,
        expected: Option<u64>,
    ) -> Result<Result<Appended, ServerError>, NoResponder> {
        let count = lines.len();
        if count > MAX_BATCH {
            return Ok(Err(ServerError::InvalidArgument(format!(
                "a batch of {count} records is more than the {MAX_BATCH} a JetStream backend commits atomically; split it"
            ))));
        }
        let id = format!(
            "{}-{}",
            self.batch_prefix,
            self.batches.fetch_add(1, Ordering::Relaxed)
        );
        let subject = match key {
            Some(key) => key_subject(journal, key),
            None => subject(journal),
        };
        for (i, line) in lines.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i == 0 {
                if let Some(key) = key {
                    headers.insert("Nats-Msg-Id", msg_id(journal, key).as_str());
                }
                if let Some(expected) = expected {
                    headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
                }
            }
            if key.is_some() {
                headers.insert(BATCH_SIZE_HEADER, count.to_string().as_str());
            }
            let payload = Bytes::copy_from_slice(line.as_bytes());
            if i + 1 < count {
                if let Err(e) = self
                    .client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                {
                    return Ok(Err(unavailable(journal, "publishing a batch", e)));
                }
                continue;
            }
            headers.insert("Nats-Batch-Commit", "1");
            let acked = match self
                .js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            return match acked {
                Ok(ack) => Ok(Ok(Appended {
                    seqs: ack.sequence + 1 - count as u64..ack.sequence + 1,
                    duplicate: ack.duplicate,
                })),
                Err(e) if no_responder(&e) => Err(NoResponder),
                Err(e) if api_code(&e) == Some(BATCH_DUPLICATE) && key.is_some() => Ok(self
                    .committed_batch(
                        journal,
                        &subject,
                        key.unwrap_or_default(),
                        count,
                        lines.last(),
                    )
                    .await),
                Err(e) => Ok(Err(publish_error(journal, expected, e))),
            };
        }
        Ok(Err(ServerError::InvalidArgument(
            "AppendBatchRequest has no records".into(),
        )))
    }

    /// The seqs of the batch committed earlier with `key`: the last message on its key
    /// subject ends it.
    async fn committed_batch(
        &self,
        journal: &str,
        subject: &str,
        key: &str,
        count: usize,
        last_line: Option<&ministore::JsonLine>,
    ) -> Result<Appended, ServerError> {
        let stream = self.stream(journal).await?;
        let reused = |first_seq| {
            ServerError::store(
                journal,
                MiniStoreError::KeyReused {
                    key: key.to_owned(),
                    first_seq,
                },
            )
        };
        let last = stream
            .get_last_raw_message_by_subject(subject)
            .await
            .map_err(|_| reused(0))?;
        let size = last
            .headers
            .get(BATCH_SIZE_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok());
        match size {
            Some(size)
                if size == count as u64
                    && Some(last.payload.as_ref()) == last_line.map(|l| l.as_bytes()) =>
            {
                Ok(Appended {
                    seqs: last.sequence + 1 - size..last.sequence + 1,
                    duplicate: true,
                })
            }
            _ => Err(reused(last.sequence)),
        }
    }
}

/// What an Append of `line` answers, given JetStream's acknowledgement of it.
async fn answer_one(
    js: &jetstream::Context,
    journal: &str,
    line: &ministore::JsonLine,
    key: Option<&str>,
    expected: Option<u64>,
    mut acked: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Appended, ServerError> {
    // Two refusals that say nothing was stored, so asking again is safe: the same key
    // sent again while its first request is still being committed (10158; once that
    // commit is done, the key is answered as a duplicate), and no responder (a stream
    // just created whose subject the server we talk to does not route yet).
    let deadline = tokio::time::Instant::now() + READ_PATIENCE;
    while let Err(e) = &acked
        && (api_code(e) == Some(MSG_ID_IN_PROCESS) || no_responder(e))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        acked = send_one(js, journal, line, key, expected).await?.await;
    }
    let ack = acked.map_err(|e| publish_error(journal, expected, e))?;
    if ack.duplicate
        && let Some(key) = key
    {
        // JetStream answers a known Msg-Id whatever the record; the local store refuses
        // a key reused for another record, and so does this backend.
        check_same(js, journal, key, ack.sequence, line).await?;
    }
    Ok(Appended {
        seqs: ack.sequence..ack.sequence + 1,
        duplicate: ack.duplicate,
    })
}

/// Refuses (ALREADY_EXISTS) a retried key whose stored record `seq` is not `line`.
async fn check_same(
    js: &jetstream::Context,
    journal: &str,
    key: &str,
    seq: u64,
    line: &ministore::JsonLine,
) -> Result<(), ServerError> {
    // Best effort: a retry after a failover is the common duplicate, and the record it
    // sent again is the one stored; a comparison the cluster cannot answer now does not
    // fail the append.
    let stored = match js.get_stream_no_info(stream_name(journal)).await {
        Ok(stream) => stream.get_raw_message(seq).await.ok(),
        Err(_) => None,
    };
    match stored.is_none_or(|stored| stored.payload.as_ref() == line.as_bytes()) {
        true => Ok(()),
        false => Err(ServerError::store(
            journal,
            MiniStoreError::KeyReused {
                key: key.to_owned(),
                first_seq: seq,
            },
        )),
    }
}

/// `append` within [`APPEND_DEADLINE`]: UNAVAILABLE past it.
async fn within_deadline(
    journal: &str,
    append: impl std::future::Future<Output = Result<Appended, ServerError>>,
) -> Result<Appended, ServerError> {
    tokio::time::timeout(APPEND_DEADLINE, append)
        .await
        .unwrap_or_else(|_| {
            Err(ServerError::Cluster {
                journal: journal.to_owned(),
                message: format!(
                    "no acknowledgement within {APPEND_DEADLINE:?}; the cluster may be electing a leader, and the record may have been stored: retry with the same idempotency key"
                ),
                unavailable: true,
            })
        })
}

/// Publishes one record; the returned future is its acknowledgement.
async fn send_one(
    js: &jetstream::Context,
    journal: &str,
    line: &ministore::JsonLine,
    key: Option<&str>,
    expected: Option<u64>,
) -> Result<jetstream::context::PublishAckFuture, ServerError> {
    let mut publish = Publish::build().payload(Bytes::copy_from_slice(line.as_bytes()));
    if let Some(key) = key {
        publish = publish.message_id(msg_id(journal, key));
    }
    if let Some(expected) = expected {
        publish = publish.expected_last_sequence(expected);
    }
    js.send_publish(subject(journal), publish)
        .await
        .map_err(|e| publish_error(journal, expected, e))
}

impl Drop for JetStreamBackend {
    fn drop(&mut self) {
        self.advisories.abort();
        for recheck in &self.monitor_rechecks {
            recheck.abort();
        }
    }
}

#[tonic::async_trait]
impl Backend for JetStreamBackend {
    async fn append(&self, journal: &str, request: Append) -> Result<Appended, ServerError> {
        within_deadline(journal, self.append_now(journal, request)).await
    }

    async fn submit(&self, journal: &str, request: Append) -> Result<PendingCommit, ServerError> {
        if request.lines.len() != 1 {
            // Batches are not pipelined: answered as `append` answers them.
            let result = self.append(journal, request).await;
            return Ok(Box::pin(async move { result }));
        }
        self.ensure_stream(journal).await?;
        let (key, expected) = (request.key.as_deref(), request.expected_last_seq);
        // Sent now, in the caller's order; acknowledged later.
        let acked = send_one(&self.js, journal, &request.lines[0], key, expected).await?;
        let (js, journal) = (self.js.clone(), journal.to_owned());
        // Awaited on its own task, so its deadline runs from now: AppendStream polls only
        // its oldest request, and requests stuck behind it must not start their timeouts
        // one after another (seen: 80 s stalls during an election).
        let answer = tokio::spawn(async move {
            let answer = async {
                let acked = acked.await;
                let key = request.key.as_deref();
                answer_one(&js, &journal, &request.lines[0], key, expected, acked).await
            };
            within_deadline(&journal, answer).await
        });
        Ok(Box::pin(async move {
            answer.await.unwrap_or(Err(ServerError::ShuttingDown))
        }))
    }

    async fn reader(
        &self,
        journal: &str,
        from_seq: u64,
        _max_record_bytes: usize,
    ) -> Result<Box<dyn RecordReader>, ServerError> {
        let stream = self.stream(journal).await?;
        let state = &stream.cached_info().state;
        let last_seq = state.last_sequence;
        let first_seq = first_seq(state);
        // Before the oldest retained record, reading starts at the oldest, as locally.
        let next_seq = from_seq.max(first_seq).max(1);
        Ok(Box::new(JetStreamReader {
            journal: journal.to_owned(),
            stream,
            next_seq,
            received: next_seq,
            last_seq,
            messages: None,
            consumer: None,
            ahead: VecDeque::new(),
        }))
    }

    async fn info(&self, journal: &str) -> Result<InfoResponse, ServerError> {
        let stream = self.stream(journal).await?;
        let state = &stream.cached_info().state;
        let first_seq = first_seq(state);
        let time = |nanos: i128| Some(super::timestamp(nanos.max(0) as u64));
        let (first_commit_time, last_commit_time) = match state.messages {
            0 => (None, None),
            _ => (
                time(state.first_timestamp.unix_timestamp_nanos()),
                time(state.last_timestamp.unix_timestamp_nanos()),
            ),
        };
        Ok(InfoResponse {
            first_seq,
            last_seq: state.last_sequence,
            // JetStream's files are its own: no segments of ours to count.
            segments: 0,
            damage: String::new(),
            first_commit_time,
            last_commit_time,
            // JetStream checksums every message it stores.
            checksums_from_seq: first_seq,
        })
    }

    async fn list_names(&self) -> Result<Vec<String>, ServerError> {
        let mut names = self.js.stream_names();
        let mut journals = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| unavailable("", "listing streams", e))?;
            if let Some(journal) = name.strip_prefix(STREAM_PREFIX).and_then(unescape) {
                journals.push(journal);
            }
        }
        journals.sort();
        Ok(journals)
    }

    async fn summary(&self, journal: &str) -> JournalSummary {
        match self.stream(journal).await {
            Ok(stream) => {
                let state = &stream.cached_info().state;
                JournalSummary {
                    name: journal.to_owned(),
                    first_seq: first_seq(state),
                    last_seq: state.last_sequence,
                    size_bytes: state.bytes,
                    segments: 0,
                    error: String::new(),
                }
            }
            Err(e) => JournalSummary {
                name: journal.to_owned(),
                error: tonic::Status::from(e).message().to_owned(),
                ..JournalSummary::default()
            },
        }
    }

    fn watch_created(&self) -> watch::Receiver<u64> {
        self.created.subscribe()
    }

    fn watch_reachable(&self) -> watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    async fn shut_down(&self) {
        // Everything acknowledged was acknowledged by the cluster; only buffered bytes of
        // unacknowledged requests are left to send.
        let _ = self.client.flush().await;
    }
}

/// The oldest retained seq, `last + 1` when there is none (as the local store says it).
fn first_seq(state: &stream::State) -> u64 {
    match state.messages {
        0 => state.last_sequence + 1,
        _ => state.first_sequence,
    }
}

/// A reader of one journal's stream: an ordered consumer from the next seq it needs,
/// recreated from there whenever it fails.
struct JetStreamReader {
    journal: String,
    stream: stream::Stream,
    /// The seq of the next record returned.
    next_seq: u64,
    /// The seq of the next record expected from the consumer (`next_seq` plus `ahead`).
    received: u64,
    last_seq: u64,
    messages: Option<consumer::pull::Ordered>,
    /// The name of the consumer this reader created last, deleted when it is replaced or
    /// the reader dropped: a stream has room for 1000 consumers, and an abandoned one
    /// would hold its place for 30 s.
    consumer: Option<String>,
    ahead: VecDeque<Record>,
}

impl JetStreamReader {
    /// Stops reading through the current consumer, and deletes it in the background.
    fn drop_consumer(&mut self) {
        self.messages = None;
        if let (Some(name), Ok(runtime)) =
            (self.consumer.take(), tokio::runtime::Handle::try_current())
        {
            let stream = self.stream.clone();
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

impl Drop for JetStreamReader {
    fn drop(&mut self) {
        self.drop_consumer();
    }
}

impl JetStreamReader {
    /// The next record from the consumer, within `patience` (`None` past it).
    async fn receive(&mut self, patience: Option<Duration>) -> Result<Option<Record>, ServerError> {
        let deadline = patience.map(|p| tokio::time::Instant::now() + p);
        loop {
            if self.messages.is_none() {
                match consume_from(&self.stream, &self.journal, self.received).await {
                    Ok((messages, name)) => {
                        self.messages = Some(messages);
                        self.consumer = Some(name);
                    }
                    // Right after a node died, creating a consumer can time out while the
                    // cluster settles: try again while there is time.
                    Err(e) => match deadline {
                        Some(deadline) if tokio::time::Instant::now() < deadline => {
                            tracing::debug!(journal = %self.journal, error = %e, "creating a consumer again");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        _ => return Err(e),
                    },
                }
            }
            let messages = self.messages.as_mut().expect("set above");
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(None),
                },
                None => messages.next().await,
            };
            let message = match next {
                Some(Ok(message)) => message,
                // The consumer failed (a leader change, a missed heartbeat): start a new one
                // from the seq this reader needs, never from where the old one would.
                Some(Err(e)) => {
                    tracing::debug!(journal = %self.journal, error = %e, "consumer failed; recreating it");
                    self.drop_consumer();
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                None => {
                    self.drop_consumer();
                    continue;
                }
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let seq = info.stream_sequence;
            self.last_seq = self.last_seq.max(seq + info.pending);
            let published = info.published.unix_timestamp_nanos().max(0) as u64;
            if seq < self.received {
                // Delivered again after a reset: already returned.
                continue;
            }
            if seq > self.received {
                let oldest = first_seq(
                    &self
                        .stream
                        .info()
                        .await
                        .map_err(|e| unavailable(&self.journal, "reading the journal's stream", e))?
                        .state,
                );
                if oldest > self.received {
                    return Err(ServerError::store(
                        &self.journal,
                        MiniStoreError::Truncated {
                            path: PathBuf::from(stream_name(&self.journal)),
                            requested: self.received,
                            oldest,
                        },
                    ));
                }
                // Not deleted, yet skipped: never pass over it; read again from it.
                self.drop_consumer();
                continue;
            }
            let json = String::from_utf8(message.payload.to_vec()).map_err(|_| {
                ServerError::InvalidArgument(format!(
                    "journal {:?}: record {seq} in the stream is not UTF-8 JSON (written by something other than ministore)",
                    self.journal
                ))
            })?;
            self.received = seq + 1;
            return Ok(Some(Record {
                seq,
                json,
                commit_unix_ns: Some(published),
            }));
        }
    }
}

/// An ordered consumer of `stream` from `seq`, and its name.
async fn consume_from(
    stream: &stream::Stream,
    journal: &str,
    seq: u64,
) -> Result<(consumer::pull::Ordered, String), ServerError> {
    {
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            ..Default::default()
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable(journal, "creating a consumer", e))?;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(journal, "consuming", e))?;
        Ok((messages, name))
    }
}

#[tonic::async_trait]
impl RecordReader for JetStreamReader {
    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn last_seq(&self) -> u64 {
        self.last_seq
    }

    async fn next_batch_within(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, ServerError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < max && bytes < max_bytes {
            if self.ahead.is_empty() {
                // Only records known acknowledged are waited for: the read ends at the end.
                if self.received > self.last_seq {
                    break;
                }
                match self.receive(Some(READ_PATIENCE)).await? {
                    Some(record) => self.ahead.push_back(record),
                    None => {
                        return Err(ServerError::Cluster {
                            journal: self.journal.clone(),
                            message: format!(
                                "record {} was acknowledged but no replica delivered it within {READ_PATIENCE:?} (an election?); retry",
                                self.received
                            ),
                            unavailable: true,
                        });
                    }
                }
            }
            let record = self.ahead.pop_front().expect("filled above");
            bytes += record.json.len();
            self.next_seq = record.seq + 1;
            batch.push(record);
        }
        Ok(batch)
    }

    async fn wait(&mut self, _park_after: Duration) -> bool {
        if !self.ahead.is_empty() || self.received <= self.last_seq {
            return true;
        }
        loop {
            match self.receive(Some(FOLLOW_CHECK)).await {
                Ok(Some(record)) => {
                    self.ahead.push_back(record);
                    return true;
                }
                // Quiet: ask the stream leader whether records came that the consumer has
                // not delivered (a consumer on a node that died can stall without an
                // error); if so, read them through a new consumer.
                Ok(None) => {
                    if let Ok(info) = self.stream.info().await
                        && info.state.last_sequence >= self.received
                    {
                        self.last_seq = self.last_seq.max(info.state.last_sequence);
                        self.drop_consumer();
                        return true;
                    }
                }
                Err(e) => {
                    tracing::warn!(journal = %self.journal, error = %e, "a follower's consumer failed");
                    return false;
                }
            }
        }
    }
}

/// The NATS servers of `--backend nats://a:4222,b:4222` (a scheme on the first applies
/// to the others).
fn nats_servers(backend: &str) -> Result<Vec<async_nats::ServerAddr>, std::io::Error> {
    let scheme = backend
        .split_once("://")
        .map_or("nats", |(scheme, _)| scheme);
    backend
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| match server.contains("://") {
            true => server.parse(),
            false => format!("{scheme}://{server}").parse(),
        })
        .collect()
}

/// How often a monitoring URL that did not answer at start is asked again.
const MONITOR_RECHECK: Duration = Duration::from_secs(30);

/// Asks each monitoring URL's `/varz` whether JetStream fsyncs before acknowledging, and
/// refuses to start if one answers that it does not, or if none answers. One that does not
/// answer (its node down while this server starts, as in a rolling restart) is warned
/// about and asked again in the background (the returned tasks) until it answers: one
/// node down must not keep the service down while the cluster serves. Without URLs, warns
/// that it could not check.
async fn check_sync_always(monitors: &[String]) -> Result<Vec<JoinHandle<()>>, String> {
    if monitors.is_empty() {
        tracing::warn!(
            "cannot check that the NATS servers fsync before acknowledging: acknowledged appends survive a power loss only if every server runs with `sync_interval: always` (JetStream's default is 2 minutes); pass --nats-monitor http://HOST:8222,... to have this checked at start"
        );
        return Ok(Vec::new());
    }
    let mut unanswered = Vec::new();
    for monitor in monitors {
        match syncs_always(monitor).await {
            Ok(true) => {}
            Ok(false) => return Err(not_always(monitor)),
            Err(Unanswered(why)) => unanswered.push((monitor.clone(), why)),
        }
    }
    if unanswered.len() == monitors.len() {
        let whys: Vec<String> = unanswered.into_iter().map(|(_, why)| why).collect();
        return Err(format!(
            "no monitoring URL answered, so nothing says the servers fsync before acknowledging: {}",
            whys.join("; ")
        ));
    }
    Ok(unanswered
        .into_iter()
        .map(|(monitor, why)| {
            tracing::warn!(%monitor, error = %why, "cannot check now that this NATS server fsyncs before acknowledging; asking again every {MONITOR_RECHECK:?}");
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(MONITOR_RECHECK).await;
                    match syncs_always(&monitor).await {
                        Ok(true) => {
                            tracing::info!(%monitor, "the NATS server fsyncs before acknowledging");
                            return;
                        }
                        Ok(false) => {
                            tracing::error!(%monitor, "{}", not_always(&monitor));
                            return;
                        }
                        Err(_) => {}
                    }
                }
            })
        })
        .collect())
}

/// A monitoring URL that did not answer: why.
struct Unanswered(String);

/// Whether the NATS server monitored at `monitor` runs with `sync_interval: always`; an
/// answer that is not its `/varz` says no.
async fn syncs_always(monitor: &str) -> Result<bool, Unanswered> {
    let varz = http_get(monitor, "/varz").await.map_err(Unanswered)?;
    let always = serde_json::from_str::<serde_json::Value>(&varz)
        .ok()
        .and_then(|varz| varz.pointer("/jetstream/config/sync_always")?.as_bool());
    Ok(always.unwrap_or(false))
}

fn not_always(monitor: &str) -> String {
    format!(
        "{monitor} does not run with `sync_interval: always`: it acknowledges before fsync, so a power loss could lose acknowledged records; set it in the server's jetstream config and restart it"
    )
}

/// A plain HTTP/1.0 GET of `path` from `http://host:port`: the body.
async fn http_get(base: &str, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let io = |e: std::io::Error| format!("{base}{path}: {e}");
    let mut socket =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
            .await
            .map_err(|_| format!("{base}: no connection within 5 s"))?
            .map_err(io)?;
    socket
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(io)?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut response))
        .await
        .map_err(|_| format!("{base}{path}: no answer within 5 s"))?
        .map_err(io)?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| format!("{base}{path}: not an HTTP response"))
}

/// A publish that no server took: nothing was stored.
#[derive(Debug)]
struct NoResponder;

/// Whether a failed publish reached no server (nothing stored, safe to send again).
fn no_responder(err: &jetstream::context::PublishError) -> bool {
    err.kind() == PublishErrorKind::StreamNotFound
}

/// The API error code of a failed publish, when JetStream gave one.
fn api_code(err: &jetstream::context::PublishError) -> Option<u64> {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(|e| e.error_code().0)
}

fn publish_error(
    journal: &str,
    expected: Option<u64>,
    err: jetstream::context::PublishError,
) -> ServerError {
    let code = api_code(&err);
    if err.kind() == PublishErrorKind::WrongLastSequence || code == Some(WRONG_LAST_SEQUENCE) {
        // "wrong last sequence: 5 (code 400, error code 10071)": the actual last seq.
        let text = std::error::Error::source(&err).map_or_else(String::new, |s| s.to_string());
        let last_seq = text
            .split_once("sequence: ")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
        return ServerError::store(
            journal,
            MiniStoreError::LastSeqMismatch {
                expected: expected.unwrap_or(0),
                last_seq,
            },
        );
    }
    match err.kind() {
        PublishErrorKind::MaxPayloadExceeded => ServerError::LimitReached(format!(
            "journal {journal:?}: the record is larger than the NATS servers' max_payload"
        )),
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe => ServerError::Cluster {
            journal: journal.to_owned(),
            message: format!(
                "no acknowledgement ({err}); the cluster may be electing a leader, and the record may have been stored: retry with the same idempotency key"
            ),
            unavailable: true,
        },
        _ => ServerError::Cluster {
            journal: journal.to_owned(),
            message: match std::error::Error::source(&err) {
                Some(source) => format!("{err}: {source}"),
                None => err.to_string(),
            },
            unavailable: false,
        },
    }
}

/// Each journal's gate while its stream is being created, by journal name.
type CreationGates = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// Holds a journal's place in [`JetStreamBackend::creating`]: the first to enter puts the
/// journal's gate there, and the last to leave (done, failed or cancelled) takes it out.
struct CreationGate<'a> {
    creating: &'a CreationGates,
    journal: &'a str,
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> CreationGate<'a> {
    fn enter(creating: &'a CreationGates, journal: &'a str) -> Self {
        let gate = creating
            .lock()
            .expect("not poisoned")
            .entry(journal.to_owned())
            .or_default()
            .clone();
        CreationGate {
            creating,
            journal,
            gate,
        }
    }
}

impl Drop for CreationGate<'_> {
    fn drop(&mut self) {
        let mut creating = self.creating.lock().expect("not poisoned");
        // Clones are only made under this lock: two (the map's and ours) means nobody else
        // holds or waits for the gate.
        if Arc::strong_count(&self.gate) <= 2 {
            creating.remove(self.journal);
        }
    }
}

/// What a journal's stream is wanted for.
#[derive(Clone, Copy, PartialEq)]
enum Use {
    Read,
    Append,
}

/// Refuses a stream found under a journal's name that cannot serve as the journal: one made
/// by something else (not on the journal's subject), or, to append to, one changed so that
/// it cannot keep what an append promises. What an operator may tune (replicas, limits,
/// the duplicate window) may differ; and a sealed stream is still read as the journal (an
/// operator may make a journal read-only so).
fn check_stream_fits(journal: &str, found: &stream::Config, to: Use) -> Result<(), ServerError> {
    let subject = subject(journal);
    let reason = if !found.subjects.contains(&subject) {
        Some(format!(
            "its subjects are {:?}, not the journal's {subject:?}",
            found.subjects
        ))
    } else if to == Use::Read {
        None
    } else if found.retention != stream::RetentionPolicy::Limits {
        Some(format!(
            "its retention is {:?}, which deletes records once consumed; a journal keeps them (limits)",
            found.retention
        ))
    } else if found.no_ack {
        Some("it does not acknowledge what is published to it (no_ack)".to_owned())
    } else if found.sealed || found.mirror.is_some() {
        Some("it is sealed or a mirror: it takes no appends".to_owned())
    } else if !found.allow_atomic_publish {
        Some("it does not allow atomic batches (allow_atomic), which AppendBatch needs".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ServerError::ForeignStream {
            journal: journal.to_owned(),
            stream: stream_name(journal),
            reason: format!(
                "{reason}; it was not made by ministore, or was changed since. Remove or fix that stream, or use another journal name"
            ),
        }),
        None => Ok(()),
    }
}

/// Whether a stream could not be created because another one takes its subjects.
fn subject_taken(err: &jetstream::context::CreateStreamError) -> bool {
    matches!(err.kind(), jetstream::context::CreateStreamErrorKind::JetStream(api)
        if api.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP)
}

/// Whether a failed stream creation names a cluster state that passes on its own: no
/// peers to place the replicas on (a peer seen offline), no meta leader (an election,
/// when the API has no responder or says so), or no answer in time (a meta leader busy
/// placing many new streams' replicas at once, on a loaded machine). Creating again is
/// safe: it is get-or-create, and what it finds is checked.
fn placement_is_passing(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    match err.kind() {
        Kind::JetStreamUnavailable | Kind::TimedOut => true,
        Kind::JetStream(api) => [
            jetstream::ErrorCode::CLUSTER_NO_PEERS,
            jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE,
        ]
        .contains(&api.error_code()),
        _ => false,
    }
}

/// Any failure to reach the cluster or to get an answer from it: UNAVAILABLE, retry later.
fn unavailable(journal: &str, what: &str, err: impl std::fmt::Display) -> ServerError {
    ServerError::Cluster {
        journal: journal.to_owned(),
        message: format!("{what}: {err}"),
        unavailable: true,
    }
}

/// `<journal>:<key>`: ids are stream-wide, and `:` is in no journal name.
fn msg_id(journal: &str, key: &str) -> String {
    format!("{journal}:{key}")
}

/// The stream of `journal`.
pub fn stream_name(journal: &str) -> String {
    format!("{STREAM_PREFIX}{}", escape(journal))
}

/// The subject `journal`'s records are published on.
pub fn subject(journal: &str) -> String {
    format!("{SUBJECT_PREFIX}{}", escape(journal))
}

/// The subject of a keyed batch: the key in hex, one token whatever its bytes.
fn key_subject(journal: &str, key: &str) -> String {
    use std::fmt::Write;
    let mut subject = format!("{}.k.", subject(journal));
    for byte in key.bytes() {
        let _ = write!(subject, "{byte:02x}");
    }
    subject
}

/// A journal name as one subject token and part of a stream name: `.` and `_` (and
/// anything outside `[A-Za-z0-9-]`) become `_XX`, their hex.
fn escape(journal: &str) -> String {
    let mut escaped = String::with_capacity(journal.len());
    for c in journal.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' => escaped.push(c),
            c => {
                let mut buf = [0; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    escaped.push_str(&format!("_{byte:02X}"));
                }
            }
        }
    }
    escaped
}

/// The journal name of an escaped one; `None` if it is not one [`escape`] makes.
fn unescape(escaped: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_journal_name_escapes_to_one_token_and_back() {
        for name in ["default", "a.b", "a_b", "x-1.2_3", "_2E"] {
            let escaped = escape(name);
            assert!(
                escaped
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            assert_eq!(unescape(&escaped).as_deref(), Some(name));
        }
        assert_ne!(escape("a.b"), escape("a_b"));
    }

    #[test]
    fn servers_take_the_scheme_of_the_first() {
        let servers = nats_servers("nats://127.0.0.1:4222,127.0.0.1:4223").unwrap();
        assert_eq!(servers.len(), 2);
    }

    /// The refusals the cluster gives while it settles are tried again; a refusal of the
    /// stream itself (a bad config, a name taken) is not.
    #[test]
    fn only_a_passing_cluster_state_is_tried_again() {
        use jetstream::context::{CreateStreamError, CreateStreamErrorKind as Kind};
        let api = |err_code: u64| {
            let error = serde_json::json!({"code": 400, "err_code": err_code, "description": "x"});
            CreateStreamError::new(Kind::JetStream(serde_json::from_value(error).unwrap()))
        };
        // "no suitable peers for placement, peer offline", as CI once met it.
        assert!(placement_is_passing(&api(10005)));
        // "JetStream system temporarily unavailable".
        assert!(placement_is_passing(&api(10008)));
        assert!(placement_is_passing(&CreateStreamError::new(
            Kind::JetStreamUnavailable
        )));
        assert!(placement_is_passing(&CreateStreamError::new(
            Kind::TimedOut
        )));
        // "stream name already in use with a different configuration".
        assert!(!placement_is_passing(&api(10058)));
        assert!(!placement_is_passing(&CreateStreamError::new(
            Kind::InvalidStreamName
        )));
    }

    #[test]
    fn a_stream_that_cannot_serve_as_the_journal_is_refused_and_says_why() {
        let fits = stream::Config {
            subjects: vec![subject("j"), format!("{}.>", subject("j"))],
            allow_atomic_publish: true,
            ..Default::default()
        };
        let why = |config: &stream::Config, to| match check_stream_fits("j", config, to) {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        };
        assert_eq!(why(&fits, Use::Append), None);
        let cases = [
            (
                stream::Config {
                    subjects: vec!["orders.>".into()],
                    ..fits.clone()
                },
                "its subjects are [\"orders.>\"]",
            ),
            (
                stream::Config {
                    retention: stream::RetentionPolicy::WorkQueue,
                    ..fits.clone()
                },
                "deletes records once consumed",
            ),
            (
                stream::Config {
                    no_ack: true,
                    ..fits.clone()
                },
                "no_ack",
            ),
            (
                stream::Config {
                    sealed: true,
                    ..fits.clone()
                },
                "takes no appends",
            ),
            (
                stream::Config {
                    allow_atomic_publish: false,
                    ..fits.clone()
                },
                "allow_atomic",
            ),
        ];
        for (config, reason) in &cases {
            let refused = why(config, Use::Append).expect("refused");
            assert!(refused.contains(reason), "{refused}");
            assert!(refused.contains(&stream_name("j")), "{refused}");
        }
        // Read: only a stream on other subjects is not the journal; a sealed one is read.
        assert!(why(&cases[0].0, Use::Read).is_some());
        for (config, _) in &cases[1..] {
            assert_eq!(why(config, Use::Read), None);
        }
        // Tuned by an operator: still the journal.
        let tuned = stream::Config {
            num_replicas: 5,
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(3600),
            ..fits.clone()
        };
        assert_eq!(why(&tuned, Use::Append), None);
    }
}
