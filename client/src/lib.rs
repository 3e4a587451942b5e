//! ministore-client: a typed Rust client for ministore-server.
//!
//! Records are any `T: Serialize` going in and any `T: DeserializeOwned` coming out; the
//! wire carries them as JSON text. The generated stubs are re-exported as [`proto`] for
//! raw use.
//!
//! ```no_run
//! use ministore_client::Client;
//! use serde::{Deserialize, Serialize};
//! use tokio_stream::StreamExt;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct Order { id: u64, item: String }
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), ministore_client::ClientError> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let seq = client.append("orders", &Order { id: 1, item: "tea".into() }).await?;
//!
//! // Everything so far, paged for you:
//! let orders: Vec<(u64, Order)> = client.replay("orders", 1).await?;
//!
//! // A live tail that survives server restarts, with no gap and no duplicate:
//! let mut tail = client.stream::<Order>("orders", seq, true);
//! while let Some(item) = tail.next().await {
//!     let (seq, order) = item?;
//!     println!("{seq}: {order:?}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Appends are retried for you, and written once
//!
//! Every [`append`](Client::append) and [`append_batch`](Client::append_batch) carries a
//! fresh random idempotency key (128 bits from the OS-seeded CSPRNG). A failure that may
//! be an outage (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, and a connection lost after the
//! request went out: `UNKNOWN`, `CANCELLED`, or any status tonic made from a transport
//! error) is retried with the same key, so an attempt that was written but whose answer
//! was lost is answered with its original sequence number, and nothing is written twice.
//! Waits between attempts double from 50 ms to 2 s
//! ([`reconnect_backoff`](ClientBuilder::reconnect_backoff)), each a random point in its
//! upper half; all attempts together take at most [`DEFAULT_RETRY_BUDGET`] (25 s, inside
//! [`FAILS_WITHIN`]; see [`retry_budget`](ClientBuilder::retry_budget)). After that the
//! append fails with [`ClientError::GaveUp`], whose key settles whether it was written.
//! A refusal (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, `ALREADY_EXISTS`, `ABORTED`, ...)
//! is never retried. [`append_with`](Client::append_with) takes a key of the caller's and
//! an `expected_last_seq`:
//!
//! ```no_run
//! use ministore_client::{AppendOptions, Client, Code};
//! # #[tokio::main]
//! # async fn main() -> Result<(), ministore_client::ClientError> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let options = AppendOptions::new().key("order-42").expected_last_seq(7);
//! match client.append_with("orders", &serde_json::json!({"id": 42}), options).await {
//!     Ok(appended) => println!("record {} (sent before: {})", appended.seq, appended.duplicate),
//!     Err(e) if e.code() == Some(Code::Aborted) => println!("the journal ends at {:?}", e.last_seq()),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod append;
mod coalesce;
mod connection;
mod error;
mod pipeline;
mod retry;
mod stream;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{InfoRequest, ListJournalsRequest, RecordFormat, ReplayRequest, record};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use append::{AppendOptions, Appended, AppendedBatch};
pub use connection::Connection;
pub use error::ClientError;
/// The generated gRPC messages and stubs (`ministore.v1`), for raw use.
pub use ministore::proto;
pub use retry::DEFAULT_RETRY_BUDGET;
pub use stream::{Event, EventStream, RecordStream};
/// gRPC status codes, as [`ClientError::code`] gives them: match on them without a
/// dependency on tonic.
pub use tonic::Code;

use coalesce::Coalescer;
use pipeline::Pipeline;
use retry::{Retry, new_key};

/// The generated stub over the client's connection.
pub(crate) type Rpc = JournalClient<InterceptedService<Connection, BearerToken>>;

/// Appends to one journal sent at once by default; more wait and share one AppendBatch.
pub const DEFAULT_APPENDS_IN_FLIGHT: usize = 2;

/// A connection to a ministore-server. Cheap to clone: clones share one HTTP/2 connection,
/// which carries any number of concurrent calls and reconnects by itself after a failure.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: Rpc,
    appends: Arc<Coalescer>,
    retry: Retry,
    reconnect: Backoff,
}

/// Adds `authorization: Bearer <token>` to every call, when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(***)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How a following stream, and an append, wait between attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

/// What a journal holds: see [`Client::info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalInfo {
    /// The oldest retained sequence number (`last_seq + 1` when the journal is empty).
    pub first_seq: u64,
    /// The last durable sequence number (0 when empty).
    pub last_seq: u64,
    /// Segment files on disk.
    pub segments: u32,
}

/// One journal of [`Client::list_journals`]: the generated message, with its name, retained
/// range, segments, bytes on disk, and `error` (empty unless its files could not be read).
pub use ministore::proto::JournalSummary;

/// One page of [`Client::list_journals`].
#[derive(Debug, Clone, PartialEq)]
pub struct JournalPage {
    /// The journals, sorted by name.
    pub journals: Vec<JournalSummary>,
    /// The token of the next page; `None` when this page is the last.
    pub next_page_token: Option<String>,
}

/// One page of [`Client::replay_page`].
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The records, in order.
    pub records: Vec<(u64, T)>,
    /// Where the next page starts.
    pub next_seq: u64,
    /// The journal's last durable sequence number when the page was read.
    pub last_seq: u64,
}

/// HTTP/2 keepalive pings of the default client: a ping after this long without a frame
/// from the server...
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...which the server must answer within this long, or the connection is closed and the
/// calls on it fail with `UNAVAILABLE` (retryable). So a call to a server that stopped
/// answering (frozen, a host that lost power, a dropped network path) fails within about
/// 20 s, and never later than [`FAILS_WITHIN`], without a deadline of the caller's.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The documented bound on how long a call to a server that stopped answering can hang
/// with the default options: keepalive interval and timeout, with room for scheduling. An
/// append, which retries an outage, gives up after [`DEFAULT_RETRY_BUDGET`] (25 s), inside
/// this bound too.
pub const FAILS_WITHIN: Duration = Duration::from_secs(30);

/// Options for [`Client`]: timeouts and reconnection.
///
/// ```no_run
/// use std::time::Duration;
/// # #[tokio::main]
/// # async fn main() -> Result<(), ministore_client::ClientError> {
/// let client = ministore_client::ClientBuilder::new("127.0.0.1:50051")
///     .connect_timeout(Duration::from_secs(2))
///     .timeout(Duration::from_secs(10))
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    reconnect: Backoff,
    keepalive: Option<(Duration, Duration)>,
    tls: Option<ClientTlsConfig>,
    token: Option<String>,
    appends_in_flight: usize,
    append_streams: bool,
    retry_budget: Duration,
}

impl ClientBuilder {
    /// Options for the server at `addr`: `host:port` or an `http://` URI.
    pub fn new(addr: impl Into<String>) -> Self {
        ClientBuilder {
            addr: addr.into(),
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            reconnect: Backoff {
                first: Duration::from_millis(50),
                max: Duration::from_secs(2),
            },
            keepalive: Some((DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT)),
            tls: None,
            token: None,
            appends_in_flight: DEFAULT_APPENDS_IN_FLIGHT,
            append_streams: true,
            retry_budget: DEFAULT_RETRY_BUDGET,
        }
    }

    /// HTTP/2 keepalive: a ping after `interval` without a frame from the server, which
    /// must be answered within `timeout` or the connection is closed and its calls fail
    /// with `UNAVAILABLE` (defaults [`DEFAULT_KEEPALIVE_INTERVAL`] and
    /// [`DEFAULT_KEEPALIVE_TIMEOUT`]). `None` turns it off: a call to a server that stopped
    /// answering then waits for its deadline ([`timeout`](Self::timeout)), if any.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = ministore_client::ClientBuilder::new("127.0.0.1:50051")
    ///     .keepalive(Some((Duration::from_secs(5), Duration::from_secs(5))));
    /// ```
    pub fn keepalive(mut self, ping: Option<(Duration, Duration)>) -> Self {
        self.keepalive = ping;
        self
    }

    /// Connects over TLS, trusting the CA certificate(s) in `ca_pem` (PEM). The server's
    /// certificate must name the host of the address, or the name given to
    /// [`tls_domain`](Self::tls_domain).
    pub fn tls_ca_pem(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.ca_certificate(Certificate::from_pem(ca_pem)));
        self
    }

    /// Like [`tls_ca_pem`](Self::tls_ca_pem), reading the CA from a file.
    pub fn tls_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, ClientError> {
        let pem = std::fs::read(path.as_ref()).map_err(|e| {
            ClientError::Config(format!(
                "cannot read CA file {}: {e}",
                path.as_ref().display()
            ))
        })?;
        Ok(self.tls_ca_pem(pem))
    }

    /// The name to expect in the server's certificate, when it differs from the host.
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.domain_name(name));
        self
    }

    /// A client certificate and key (PEM), for servers that require mutual TLS.
    pub fn tls_identity(mut self, cert_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.identity(Identity::from_pem(cert_pem, key_pem)));
        self
    }

    /// Sends `authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long to wait for the TCP connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline for each unary call (default: none). Streams are not limited by it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The backoff of a following stream that lost its connection, and of an append that
    /// failed with an outage: first delay, doubling up to `max` (defaults 50 ms and 2 s).
    /// An append waits a random time in the upper half of each delay (25-50 ms, 50-100 ms,
    /// ..., 1-2 s), so clients cut off together do not all come back at the same moment.
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.reconnect = Backoff { first, max };
        self
    }

    /// With [`append_streams(false)`](Self::append_streams): how many [`Client::append`]
    /// calls to one journal go out at once, each as its own `Append` RPC (default
    /// [`DEFAULT_APPENDS_IN_FLIGHT`]). Further concurrent appends to
    /// that journal wait for one of those to return and then go together, as one
    /// `AppendBatch`: one RPC and one fsync for all of them, each still answered with its
    /// own sequence number or error. 0 sends every append as its own RPC.
    ///
    /// ```
    /// let builder = ministore_client::ClientBuilder::new("127.0.0.1:50051").max_appends_in_flight(4);
    /// ```
    pub fn max_appends_in_flight(mut self, n: usize) -> Self {
        self.appends_in_flight = n;
        self
    }

    /// Whether [`Client::append`] and [`Client::append_with`] go on one `AppendStream` per
    /// journal (the default) rather than one `Append` RPC each. On a stream, concurrent
    /// appends share the server's group commits without per-call overhead and without
    /// waiting for each other; each is still answered, and retried, on its own. A client
    /// keeps at most 16 such streams open (one per journal appended to in the last 2 s);
    /// appends to further journals go as unary RPCs. With `false`, concurrent appends
    /// beyond [`max_appends_in_flight`](Self::max_appends_in_flight) share `AppendBatch`
    /// RPCs instead.
    ///
    /// ```
    /// let builder = ministore_client::ClientBuilder::new("127.0.0.1:50051").append_streams(false);
    /// ```
    pub fn append_streams(mut self, on: bool) -> Self {
        self.append_streams = on;
        self
    }

    /// How long an append keeps retrying an outage (default [`DEFAULT_RETRY_BUDGET`], 25 s),
    /// counted from its first attempt; an attempt still waiting for its answer when the
    /// budget runs out is cut short. Every attempt carries the same idempotency key, so
    /// retrying never writes a record twice. Once the budget is spent the append fails
    /// with [`ClientError::GaveUp`]. `Duration::ZERO`: one attempt, no retry (a failure
    /// that may be an outage is still [`GaveUp`](ClientError::GaveUp), with the key).
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = ministore_client::ClientBuilder::new("127.0.0.1:50051")
    ///     .retry_budget(Duration::from_secs(5));
    /// ```
    pub fn retry_budget(mut self, budget: Duration) -> Self {
        self.retry_budget = budget;
        self
    }

    /// Connects now, failing if the server cannot be reached.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let endpoint = self.endpoint()?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        self.client(channel)
    }

    /// A client that connects on first use (and reconnects as needed): for services that
    /// start before their journal server.
    pub fn connect_lazy(self) -> Result<Client, ClientError> {
        let channel = self.endpoint()?.connect_lazy();
        self.client(channel)
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let uri = if self.addr.contains("://") {
            self.addr.clone()
        } else if self.tls.is_some() {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| ClientError::InvalidAddress(format!("{}: {e}", self.addr)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(ministore::proto::STREAM_WINDOW)
            .initial_connection_window_size(ministore::proto::CONNECTION_WINDOW);
        if let Some(timeout) = self.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some((interval, timeout)) = self.keepalive {
            // While idle too: a follower waiting for records is exactly the call that would
            // otherwise wait for ever on a server that went away.
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| ClientError::Config(format!("{}: TLS: {e}", self.addr)))?;
        }
        Ok(endpoint)
    }

    fn client(&self, channel: Channel) -> Result<Client, ClientError> {
        let token = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::Config("the token is not printable ASCII".into()))?,
            ),
            None => None,
        };
        let connection = Connection::new(channel, &self.addr);
        let rpc = JournalClient::with_interceptor(connection, BearerToken(token))
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let retry = Retry {
            backoff: self.reconnect,
            budget: self.retry_budget,
            addr: self.addr.as_str().into(),
        };
        Ok(Client {
            appends: Arc::new(Coalescer::new(
                rpc.clone(),
                self.append_streams
                    .then(|| Pipeline::new(rpc.clone(), self.addr.as_str().into(), self.timeout)),
                retry.clone(),
                self.appends_in_flight,
            )),
            rpc,
            retry,
            reconnect: self.reconnect,
        })
    }
}

impl Client {
    /// Connects to the server at `addr` (`host:port` or `http://host:port`) with default
    /// options; see [`ClientBuilder`] for others.
    pub async fn connect(addr: impl Into<String>) -> Result<Client, ClientError> {
        ClientBuilder::new(addr).connect().await
    }

    /// The generated stub over this client's connection, for calls the typed layer does not
    /// cover.
    pub fn raw(&self) -> JournalClient<InterceptedService<Connection, BearerToken>> {
        self.rpc.clone()
    }

    /// Appends `record` to `journal` (created on first append; `""` is `default`) and
    /// returns its sequence number once it is durable.
    ///
    /// Safe to retry for you: the append carries a fresh random idempotency key, and an
    /// outage (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, a connection lost before the answer) is
    /// retried with that same key, with backoff, for up to the client's
    /// [`retry_budget`](ClientBuilder::retry_budget) (25 s by default). So the record is
    /// written once and the answer is its one sequence number, even when an attempt was
    /// written and its answer lost; or a definite refusal; or, once the budget is spent,
    /// [`ClientError::GaveUp`]. [`append_with`](Self::append_with) takes a key of your own
    /// and an expectation.
    ///
    /// Concurrent appends to one journal share one `AppendStream`: each is sent at once
    /// and answered as soon as it is durable, and records sent together share the
    /// server's fsyncs (see [`ClientBuilder::append_streams`] for the other way).
    ///
    /// # Errors
    /// [`ClientError::Encode`] if `record` does not serialize; [`ClientError::Rpc`] with the
    /// server's status for a refusal (e.g. `INVALID_ARGUMENT` for a bad journal name,
    /// `RESOURCE_EXHAUSTED` for an oversize record or a full disk);
    /// [`ClientError::GaveUp`] for an outage that outlasted the retry budget.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let seq = client.append("orders", &serde_json::json!({"id": 1})).await?;
    /// println!("stored as record {seq}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append<T: Serialize + ?Sized>(
        &self,
        journal: &str,
        record: &T,
    ) -> Result<u64, ClientError> {
        Ok(self
            .append_with(journal, record, AppendOptions::new())
            .await?
            .seq)
    }

    /// Appends `record` as `options` say: with the caller's idempotency key, so the record
    /// is written once however often any process sends it, and/or only if the journal's
    /// last sequence number is the one expected. Retried like [`append`](Self::append),
    /// with the caller's key (or a fresh one); such an append is its own request (on the
    /// journal's `AppendStream`, or its own `Append` RPC), never batched with others.
    ///
    /// # Errors
    /// As [`append`](Self::append), and: `ALREADY_EXISTS` if the key was used for another
    /// record (the message names its seq); `ABORTED` if the expectation did not hold, with
    /// the journal's last sequence number in [`ClientError::last_seq`]. Neither is retried.
    ///
    /// ```no_run
    /// use ministore_client::{AppendOptions, Code};
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let order = serde_json::json!({"id": 42});
    /// let options = AppendOptions::new().key("order-42").expected_last_seq(7);
    /// match client.append_with("orders", &order, options).await {
    ///     Ok(appended) if appended.duplicate => println!("already stored as {}", appended.seq),
    ///     Ok(appended) => println!("stored as {}", appended.seq),
    ///     Err(e) if e.code() == Some(Code::Aborted) => {
    ///         println!("someone else wrote first; the journal ends at {:?}", e.last_seq());
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_with<T: Serialize + ?Sized>(
        &self,
        journal: &str,
        record: &T,
        options: AppendOptions,
    ) -> Result<Appended, ClientError> {
        let payload = serde_json::to_vec(record).map_err(ClientError::Encode)?;
        self.appends.append(journal, payload, options).await
    }

    /// Appends `records` atomically (one fsync, all or none) and returns their sequence
    /// numbers. Retried like [`append`](Self::append): every attempt is the identical
    /// batch with one fresh key.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let seqs = client.append_batch("orders", &[1, 2, 3]).await?;
    /// assert_eq!(seqs.end() - seqs.start(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_batch<T: Serialize>(
        &self,
        journal: &str,
        records: &[T],
    ) -> Result<RangeInclusive<u64>, ClientError> {
        Ok(self
            .append_batch_with(journal, records, AppendOptions::new())
            .await?
            .seqs)
    }

    /// Appends `records` atomically as `options` say: one key and one expectation for the
    /// whole batch (see [`append_with`](Self::append_with)).
    ///
    /// ```no_run
    /// use ministore_client::AppendOptions;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let options = AppendOptions::new().key("import-2024-06-01");
    /// let batch = client.append_batch_with("orders", &[1, 2, 3], options).await?;
    /// println!("records {:?}, sent before: {}", batch.seqs, batch.duplicate);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_batch_with<T: Serialize>(
        &self,
        journal: &str,
        records: &[T],
        options: AppendOptions,
    ) -> Result<AppendedBatch, ClientError> {
        let payloads = records
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ClientError::Encode)?;
        let key = options.key.unwrap_or_else(new_key);
        append::append_many(
            &self.rpc,
            &self.retry,
            journal,
            payloads,
            &key,
            options.expected_last_seq,
            false,
        )
        .await
        .map_err(|(error, _)| error)
    }

    /// One page of records from `from_seq` (at most `limit`; 0 means the server's default).
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let mut next = 1;
    /// loop {
    ///     let page = client.replay_page::<serde_json::Value>("orders", next, 500).await?;
    ///     if page.records.is_empty() { break; }
    ///     next = page.next_seq;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn replay_page<T: DeserializeOwned>(
        &self,
        journal: &str,
        from_seq: u64,
        limit: u32,
    ) -> Result<Page<T>, ClientError> {
        let request = ReplayRequest {
            journal: journal.to_owned(),
            from_seq,
            limit,
            format: RecordFormat::Payload as i32,
        };
        let reply = self.rpc.clone().replay(request).await?.into_inner();
        let records = reply
            .records
            .into_iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        Ok(Page {
            records,
            next_seq: reply.next_seq,
            last_seq: reply.last_seq,
        })
    }

    /// Every record of `journal` from `from_seq` (0 or 1: from the oldest retained) up to
    /// the end as it was when the call started, fetching as many pages as needed.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let all: Vec<(u64, serde_json::Value)> = client.replay("orders", 1).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn replay<T: DeserializeOwned>(
        &self,
        journal: &str,
        from_seq: u64,
    ) -> Result<Vec<(u64, T)>, ClientError> {
        let mut out = Vec::new();
        let mut next = from_seq;
        let mut end = None;
        loop {
            let page = self.replay_page::<T>(journal, next, 0).await?;
            let end = *end.get_or_insert(page.last_seq);
            let done = page.records.is_empty();
            out.extend(page.records.into_iter().take_while(|(seq, _)| *seq <= end));
            next = page.next_seq;
            if done || next > end {
                return Ok(out);
            }
        }
    }

    /// Records of `journal` from `from_seq` as a stream. With `follow`, it stays open and
    /// yields records as they become durable; if the connection drops it reconnects with
    /// backoff and resumes after the last record it yielded, with no gap and no duplicate.
    /// Without `follow` it ends at the end of the journal.
    ///
    /// Dropping the stream cancels it.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// use tokio_stream::StreamExt;
    /// let mut tail = client.stream::<serde_json::Value>("orders", 1, true);
    /// while let Some(record) = tail.next().await {
    ///     let (seq, value) = record?;
    ///     println!("{seq}: {value}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream<T: DeserializeOwned>(
        &self,
        journal: &str,
        from_seq: u64,
        follow: bool,
    ) -> RecordStream<T> {
        stream::open(self.clone(), journal.to_owned(), from_seq, follow)
    }

    /// Like [`stream`](Self::stream), but says where the stream is too: each record with
    /// its commit time, [`Event::CaughtUp`] when a following stream has delivered every
    /// durable record (again after falling behind, and after a reconnect), and
    /// [`Event::Heartbeat`] after 30 s of silence, so a consumer can tell a quiet journal
    /// from a dead connection. Resumes across reconnects, with no gap and no duplicate
    /// record.
    ///
    /// ```no_run
    /// use ministore_client::{Client, Event};
    /// use tokio_stream::StreamExt;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// let client = Client::connect("127.0.0.1:50051").await?;
    /// let mut events = client.events::<serde_json::Value>("orders", 1, true);
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         Event::Record { seq, record, .. } => println!("{seq}: {record}"),
    ///         Event::CaughtUp { last_seq } => println!("live from {last_seq}"),
    ///         Event::Heartbeat { .. } => {}
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn events<T: DeserializeOwned>(
        &self,
        journal: &str,
        from_seq: u64,
        follow: bool,
    ) -> EventStream<T> {
        stream::open_events(self.clone(), journal.to_owned(), from_seq, follow)
    }

    /// The retained range of `journal`.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let info = client.info("orders").await?;
    /// println!("records {}..={}", info.first_seq, info.last_seq);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn info(&self, journal: &str) -> Result<JournalInfo, ClientError> {
        let reply = self
            .rpc
            .clone()
            .info(InfoRequest {
                journal: journal.to_owned(),
            })
            .await?
            .into_inner();
        Ok(JournalInfo {
            first_seq: reply.first_seq,
            last_seq: reply.last_seq,
            segments: reply.segments,
        })
    }
}

impl Client {
    /// One page of the server's journals, sorted by name: at most `page_size` (0 means the
    /// server's default, 100; at most 1000), after those of the page whose
    /// `next_page_token` is `page_token` (`None` for the first page). A token limited to
    /// some journals lists only those.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// let mut token = None;
    /// loop {
    ///     let page = client.list_journals(500, token.as_deref()).await?;
    ///     for journal in &page.journals {
    ///         println!("{}: records {}..={}", journal.name, journal.first_seq, journal.last_seq);
    ///     }
    ///     match page.next_page_token {
    ///         Some(next) => token = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_journals(
        &self,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<JournalPage, ClientError> {
        let reply = self
            .rpc
            .clone()
            .list_journals(ListJournalsRequest {
                page_size,
                page_token: page_token.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        Ok(JournalPage {
            journals: reply.journals,
            next_page_token: Some(reply.next_page_token).filter(|t| !t.is_empty()),
        })
    }

    /// Every journal of the server, sorted by name, fetching pages of 1000 until the last.
    /// A journal created meanwhile is included if its name sorts after the page being
    /// read when it was created.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), ministore_client::ClientError> {
    /// # let client = ministore_client::Client::connect("127.0.0.1:50051").await?;
    /// for journal in client.list_all_journals().await? {
    ///     println!("{} holds {} bytes", journal.name, journal.size_bytes);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_all_journals(&self) -> Result<Vec<JournalSummary>, ClientError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_journals(1000, token.as_deref()).await?;
            all.extend(page.journals);
            // Each token is a name after the last: the walk ends with the journals.
            match page.next_page_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                Some(next) => {
                    return Err(ClientError::Protocol(format!(
                        "the server gave the page token {next:?} twice"
                    )));
                }
                None => return Ok(all),
            }
        }
    }
}

/// A wire record as `(seq, T)`.
pub(crate) fn decode<T: DeserializeOwned>(record: proto::Record) -> Result<(u64, T), ClientError> {
    let seq = record.seq;
    let value = match record.body {
        Some(record::Body::Payload(bytes)) => serde_json::from_slice(&bytes),
        Some(record::Body::Value(_)) | None => {
            return Err(ClientError::Protocol(format!(
                "record {seq} arrived without a payload"
            )));
        }
    };
    value
        .map(|v| (seq, v))
        .map_err(|source| ClientError::Decode { seq, source })
}
