//! Stream: how fast one reader gets a large journal, how much memory the server uses for
//! it, and how soon the first record arrives when the reader starts in the middle.
//!
//! The server runs in a child process — this binary re-executed with `--serve-child`, which
//! runs `ministore_server::Server` as the `ministore-server` binary does (without its log
//! output) — so that its `/proc/<pid>/status` VmRSS counts the server alone, not the
//! client's buffers or the benchmark's. (Using `target/release/ministore-server` instead
//! would risk measuring a stale build: cargo does not rebuild it for this package.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ministore::proto::{RecordFormat, StreamRequest};
use ministore_client::Client;
use serde_json::value::RawValue;
use tokio_stream::StreamExt;

use crate::fill::{evict_page_cache, fill};
use crate::grpc_bench::BoxError;

/// The journal the stream reads.
const JOURNAL: &str = "stream";
/// Records per `append_json` when building it.
const FILL_BATCH: usize = 10_000;
/// No read of the journal may take longer than this: the benchmark always ends.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the server's RSS is sampled while streaming.
const RSS_EVERY: Duration = Duration::from_millis(5);
/// Tries of the time to the first record with a warm page cache; the median is reported.
const FIRST_RECORD_TRIES: usize = 5;

/// A number of records read in some time.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    /// Records received.
    pub records: u64,
    /// From the call to the end of the stream.
    pub elapsed: Duration,
}

impl Read {
    /// Records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything the Stream section measured.
#[derive(Debug)]
pub struct StreamResults {
    /// Records in the journal.
    pub records: u64,
    /// Journal bytes on disk.
    pub bytes: u64,
    /// How long building the journal took.
    pub fill: Duration,
    /// Read through `Client::stream` (typed: each record checked as JSON, a `Box<RawValue>`).
    pub client: Read,
    /// Read through the raw generated stub (`Client::raw`), no decoding beyond protobuf.
    pub raw: Read,
    /// Server VmRSS before streaming, bytes.
    pub rss_before: u64,
    /// Highest server VmRSS sampled while streaming, bytes.
    pub rss_peak: u64,
    /// The server's VmHWM at the end (the peak since it started, journal open included).
    pub rss_hwm: u64,
    /// Where the first-record reads start.
    pub from_seq: u64,
    /// Time to the first record from `from_seq`, page cache warm (median).
    pub first_warm: Duration,
    /// The same through the store library alone (`MiniStore::read_from(..).next_batch(1)`,
    /// no gRPC), page cache warm (median).
    pub first_store: Duration,
    /// Time to the first record from `from_seq` after the journal's pages were evicted.
    pub first_cold: Option<Duration>,
}

/// Builds a journal of `records` records in `dir`, serves it from a child process, and
/// reads it.
pub async fn run(dir: &Path, records: u64) -> Result<StreamResults, BoxError> {
    let data_dir = dir.join("stream-data");
    let journal_dir = data_dir.join(JOURNAL);
    let options = ministore_server::Config::with_data_dir(&data_dir).store_options();
    let fill_time = fill(
        &journal_dir.join("journal.jsonl"),
        options,
        records,
        FILL_BATCH,
    )
    .await?;
    let bytes = dir_bytes(&journal_dir)?;

    let child = ChildServer::start(&data_dir)?;
    let client = Client::connect(child.addr.clone()).await?;
    let info = client.info(JOURNAL).await?; // opens the journal in the server
    assert_eq!(
        info.last_seq, records,
        "the server must see the whole journal"
    );
    let rss_before = child.status_bytes("VmRSS").unwrap_or(0);

    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (sampling, peak, pid) = (sampling.clone(), peak.clone(), child.pid());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = proc_status_bytes(pid, "VmRSS") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(RSS_EVERY).await;
            }
        })
    };
    let read = async {
        let typed = tokio::time::timeout(READ_TIMEOUT, read_typed(&client, records)).await??;
        let raw = tokio::time::timeout(READ_TIMEOUT, read_raw(&client, records)).await??;
        Ok::<_, BoxError>((typed, raw))
    }
    .await;
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let (typed, raw) = read?;
    let rss_peak = peak.load(Ordering::Relaxed);

    let from_seq = records / 2 + 1;
    let mut tries = Vec::new();
    for _ in 0..FIRST_RECORD_TRIES {
        tries.push(first_record(&client, from_seq).await?);
    }
    tries.sort_unstable();
    let journal_path = journal_dir.join("journal.jsonl");
    let mut store_tries = Vec::new();
    for _ in 0..FIRST_RECORD_TRIES {
        let started = Instant::now();
        let batch = ministore::MiniStore::read_from(&journal_path, from_seq)
            .next_batch(1)
            .await?;
        store_tries.push(started.elapsed());
        if batch.first().map(|r| r.seq) != Some(from_seq) {
            return Err(format!("the store reader did not start at {from_seq}").into());
        }
    }
    store_tries.sort_unstable();
    let first_cold = match evict_page_cache(&journal_dir) {
        Ok(n) if n > 0 => Some(first_record(&client, from_seq).await?),
        _ => None,
    };
    let rss_hwm = child.status_bytes("VmHWM").unwrap_or(0);
    drop(client);
    child.stop();

    Ok(StreamResults {
        records,
        bytes,
        fill: fill_time,
        client: typed,
        raw,
        rss_before,
        rss_peak,
        rss_hwm,
        from_seq,
        first_warm: tries[tries.len() / 2],
        first_store: store_tries[store_tries.len() / 2],
        first_cold,
    })
}

/// The whole journal through the project's client, as an application would read it.
async fn read_typed(client: &Client, expected: u64) -> Result<Read, BoxError> {
    let started = Instant::now();
    let mut stream = client.stream::<Box<RawValue>>(JOURNAL, 1, false);
    let mut records = 0;
    while let Some(item) = stream.next().await {
        item?;
        records += 1;
    }
    let elapsed = started.elapsed();
    check_count(records, expected)?;
    Ok(Read { records, elapsed })
}

/// The whole journal through the generated stub: the server's and the transport's share.
async fn read_raw(client: &Client, expected: u64) -> Result<Read, BoxError> {
    let started = Instant::now();
    let request = StreamRequest {
        heartbeat_seconds: 0,
        journal: JOURNAL.into(),
        from_seq: 1,
        follow: false,
        format: RecordFormat::Payload as i32,
    };
    let mut stream = client.raw().stream(request).await?.into_inner();
    let mut records = 0;
    while stream.message().await?.is_some() {
        records += 1;
    }
    let elapsed = started.elapsed();
    check_count(records, expected)?;
    Ok(Read { records, elapsed })
}

fn check_count(read: u64, expected: u64) -> Result<(), BoxError> {
    if read != expected {
        return Err(format!("the stream delivered {read} records, not {expected}").into());
    }
    Ok(())
}

/// From the Stream call to the first record received, through the project's client.
async fn first_record(client: &Client, from_seq: u64) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut stream = client.stream::<Box<RawValue>>(JOURNAL, from_seq, false);
    let first = tokio::time::timeout(READ_TIMEOUT, stream.next())
        .await?
        .ok_or("the stream ended before its first record")??;
    let elapsed = started.elapsed();
    if first.0 != from_seq {
        return Err(format!("the first record is {}, not {from_seq}", first.0).into());
    }
    Ok(elapsed)
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A `/proc/<pid>/status` field in bytes (`VmRSS`, `VmHWM`: the kernel reports kB).
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// The server in a child process, stopped (gracefully: its stdin closes) when dropped.
pub(crate) struct ChildServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Where it listens.
    pub(crate) addr: String,
}

impl ChildServer {
    /// Starts `<this binary> --serve-child <data_dir>` and waits for its address.
    pub(crate) fn start(data_dir: &Path) -> Result<ChildServer, BoxError> {
        ChildServer::start_env(data_dir, &[])
    }

    /// Like [`start`](Self::start), with server flags given as their environment variables
    /// (`MINISTORE_MAX_STREAMS`, ...), which the child's configuration reads.
    pub(crate) fn start_env(
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<ChildServer, BoxError> {
        let exe: PathBuf = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .envs(env.iter().copied())
            .arg("--serve-child")
            .arg(data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        // Built first, so that the child is stopped by `Drop` if anything below fails.
        let mut server = ChildServer {
            child,
            stdin,
            addr: String::new(),
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().strip_prefix("listening on ") {
            Some(addr) => server.addr = addr.to_owned(),
            None => return Err(format!("the child server said {line:?}").into()),
        }
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn status_bytes(&self, field: &str) -> Option<u64> {
        proc_status_bytes(self.pid(), field)
    }

    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        drop(self.stdin.take()); // end of input: the child shuts down
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("the child server did not stop in 15 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child's side: serves `data_dir` on `127.0.0.1:0`, prints `listening on ADDR`, and
/// stops when its stdin closes (so it never outlives the benchmark).
pub async fn serve_child(data_dir: PathBuf) -> Result<(), BoxError> {
    use std::io::{Read as _, Write as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = ministore_server::Server::from_listener(
        ministore_server::Config::with_data_dir(data_dir),
        listener,
    )?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    server
        .run(async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut buf = [0u8; 64];
                while let Ok(n) = std::io::stdin().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        })
        .await?;
    Ok(())
}
