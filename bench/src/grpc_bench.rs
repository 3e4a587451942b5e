//! The service over loopback gRPC, driven through `ministore_client::Client`: many callers
//! sharing one connection, each calling in a loop until the deadline. The same driver
//! measures the no-op server ([`crate::noop`]) and the real one, so the two differ only by
//! what happens behind the RPC.

use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ministore::JsonLine;
use ministore_client::{Client, ClientBuilder};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::store_bench::RECORD_BYTES;

/// Errors that cross task boundaries.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// Callers counted for Append: one, some, many.
pub const CALLERS: [usize; 3] = [1, 16, 64];
/// Callers for AppendBatch.
pub const BATCH_CALLERS: usize = 64;
/// Records per AppendBatch call.
pub const BATCH: usize = 100;

/// The record every RPC sends: a JSON object of `RECORD_BYTES - 1` bytes, already compact,
/// so that with its newline it takes `RECORD_BYTES` on disk, like the raw measurement's.
pub fn record() -> Box<RawValue> {
    let head = r#"{"id":1234567,"user":"alice","item":"green tea","amount":12.50,"tags":["a","b"],"note":""#;
    let pad = RECORD_BYTES - 1 - head.len() - 2;
    let text = format!("{head}{}\"}}", "x".repeat(pad));
    assert_eq!(text.len(), RECORD_BYTES - 1);
    RawValue::from_string(text).expect("the record is valid JSON")
}

/// One load measurement: `callers` tasks calling in a loop for the same time.
#[derive(Debug, Clone)]
pub struct Load {
    /// Concurrent callers.
    pub callers: usize,
    /// Calls completed.
    pub calls: u64,
    /// Records per call.
    pub records_per_call: u64,
    /// From the start to the end of the last call.
    pub elapsed: Duration,
    /// Median call latency.
    pub p50: Duration,
    /// 99th percentile call latency.
    pub p99: Duration,
    /// CPU time of this whole process (client, server, kernel on their behalf) per call.
    pub cpu_per_call: Duration,
}

impl Load {
    /// Completed calls per second.
    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.calls_per_sec() * self.records_per_call as f64
    }
}

/// Runs `callers` tasks, each calling `call` in a loop until `duration` has passed, after a
/// short warm-up with the same callers (its figures are discarded).
pub async fn drive<F, Fut>(
    callers: usize,
    records_per_call: u64,
    duration: Duration,
    warmup: Duration,
    call: F,
) -> Result<Load, BoxError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let call = Arc::new(call);
    drive_once(callers, records_per_call, warmup, call.clone()).await?;
    drive_once(callers, records_per_call, duration, call).await
}

async fn drive_once<F, Fut>(
    callers: usize,
    records_per_call: u64,
    duration: Duration,
    call: Arc<F>,
) -> Result<Load, BoxError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Ok(drive_calls(callers, duration, call)
        .await?
        .into_load(callers, records_per_call))
}

/// What one stretch of calls took: each call's latency, the wall time, the process's CPU.
#[derive(Debug, Default)]
pub struct Calls {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
    pub cpu: Duration,
}

impl Calls {
    /// The [`Load`] of these calls, made by `callers` with `records_per_call` each.
    pub fn into_load(self, callers: usize, records_per_call: u64) -> Load {
        load_of(
            callers,
            records_per_call,
            self.elapsed,
            self.latencies,
            self.cpu,
        )
    }

    /// Adds `other`'s calls to these: one load measured in several stretches.
    pub fn extend(&mut self, other: Calls) {
        self.latencies.extend(other.latencies);
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
    }
}

/// Runs `callers` tasks, each calling `call` in a loop until `duration` has passed.
pub async fn drive_calls<F, Fut>(
    callers: usize,
    duration: Duration,
    call: Arc<F>,
) -> Result<Calls, BoxError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let cpu_before = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<Caller> = (0..callers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    call().await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, BoxError>((latencies, Instant::now()))
            })
        })
        .collect();
    let (latencies, end) = join_callers(tasks, start).await?;
    Ok(Calls {
        latencies,
        elapsed: end - start,
        cpu: process_cpu().saturating_sub(cpu_before),
    })
}

/// A caller task: its calls' latencies, and when it finished.
pub type Caller = tokio::task::JoinHandle<Result<(Vec<Duration>, Instant), BoxError>>;

/// Waits for every caller started at `start`: all their latencies, and when the last one
/// finished.
pub async fn join_callers(
    tasks: Vec<Caller>,
    start: Instant,
) -> Result<(Vec<Duration>, Instant), BoxError> {
    let mut all = Vec::new();
    let mut end = start;
    for task in tasks {
        let (latencies, finished) = task.await??;
        all.extend(latencies);
        end = end.max(finished);
    }
    Ok((all, end))
}

/// A [`Load`] from every call's latency, the wall time and the process's CPU time.
pub fn load_of(
    callers: usize,
    records_per_call: u64,
    elapsed: Duration,
    mut latencies: Vec<Duration>,
    cpu: Duration,
) -> Load {
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Load {
        callers,
        calls: latencies.len() as u64,
        records_per_call,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        cpu_per_call: cpu / (latencies.len().max(1) as u32),
    }
}

/// User plus system CPU time of this process so far, all threads.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes only into `usage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Append of one record at each of `callers_list`, through `client`, to a journal per
/// caller count.
pub async fn appends(
    client: &Client,
    journal_prefix: &str,
    callers_list: &[usize],
    duration: Duration,
    warmup: Duration,
) -> Result<Vec<Load>, BoxError> {
    let record: Arc<RawValue> = Arc::from(record());
    let mut loads = Vec::new();
    for &callers in callers_list {
        let client = client.clone();
        let record = record.clone();
        let journal: Arc<str> = format!("{journal_prefix}-{callers}").into();
        let load = drive(callers, 1, duration, warmup, move || {
            let (client, record, journal) = (client.clone(), record.clone(), journal.clone());
            async move {
                client.append(&journal, &*record).await?;
                Ok(())
            }
        })
        .await?;
        loads.push(load);
    }
    Ok(loads)
}

/// AppendBatch of [`BATCH`] records at [`BATCH_CALLERS`] callers.
pub async fn batches(
    client: &Client,
    journal: &str,
    duration: Duration,
    warmup: Duration,
) -> Result<Load, BoxError> {
    let records: Arc<[Box<RawValue>]> = (0..BATCH).map(|_| record()).collect();
    let client = client.clone();
    let journal: Arc<str> = journal.into();
    drive(BATCH_CALLERS, BATCH as u64, duration, warmup, move || {
        let (client, records, journal) = (client.clone(), records.clone(), journal.clone());
        async move {
            client.append_batch(&journal, &records).await?;
            Ok(())
        }
    })
    .await
}

/// Append through the client as it comes (concurrent appends beyond its in-flight limit
/// share an AppendBatch) at each of [`CALLERS`], then through a client that sends every
/// append as its own RPC at [`BATCH_CALLERS`].
#[derive(Debug, Clone)]
pub struct AppendLoads {
    /// One per entry of [`CALLERS`], through `Client::append` with its defaults.
    pub appends: Vec<Load>,
    /// [`BATCH_CALLERS`] callers, one `Append` RPC per call (`max_appends_in_flight(0)`).
    pub per_call: Load,
}

/// The project's client of `addr`, with `max_appends_in_flight(in_flight)`.
///
/// Its appends are unary RPCs (`append_streams(false)`), so that the store, noop and
/// server rows keep measuring what they always did; the `peers` section measures the
/// client's AppendStream.
async fn connect(addr: &str, in_flight: usize) -> Result<Client, BoxError> {
    Ok(ClientBuilder::new(addr)
        .append_streams(false)
        .max_appends_in_flight(in_flight)
        .connect()
        .await?)
}

/// Both kinds of [`AppendLoads`] against the server at `addr`, through `client`.
async fn append_loads(
    client: &Client,
    addr: &str,
    journal_prefix: &str,
    duration: Duration,
    warmup: Duration,
) -> Result<AppendLoads, BoxError> {
    let appends = appends(client, journal_prefix, &CALLERS, duration, warmup).await?;
    let per_call_client = connect(addr, 0).await?;
    let prefix = format!("{journal_prefix}-per-call");
    let mut per_call = self::appends(
        &per_call_client,
        &prefix,
        &[BATCH_CALLERS],
        duration,
        warmup,
    )
    .await?;
    Ok(AppendLoads {
        appends,
        per_call: per_call.pop().expect("one load"),
    })
}

/// The no-op ceiling: Append at 1, 16 and 64 callers against [`crate::noop`].
/// `in_flight` is the client's `max_appends_in_flight`.
pub async fn noop(
    duration: Duration,
    warmup: Duration,
    in_flight: usize,
) -> Result<AppendLoads, BoxError> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, server) = crate::noop::spawn(async {
        let _ = stopped.await;
    })
    .await?;
    let client = connect(&addr.to_string(), in_flight).await?;
    let loads = append_loads(&client, &addr.to_string(), "noop", duration, warmup).await;
    drop(client);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server).await??;
    loads
}

/// What the real server does: Append at 1, 16 and 64 callers, then AppendBatch at 64; and
/// its journal writer alone at 1 and 64 callers.
#[derive(Debug, Clone)]
pub struct ServerLoads {
    /// Append at each of [`CALLERS`], and one RPC per call at [`BATCH_CALLERS`].
    pub appends: AppendLoads,
    /// AppendBatch of [`BATCH`] at [`BATCH_CALLERS`].
    pub batch: Load,
    /// `Journals::append` without gRPC, at 1 and [`BATCH_CALLERS`] callers.
    pub writer: Vec<Load>,
}

/// The server's journal layer without gRPC: what an Append costs once the request is
/// decoded. Each call validates the record (`JsonLine::from_slice`, as the service does)
/// and awaits `Journal::append`: the queue to the journal's writer thread, its group commit
/// (write + fdatasync on that thread), the reply. The difference to the Append rows
/// is gRPC; the difference to `MiniStore::append` is the writer thread's hand-offs.
pub async fn writer(
    data_dir: &Path,
    duration: Duration,
    warmup: Duration,
) -> Result<Vec<Load>, BoxError> {
    let config = ministore_server::Config::with_data_dir(data_dir);
    let journals = Arc::new(ministore_server::Journals::new(
        data_dir,
        config.store_options(),
    ));
    let text: Arc<[u8]> = Arc::from(record().get().as_bytes());
    let mut loads = Vec::new();
    for callers in [1, BATCH_CALLERS] {
        let journal = journals.get(&format!("writer-{callers}"), true).await?;
        let text = text.clone();
        let load = drive(callers, 1, duration, warmup, move || {
            let (journal, text) = (journal.clone(), text.clone());
            async move {
                let line = JsonLine::from_slice(&text)?;
                journal.append(ministore::Append::new(vec![line])).await?;
                Ok(())
            }
        })
        .await?;
        loads.push(load);
    }
    journals.shut_down().await;
    Ok(loads)
}

/// The real server in this process (`Server::from_listener` on `127.0.0.1:0`, data in
/// `data_dir` on the disk under test), driven through the client.
pub async fn server(
    data_dir: &Path,
    duration: Duration,
    warmup: Duration,
    in_flight: usize,
) -> Result<ServerLoads, BoxError> {
    let (single, batch) = with_server(&data_dir.join("server"), in_flight, async |client, addr| {
        let single = append_loads(client, addr, "append", duration, warmup).await?;
        let batch = batches(client, "batch", duration, warmup).await?;
        Ok((single, batch))
    })
    .await?;
    let writer = writer(&data_dir.join("writer"), duration, warmup).await?;
    Ok(ServerLoads {
        appends: single,
        batch,
        writer,
    })
}

/// Runs `work` against the real server in this process, serving `data_dir` on a fresh
/// `127.0.0.1:0` listener, then shuts the server down.
pub(crate) async fn with_server<T>(
    data_dir: &Path,
    in_flight: usize,
    work: impl AsyncFnOnce(&Client, &str) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    let config = ministore_server::Config::with_data_dir(data_dir);
    with_server_config(config, in_flight, work).await
}

/// Like [`with_server`], with the server's whole `config` (a cluster backend, say).
pub(crate) async fn with_server_config<T>(
    config: ministore_server::Config,
    in_flight: usize,
    work: impl AsyncFnOnce(&Client, &str) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = ministore_server::Server::from_listener(config, listener)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = connect(&addr.to_string(), in_flight).await?;
    let result = work(&client, &addr.to_string()).await;
    drop(client);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), running).await???;
    result
}
