//! The service over loopback gRPC, driven through `ministore_client::Client`: many callers
//! sharing one connection, each calling in a loop until the deadline. The same driver
//! measures the no-op server ([`crate::noop`]) and the real one, so the two differ only by
//! what happens behind the RPC.

use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ministore_client::{Client, ClientError};
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
    Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
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
    Fut: Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    call().await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, ClientError>((latencies, Instant::now()))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut end = start;
    for task in tasks {
        let (latencies, finished) = task.await??;
        all.extend(latencies);
        end = end.max(finished);
    }
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Load {
        callers,
        calls: all.len() as u64,
        records_per_call,
        elapsed: end - start,
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// Append of one record to `journal` at each of [`CALLERS`], through `client`.
pub async fn appends(
    client: &Client,
    journal_prefix: &str,
    duration: Duration,
    warmup: Duration,
) -> Result<Vec<Load>, BoxError> {
    let record: Arc<RawValue> = Arc::from(record());
    let mut loads = Vec::new();
    for callers in CALLERS {
        let client = client.clone();
        let record = record.clone();
        let journal: Arc<str> = format!("{journal_prefix}-{callers}").into();
        let load = drive(callers, 1, duration, warmup, move || {
            let (client, record, journal) = (client.clone(), record.clone(), journal.clone());
            async move { client.append(&journal, &*record).await.map(|_| ()) }
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
        async move { client.append_batch(&journal, &records).await.map(|_| ()) }
    })
    .await
}

/// The no-op ceiling: Append at 1, 16 and 64 callers against [`crate::noop`].
pub async fn noop(duration: Duration, warmup: Duration) -> Result<Vec<Load>, BoxError> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, server) = crate::noop::spawn(async {
        let _ = stopped.await;
    })
    .await?;
    let client = Client::connect(addr.to_string()).await?;
    let loads = appends(&client, "noop", duration, warmup).await;
    drop(client);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), server).await??;
    loads
}

/// What the real server does: Append at 1, 16 and 64 callers, then AppendBatch at 64.
#[derive(Debug)]
pub struct ServerLoads {
    /// Append, one per entry of [`CALLERS`].
    pub appends: Vec<Load>,
    /// AppendBatch of [`BATCH`] at [`BATCH_CALLERS`].
    pub batch: Load,
}

/// The real server in this process (`Server::from_listener` on `127.0.0.1:0`, data in
/// `data_dir` on the disk under test), driven through the client.
pub async fn server(
    data_dir: &Path,
    duration: Duration,
    warmup: Duration,
) -> Result<ServerLoads, BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = ministore_server::Config::with_data_dir(data_dir);
    let server = ministore_server::Server::from_listener(config, listener)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let client = Client::connect(addr.to_string()).await?;
    let measured = async {
        let appends = appends(&client, "append", duration, warmup).await?;
        let batch = batches(&client, "batch", duration, warmup).await?;
        Ok::<_, BoxError>(ServerLoads { appends, batch })
    }
    .await;
    drop(client);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), running).await???;
    measured
}
