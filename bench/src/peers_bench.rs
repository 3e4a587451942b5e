//! Issue #17: `AppendStream` beside unary `Append`, the no-op server and the disk's own
//! fdatasync rate; the Rust client's two ways of sharing commits; a Python producer on
//! both RPCs; and the durable peers users would pick instead, on the same disk in the same
//! run when installed: etcd `Put` over gRPC (its WAL fsyncs with group commit) and Redis
//! `XADD` with `appendonly yes` and `appendfsync always`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{AppendRequest, append_request};
use ministore_client::ClientBuilder;
use tokio::sync::oneshot;

use crate::grpc_bench::{self, BoxError, Load};
use crate::store_bench::RECORD_BYTES;
use crate::table::{self, Table};

/// Concurrent callers, producers or clients of the "many" rows.
const MANY: usize = 64;

/// What the section measured.
#[derive(Debug)]
pub struct PeerResults {
    /// write + fdatasync of one 200-byte line, per second.
    pub raw_fsync: f64,
    /// Unary Append through the raw stub at 1 and [`MANY`] callers, real server.
    pub unary: Vec<Load>,
    /// The same at [`MANY`] callers against the no-op server.
    pub noop_unary: Load,
    /// [`MANY`] producers, each on its own AppendStream, real server.
    pub stream: Load,
    /// The same against the no-op server.
    pub noop_stream: Load,
    /// `Client::append` as it comes (one AppendStream per journal) at 1 and [`MANY`].
    pub client_stream: Vec<Load>,
    /// `Client::append` with `append_streams(false)` (coalescing into AppendBatch) at [`MANY`].
    pub client_batches: Load,
    /// Records/s of the Python producer on AppendStream and with one Append at a time,
    /// with grpcio's asyncio API and then its threads API; or why it did not run.
    pub python: Result<[(f64, f64); 2], String>,
    /// etcd Put at 1 and [`MANY`] clients; or why not.
    pub etcd: Result<Vec<Load>, String>,
    /// Redis XADD at 1 and [`MANY`] clients; or why not.
    pub redis: Result<Vec<Load>, String>,
}

/// Runs the section in `dir`.
pub async fn run(
    dir: &Path,
    duration: Duration,
    warmup: Duration,
) -> Result<PeerResults, BoxError> {
    std::fs::create_dir_all(dir)?;
    let raw_path = dir.join("raw.bin");
    let raw_fsync =
        tokio::task::spawn_blocking(move || raw_fsync_rate(&raw_path, duration)).await??;

    let record = grpc_bench::record().get().as_bytes().to_vec();
    let (noop_unary, noop_stream) = {
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, server) = crate::noop::spawn(async {
            let _ = stopped.await;
        })
        .await?;
        let url = format!("http://{addr}");
        let unary = unary(&url, "noop", MANY, &record, duration, warmup).await?;
        let stream = streams(&url, "noop-stream", MANY, &record, duration).await?;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(15), server).await??;
        (unary, stream)
    };

    let server_dir = dir.join("server");
    let (unary_rows, stream, client_stream, client_batches, python) =
        grpc_bench::with_server(&server_dir, 0, async |_client, addr| {
            let url = format!("http://{addr}");
            let mut unary_rows = Vec::new();
            for callers in [1, MANY] {
                let journal = format!("unary-{callers}");
                unary_rows.push(unary(&url, &journal, callers, &record, duration, warmup).await?);
            }
            let stream = streams(&url, "streams", MANY, &record, duration).await?;
            let mut client_stream = Vec::new();
            let client = ClientBuilder::new(addr).connect().await?;
            for callers in [1, MANY] {
                client_stream.push(
                    client_appends(
                        &client,
                        &format!("client-{callers}"),
                        callers,
                        duration,
                        warmup,
                    )
                    .await?,
                );
            }
            let coalescing = ClientBuilder::new(addr)
                .append_streams(false)
                .connect()
                .await?;
            let client_batches =
                client_appends(&coalescing, "client-batches", MANY, duration, warmup).await?;
            let python = python_producer(addr).await;
            Ok((unary_rows, stream, client_stream, client_batches, python))
        })
        .await?;

    let etcd = peer_loads(dir, Peer::Etcd, &record, duration, warmup).await;
    let redis = peer_loads(dir, Peer::Redis, &record, duration, warmup).await;
    Ok(PeerResults {
        raw_fsync,
        unary: unary_rows,
        noop_unary,
        stream,
        noop_stream,
        client_stream,
        client_batches,
        python,
        etcd,
        redis,
    })
}

/// write + fdatasync of one line per commit, on one thread: the disk's floor.
fn raw_fsync_rate(path: &Path, duration: Duration) -> std::io::Result<f64> {
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)?;
    let line = [b'x'; RECORD_BYTES];
    let (start, mut commits) = (Instant::now(), 0u64);
    while start.elapsed() < duration {
        file.write_all(&line)?;
        file.sync_data()?;
        commits += 1;
    }
    Ok(commits as f64 / start.elapsed().as_secs_f64())
}

fn append_request(journal: &str, record: &[u8]) -> AppendRequest {
    AppendRequest {
        journal: journal.to_owned(),
        record: Some(append_request::Record::Payload(record.to_vec())),
        ..Default::default()
    }
}

/// `callers` tasks, each calling the unary Append through the raw generated stub.
async fn unary(
    url: &str,
    journal: &str,
    callers: usize,
    record: &[u8],
    duration: Duration,
    warmup: Duration,
) -> Result<Load, BoxError> {
    let stub = JournalClient::connect(url.to_owned()).await?;
    let request = append_request(journal, record);
    grpc_bench::drive(callers, 1, duration, warmup, move || {
        let (mut stub, request) = (stub.clone(), request.clone());
        async move {
            stub.append(request).await?;
            Ok(())
        }
    })
    .await
}

/// `producers` tasks, each with its own AppendStream on one shared connection, sending
/// records as fast as the stream takes them for `duration`; records acknowledged per
/// second, and each record's time from being handed to the stream to its ack.
async fn streams(
    url: &str,
    journal: &str,
    producers: usize,
    record: &[u8],
    duration: Duration,
) -> Result<Load, BoxError> {
    let stub = JournalClient::connect(url.to_owned()).await?;
    let cpu_before = grpc_bench::process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<grpc_bench::Caller> = (0..producers)
        .map(|_| {
            let mut stub = stub.clone();
            let request = append_request(journal, record);
            tokio::spawn(async move {
                let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
                let stamps = sent.clone();
                // Sends until the deadline, then half-closes: every record sent is acked.
                let requests = tokio_stream::iter(std::iter::from_fn(move || {
                    let now = Instant::now();
                    (now < deadline).then(|| {
                        stamps.lock().unwrap().push_back(now);
                        request.clone()
                    })
                }));
                let mut acks = stub.append_stream(requests).await?.into_inner();
                let mut latencies = Vec::with_capacity(1 << 16);
                while let Some(ack) = acks.message().await? {
                    if let Some(error) = ack.error {
                        return Err::<_, BoxError>(error.message.into());
                    }
                    let sent_at = sent.lock().unwrap().pop_front().ok_or("an ack too many")?;
                    latencies.push(sent_at.elapsed());
                }
                Ok((latencies, Instant::now()))
            })
        })
        .collect();
    let (all, end) = grpc_bench::join_callers(tasks, start).await?;
    let cpu = grpc_bench::process_cpu().saturating_sub(cpu_before);
    Ok(grpc_bench::load_of(producers, 1, end - start, all, cpu))
}

/// `callers` tasks calling `Client::append` in a loop.
async fn client_appends(
    client: &ministore_client::Client,
    journal: &str,
    callers: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<Load, BoxError> {
    let record: Arc<serde_json::value::RawValue> = grpc_bench::record().into();
    let (client, journal) = (client.clone(), Arc::<str>::from(journal));
    grpc_bench::drive(callers, 1, duration, warmup, move || {
        let (client, journal, record) = (client.clone(), journal.clone(), record.clone());
        async move {
            client.append(&journal, &*record).await?;
            Ok(())
        }
    })
    .await
}

/// Runs `tests/python/stream_producer.py` against the server at `addr`, on AppendStream and
/// then one unary Append at a time, with asyncio and then with threads; the records per
/// second of each.
async fn python_producer(addr: &str) -> Result<[(f64, f64); 2], String> {
    let root = ministore_tests::tools::workspace_root();
    let python = root.join(".tools/venv/bin/python");
    if !python.is_file() {
        return Err(format!(
            "no {} (the tests install it: `cargo test -p ministore-tests --test python_client`)",
            python.display()
        ));
    }
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || {
        let stubs = ministore_tests::tools::python_stubs_with(&python)?;
        let rate = |mode: &[&str], count: &str| -> Result<f64, String> {
            let out = Command::new(&python)
                .arg(root.join("tests/python/stream_producer.py"))
                .args([addr.as_str(), "python", count])
                .args(mode)
                .env("PYTHONPATH", stubs.path())
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let line: serde_json::Value =
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
            let records = line["records"].as_f64().unwrap_or(0.0);
            let seconds = line["seconds"].as_f64().unwrap_or(f64::INFINITY);
            Ok(records / seconds)
        };
        Ok([
            (rate(&["aio"], "20000")?, rate(&["aio-unary"], "2000")?),
            (rate(&[], "20000")?, rate(&["unary"], "2000")?),
        ])
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A durable peer, started by the benchmark on loopback with its data on the disk under test.
#[derive(Debug, Clone, Copy)]
enum Peer {
    Etcd,
    Redis,
}

impl Peer {
    fn binary(self) -> &'static str {
        match self {
            Peer::Etcd => "etcd",
            Peer::Redis => "redis-server",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Peer::Etcd => "etcd-server",
            Peer::Redis => "redis-server",
        }
    }
}

/// Kills the peer's process when the measurement ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port: bound, read, released (the peer binds it next).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Finds `name` on PATH (Debian puts redis-server and etcd in /usr/bin).
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Starts `peer` with its data in `dir` and measures it at 1 and [`MANY`] clients.
async fn peer_loads(
    dir: &Path,
    peer: Peer,
    record: &[u8],
    duration: Duration,
    warmup: Duration,
) -> Result<Vec<Load>, String> {
    let Some(binary) = which(peer.binary()) else {
        return Err(format!(
            "{} is not installed (`apt-get install {}` adds its rows)",
            peer.binary(),
            peer.package()
        ));
    };
    let data = dir.join(peer.binary());
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = Command::new(&binary);
    match peer {
        Peer::Etcd => {
            let peer_port = free_port().map_err(|e| e.to_string())?;
            let client_url = format!("http://{addr}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            command
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")]);
        }
        Peer::Redis => {
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&data)
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--save", "", "--protected-mode", "no"]);
        }
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let _running = Running(child);
    let ready = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > ready {
            return Err(format!(
                "{} did not listen on {addr} within 20 s",
                peer.binary()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut loads = Vec::new();
    for clients in [1, MANY] {
        let load = match peer {
            Peer::Etcd => etcd_puts(addr, clients, record, duration, warmup).await,
            Peer::Redis => redis_xadds(addr, clients, record, duration, warmup).await,
        };
        loads.push(load.map_err(|e| format!("{}: {e}", peer.binary()))?);
    }
    Ok(loads)
}

/// etcd's `KV.Put` request: the two fields the benchmark sets (etcd's
/// `etcdserverpb.PutRequest`, fields 1 and 2).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse`: its fields are not read.
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {}

/// `clients` tasks on one HTTP/2 connection, each a unary `Put` of a 200-byte value under a
/// key of its own in a loop: the load pattern of the unary Append rows.
async fn etcd_puts(
    addr: SocketAddr,
    clients: usize,
    record: &[u8],
    duration: Duration,
    warmup: Duration,
) -> Result<Load, BoxError> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let record = record.to_vec();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    grpc_bench::drive(clients, 1, duration, warmup, move || {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = PutRequest {
            key: format!("bench/{n}").into_bytes(),
            value: record.clone(),
        };
        async move {
            grpc.ready().await?;
            let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
            let codec = tonic_prost::ProstCodec::<PutRequest, PutResponse>::default();
            grpc.unary(tonic::Request::new(request), path, codec)
                .await?;
            Ok(())
        }
    })
    .await
}

/// `clients` connections, each an `XADD` of a 200-byte field in a loop, waiting for each
/// reply (Redis answers once `appendfsync always` has fsynced its AOF).
async fn redis_xadds(
    addr: SocketAddr,
    clients: usize,
    record: &[u8],
    duration: Duration,
    warmup: Duration,
) -> Result<Load, BoxError> {
    let command = {
        let mut c = Vec::new();
        let args: [&[u8]; 5] = [b"XADD", b"bench", b"*", b"d", record];
        write!(c, "*{}\r\n", args.len())?;
        for arg in args {
            write!(c, "${}\r\n", arg.len())?;
            c.extend_from_slice(arg);
            c.extend_from_slice(b"\r\n");
        }
        Arc::new(c)
    };
    // One blocking connection per client, kept in a pool the calls take from.
    let pool: Arc<Mutex<Vec<BufReader<TcpStream>>>> = Arc::default();
    for _ in 0..clients {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        pool.lock().unwrap().push(BufReader::new(stream));
    }
    grpc_bench::drive(clients, 1, duration, warmup, move || {
        let (pool, command) = (pool.clone(), command.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.lock().unwrap().pop().ok_or("no free connection")?;
                conn.get_mut().write_all(&command)?;
                let mut line = String::new();
                conn.read_line(&mut line)?;
                match line.as_bytes().first() {
                    // A bulk string: the entry's id, then its bytes.
                    Some(b'$') => {
                        let n: usize = line[1..].trim().parse()?;
                        let mut id = vec![0; n + 2];
                        conn.read_exact(&mut id)?;
                    }
                    _ => return Err::<(), BoxError>(format!("XADD answered {line:?}").into()),
                }
                pool.lock().unwrap().push(conn);
                Ok(())
            })
            .await??;
            Ok(())
        }
    })
    .await
}

/// The section as a table, with its targets.
pub fn table(r: &PeerResults) -> Table {
    let mut t = Table::new([
        "streaming appends and peers (#17)",
        "figure",
        "beside",
        "ratio",
        "target",
    ]);
    let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
    let unary_many = &r.unary[1];
    let peer_at =
        |peer: &Result<Vec<Load>, String>, i: usize| peer.as_ref().ok().map(|l| l[i].clone());
    let etcd_many = peer_at(&r.etcd, 1);
    let redis_many = peer_at(&r.redis, 1);
    t.row([
        format!("unary Append, {MANY} callers, one RPC each (/s)"),
        table::rate(unary_many.calls_per_sec()),
        format!("{} no-op server", table::rate(r.noop_unary.calls_per_sec())),
        ratio(unary_many.calls_per_sec(), r.noop_unary.calls_per_sec()),
        verdict(
            unary_many.calls_per_sec() >= 0.8 * r.noop_unary.calls_per_sec(),
            ">= 0.80x no-op",
        ),
    ]);
    match &etcd_many {
        Some(etcd) => t.row([
            "  beside etcd Put, same load".to_string(),
            table::rate(unary_many.calls_per_sec()),
            format!("{} etcd", table::rate(etcd.calls_per_sec())),
            ratio(unary_many.calls_per_sec(), etcd.calls_per_sec()),
            verdict(
                unary_many.calls_per_sec() >= 2.0 * etcd.calls_per_sec(),
                ">= 2x etcd",
            ),
        ]),
        None => t.row([
            "  beside etcd Put".to_string(),
            String::new(),
            "not run".into(),
            String::new(),
            "n/a >= 2x etcd".into(),
        ]),
    }
    t.row([
        format!("AppendStream, {MANY} producers (records/s)"),
        table::rate(r.stream.records_per_sec()),
        format!("{} raw fdatasync", table::rate(r.raw_fsync)),
        ratio(r.stream.records_per_sec(), r.raw_fsync),
        verdict(
            r.stream.records_per_sec() >= 10.0 * r.raw_fsync,
            ">= 10x raw",
        ),
    ]);
    match &redis_many {
        Some(redis) => t.row([
            format!("  beside Redis XADD appendfsync always, {MANY} clients"),
            table::rate(r.stream.records_per_sec()),
            format!("{} Redis", table::rate(redis.calls_per_sec())),
            ratio(r.stream.records_per_sec(), redis.calls_per_sec()),
            verdict(
                r.stream.records_per_sec() >= 1.5 * redis.calls_per_sec(),
                ">= 1.5x Redis",
            ),
        ]),
        None => t.row([
            "  beside Redis XADD".to_string(),
            String::new(),
            "not run".into(),
            String::new(),
            "n/a >= 1.5x Redis".into(),
        ]),
    }
    t.row([
        "  AppendStream on the no-op server (ceiling)".to_string(),
        table::rate(r.noop_stream.records_per_sec()),
        String::new(),
        ratio(r.stream.records_per_sec(), r.noop_stream.records_per_sec()),
        String::new(),
    ]);
    let one = &r.client_stream[0];
    let peers_p50: Vec<(String, Duration)> = [("etcd", &r.etcd), ("Redis", &r.redis)]
        .into_iter()
        .filter_map(|(name, loads)| loads.as_ref().ok().map(|l| (name.to_string(), l[0].p50)))
        .collect();
    t.row([
        "Client::append, 1 caller, p50".to_string(),
        table::duration(one.p50),
        peers_p50
            .iter()
            .map(|(n, p)| format!("{} {n}", table::duration(*p)))
            .collect::<Vec<_>>()
            .join(", "),
        String::new(),
        match peers_p50.is_empty() {
            true => "n/a <= peers' p50".to_string(),
            false => verdict(
                peers_p50.iter().all(|(_, p)| one.p50 <= *p),
                "<= peers' p50",
            ),
        },
    ]);
    t.row([
        "  unary Append (raw stub), 1 caller, p50".to_string(),
        table::duration(r.unary[0].p50),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let many = &r.client_stream[1];
    t.row([
        format!("Client::append, {MANY} callers, on AppendStream (/s)"),
        table::rate(many.calls_per_sec()),
        format!(
            "{} coalescing into AppendBatch",
            table::rate(r.client_batches.calls_per_sec())
        ),
        ratio(many.calls_per_sec(), r.client_batches.calls_per_sec()),
        String::new(),
    ]);
    match &r.python {
        Ok([(stream, unary), (threads_stream, threads_unary)]) => {
            // The target is asyncio's own ratio; the threads API's and the cross one beside it.
            let target = verdict(*stream >= 5.0 * unary, ">= 5x");
            for (name, streamed, one_by_one, verdict) in [
                (
                    "Python producer on AppendStream, asyncio (records/s)",
                    stream,
                    unary,
                    target,
                ),
                (
                    "  same, threads API",
                    threads_stream,
                    threads_unary,
                    String::new(),
                ),
                (
                    "  asyncio stream vs threads unary",
                    stream,
                    threads_unary,
                    String::new(),
                ),
            ] {
                t.row([
                    name.to_string(),
                    table::rate(*streamed),
                    format!("{} one Append at a time", table::rate(*one_by_one)),
                    ratio(*streamed, *one_by_one),
                    verdict,
                ]);
            }
        }
        Err(why) => t.row([
            "Python producer".to_string(),
            String::new(),
            format!("not run: {why}"),
            String::new(),
            "n/a >= 5x".into(),
        ]),
    }
    for (name, loads) in [("etcd Put", &r.etcd), ("Redis XADD", &r.redis)] {
        match loads {
            Ok(loads) => {
                for l in loads {
                    t.row([
                        format!("peer: {name}, {} client(s) (/s)", l.callers),
                        table::rate(l.calls_per_sec()),
                        format!("p50 {}", table::duration(l.p50)),
                        String::new(),
                        String::new(),
                    ]);
                }
            }
            Err(why) => t.row([
                format!("peer: {name}"),
                String::new(),
                format!("skipped: {why}"),
                String::new(),
                String::new(),
            ]),
        }
    }
    t
}

fn verdict(pass: bool, target: &str) -> String {
    format!("{} {target}", if pass { "PASS" } else { "MISS" })
}
