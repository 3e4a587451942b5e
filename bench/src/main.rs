//! `ministore-bench`: the service measured against what this machine can do, in one run.
//!
//! ```text
//! cargo run --release -p ministore-bench -- [--dir DIR] [--seconds N] [--rounds N] [--quick]
//!                                           [--only store,noop,server,stream,open,keys,peers,
//!                                                   journals,followers,offload]
//!                                           [--markdown]
//! ```
//!
//! One table, every figure from the same run:
//! - `store`: the disk's raw single-thread `write` + `fdatasync` of 200-byte records, beside
//!   `MiniStore::append` and `append_batch`;
//! - `noop`: the ceiling of gRPC itself: an in-bench tonic server whose Append answers at
//!   once, at 1, 16 and 64 callers sharing one connection (one `ministore_client::Client`);
//! - `server`: the real server in this process, durable Append at 1, 16, 64 callers and
//!   AppendBatch of 100 at 64, through the same client;
//! - `stream`: one reader of a 1,000,000-record journal, the server's RSS meanwhile (the
//!   server in a child process), and the time to the first record from the middle;
//! - `open`: opening a journal of ~1 GiB of segments;
//! - `keys`: what retry safety costs: Append with an idempotency key beside without, at 1
//!   and 64 callers; raw fdatasync of two files per commit beside one; opening a journal of
//!   1,000,000 keys, and the memory per key (its own table, after the main one);
//! - `journals`, `followers`, `offload` (issue #17, item 3): 10,000 journals (threads, RSS,
//!   descriptors per journal, Append latency spread over them), 10,000 idle followers (RSS
//!   each, fan-out time of a burst), Append p99 while 16 MiB batches are checked.
//!
//! The targets of issue #6 are printed beside the figures they judge, each PASS or MISS.
//! Everything happens on loopback, in a temporary directory made inside `--dir` (default:
//! the current directory, on the disk you care about; `/tmp` is often tmpfs, where fsync
//! costs nothing) and removed afterwards; every loop is bounded by time or count.

mod cluster_bench;
mod fill;
mod grpc_bench;
mod keys_bench;
mod noop;
mod open_bench;
mod peers_bench;
mod report;
mod rounds;
mod scale_bench;
mod store_bench;
mod stream_bench;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use grpc_bench::BoxError;
use report::Results;

// The same allocator as the `ministore-server` binary, so that the in-process server measured
// here is the one users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmarks ministore (store, gRPC server, stream, open) against raw write+fdatasync and a no-op gRPC server"
)]
struct Args {
    /// Directory to benchmark in: a temporary directory is made inside it and removed
    /// afterwards. Default: the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per measurement, split between its rounds (default 3; 0.5 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// A fast smoke run: short measurements, a 100,000-record stream journal and a
    /// 128 MiB journal to open (the table says so).
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma-separated). Ratios to a section not run show n/a.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// The client's max_appends_in_flight in the Append rows: appends per journal sent at
    /// once, each its own RPC, before further ones wait and share an AppendBatch.
    #[arg(long, value_name = "N", default_value_t = ministore_client::DEFAULT_APPENDS_IN_FLIGHT)]
    appends_in_flight: usize,
    /// Rounds of the store, noop and server sections: each runs this many times in turn,
    /// `--seconds` split between its rounds, and every row keeps its median round, so a
    /// few seconds of disturbance spoil one round, not a ratio.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Also print the table as Markdown (for the README).
    #[arg(long)]
    markdown: bool,
    /// Internal: serve DATA_DIR on 127.0.0.1:0 until stdin closes (the stream section's
    /// server process).
    #[arg(long, hide = true, value_name = "DATA_DIR")]
    serve_child: Option<PathBuf>,
}

/// The parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Raw write+fdatasync, MiniStore::append, append_batch.
    Store,
    /// The no-op gRPC server.
    Noop,
    /// The real server: Append and AppendBatch.
    Server,
    /// Stream, server RSS, first record from the middle.
    Stream,
    /// Open time of a ~1 GiB journal.
    Open,
    /// Appends with and without idempotency keys; open time and memory with 1M keys.
    Keys,
    /// Append through ministore-server on a 3-node JetStream cluster it starts, beside the
    /// local store and raw JetStream publish-with-ack.
    Cluster,
    /// 10,000 journals: threads, RSS and descriptors per journal, Append latency.
    Journals,
    /// 10,000 idle followers: RSS each, fan-out of a burst.
    Followers,
    /// Append p99 while another client sends 16 MiB batches.
    Offload,
    /// AppendStream beside unary Append, the Rust client's two ways, a Python producer,
    /// and etcd and Redis when installed.
    Peers,
}

/// Records in the stream section's journal.
const STREAM_RECORDS: u64 = 1_000_000;
const QUICK_STREAM_RECORDS: u64 = 100_000;
/// Bytes of the journal the open section opens.
const OPEN_BYTES: u64 = 1 << 30;
const QUICK_OPEN_BYTES: u64 = 128 << 20;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.serve_child.clone() {
        Some(data_dir) => stream_bench::serve_child(data_dir).await,
        None => run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ministore-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let seconds = args.seconds.unwrap_or(if args.quick { 0.5 } else { 3.0 });
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("--seconds must be a positive number, not {seconds}").into());
    }
    let wanted = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent)?;
    let dir = tempfile::Builder::new()
        .prefix("ministore-bench-")
        .tempdir_in(&parent)?;
    let fs = filesystem(dir.path());
    if fs == "tmpfs" {
        eprintln!(
            "warning: {} is on tmpfs: fdatasync costs nothing there, so these figures say nothing about a disk; pass --dir on one",
            parent.display()
        );
    }
    let duration = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_millis(if args.quick { 100 } else { 300 });
    let load_before = loadavg();
    println!(
        "ministore benchmark: {}-byte JSON records, {seconds} s per measurement ({} rounds of the store, noop and server sections, each row its median round){}, in {} ({fs})",
        store_bench::RECORD_BYTES,
        args.rounds,
        if args.quick {
            " (--quick: smaller sizes)"
        } else {
            ""
        },
        std::path::absolute(dir.path())?.display(),
    );
    println!(
        "machine: {}; load average at start: {load_before}",
        machine()
    );
    println!();

    let mut results = Results::default();
    let (mut store, mut noop, mut server) = (Vec::new(), Vec::new(), Vec::new());
    let slice = duration / args.rounds;
    for round in 1..=args.rounds {
        let of = format!("round {round} of {}", args.rounds);
        let round_dir = dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&round_dir)?;
        if wanted(Section::Store) {
            progress(&format!(
                "store ({of}): raw write+fdatasync (appending, then over zeros), MiniStore::append, append_batch"
            ));
            store.push(
                store_bench::run(&round_dir, slice)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        if wanted(Section::Noop) {
            progress(&format!(
                "noop ({of}): no-op gRPC server at 1, 16, 64 callers"
            ));
            noop.push(grpc_bench::noop(slice, warmup, args.appends_in_flight).await?);
        }
        if wanted(Section::Server) {
            progress(&format!(
                "server ({of}): durable Append at 1, 16, 64 callers; AppendBatch at 64"
            ));
            server.push(
                grpc_bench::server(
                    &round_dir.join("server-data"),
                    slice,
                    warmup,
                    args.appends_in_flight,
                )
                .await?,
            );
        }
    }
    results.store = rounds::store(&store);
    results.noop = rounds::noop(&noop);
    results.server = rounds::server(&server);
    if wanted(Section::Stream) {
        let records = if args.quick {
            QUICK_STREAM_RECORDS
        } else {
            STREAM_RECORDS
        };
        progress(&format!(
            "stream: building a journal of {records} records, then reading it"
        ));
        results.stream = Some(stream_bench::run(dir.path(), records).await?);
    }
    if wanted(Section::Open) {
        let bytes = if args.quick {
            QUICK_OPEN_BYTES
        } else {
            OPEN_BYTES
        };
        progress(&format!(
            "open: building a journal of {} MiB, then opening it",
            bytes >> 20
        ));
        results.open = Some(open_bench::run(dir.path(), bytes).await?);
    }
    let keys = if wanted(Section::Keys) {
        let keys = if args.quick {
            keys_bench::QUICK_KEYS
        } else {
            keys_bench::KEYS
        };
        progress(&format!(
            "keys: Append with and without a key at 1 and 64 callers; raw fdatasync of two files; open with {keys} keys"
        ));
        Some(keys_bench::run(&dir.path().join("keys"), duration, warmup, keys).await?)
    } else {
        None
    };
    let cluster = if wanted(Section::Cluster) {
        progress(
            "cluster: Append at 1 and 64 callers, local store vs a 3-node JetStream cluster vs raw JetStream publish",
        );
        Some(
            cluster_bench::run(
                &dir.path().join("cluster"),
                duration,
                warmup,
                args.appends_in_flight,
            )
            .await?,
        )
    } else {
        None
    };
    let many = if args.quick {
        scale_bench::QUICK_MANY
    } else {
        scale_bench::MANY
    };
    if wanted(Section::Journals) {
        progress(&format!(
            "journals: Append to one journal, then {many} journals created, then Append spread over them"
        ));
        results.journals = Some(scale_bench::journals(dir.path(), many, duration, warmup).await?);
    }
    if wanted(Section::Followers) {
        progress(&format!(
            "followers: {many} following streams, then a burst of appends to all of them"
        ));
        results.followers = Some(scale_bench::followers(dir.path(), many).await?);
    }
    if wanted(Section::Offload) {
        progress("offload: Append at 1 caller alone, and while 16 MiB batches are sent, in turns");
        results.offload = Some(scale_bench::offload(dir.path(), duration, warmup).await?);
    }
    let peers = if wanted(Section::Peers) {
        progress(
            "peers: AppendStream and unary Append at 1 and 64; the client's two ways; a Python producer; etcd and Redis if installed",
        );
        Some(peers_bench::run(&dir.path().join("peers"), duration, warmup).await?)
    } else {
        None
    };
    let load_after = loadavg();

    let table = report::table(&results, args.quick);
    // The main table, unless only the sections with tables of their own ran.
    let main_table = [
        Section::Store,
        Section::Noop,
        Section::Server,
        Section::Stream,
        Section::Open,
        Section::Journals,
        Section::Followers,
        Section::Offload,
    ]
    .into_iter()
    .any(wanted);
    if main_table {
        println!();
        print!("{}", table.render());
    }
    println!();
    println!("load average at end: {load_after}");
    if main_table {
        for note in notes(&results, args.appends_in_flight) {
            println!("- {note}");
        }
    }
    if let Some(keys) = &keys {
        println!();
        print!("{}", keys_bench::table(keys).render());
        println!(
            "- Append rows: the raw stub (no client coalescing, no client retries), one Append RPC per call, to the real server in this process; \"with a key\" sends a unique 36-byte key per call. Each row is the best of 4 runs of half the measurement time, interleaved with the other variant's"
        );
        println!(
            "- open: the journal was written with one key per 200-byte record, in commits of {} requests; median of 3 opens; memory per key = the key index's heap (its map's buckets and its queue, from their capacities) over the keys",
            1000
        );
    }
    if let Some(cluster) = &cluster {
        println!();
        print!("{}", cluster_bench::table(cluster).render());
        println!(
            "- Append rows through Client::append as it comes (a journal's appends share one AppendStream); \"one unary RPC each\": append_streams(false), max_appends_in_flight(0); the cluster is 3 nats-server 2.15.1 on this machine's loopback with sync_interval: always, so all three fsync on the same disk"
        );
    }
    if let Some(peers) = &peers {
        println!();
        print!("{}", peers_bench::table(peers).render());
        println!(
            "- all rows at 200-byte records to one journal (one etcd key per Put, one Redis stream); peers run on loopback with their data beside ours, started and stopped by the benchmark. Latency of an AppendStream row: from a record's hand-over to the stream to its ack"
        );
    }
    if args.markdown {
        if main_table {
            println!();
            print!("{}", table.render_markdown());
        }
        if let Some(cluster) = &cluster {
            println!();
            print!("{}", cluster_bench::table(cluster).render_markdown());
        }
        if let Some(peers) = &peers {
            println!();
            print!("{}", peers_bench::table(peers).render_markdown());
        }
        if let Some(keys) = &keys {
            println!();
            print!("{}", keys_bench::table(keys).render_markdown());
        }
    }
    Ok(())
}

/// What the reader of the table needs to know about how figures were taken.
fn notes(results: &Results, appends_in_flight: usize) -> Vec<String> {
    let mut notes = vec![
        "records: a 199-byte JSON object (200 bytes on disk with its newline); raw = one thread, write + fdatasync of 200 bytes appended to a plain file (every ratio \"x raw\" is to this); \"raw, over zeros written ahead\" = the same over zeros written and fsynced beforehand, so no fdatasync commits a size change: what ministore does by preallocating its active segment".into(),
        "gRPC rows: all callers share one connection (one ministore_client::Client, cloned); client and server (in this process) share its tokio runtime; each measurement follows a discarded warm-up; p50/p99 per call; CPU/call = this process's user+system CPU time (client and server together) over the calls".into(),
        format!("Append rows call Client::append with max_appends_in_flight({}) (--appends-in-flight): that many appends per journal on the wire at once, each its own Append RPC; further concurrent ones wait and share one AppendBatch. \"one RPC each\" rows use max_appends_in_flight(0): every call its own Append RPC", appends_in_flight),
        "writer only: ministore_server::Journals::append called directly (JSON validation, the journal's writer thread, group commit), no gRPC".into(),
        "no-op: an in-bench Journal server with ministore_server::Server's tonic settings (TCP_NODELAY on accepted sockets via TcpIncoming, request deadline, HTTP/2 keepalive, message limits, a pass-through interceptor) whose Append/AppendBatch answer at once".into(),
    ];
    if let Some(stream) = &results.stream {
        notes.push(format!(
            "stream: journal built with append_json in {:.1} s; Client::stream = the project's client, each record checked as JSON (Box<RawValue>); raw stub = Client::raw().stream(), protobuf only; the server runs in a child process (this binary with --serve-child, the same ministore_server::Server) so its /proc/<pid>/status VmRSS counts the server alone: sampled every 5 ms during both reads, shown as peak (+growth over idle {}); VmHWM at the end {}; first record: from the Stream call to the first record, median of 5 (warm), then once after posix_fadvise(DONTNEED) of every segment",
            stream.fill.as_secs_f64(),
            table::mib(stream.rss_before),
            table::mib(stream.rss_hwm),
        ));
    }
    if let Some(open) = &results.open {
        notes.push(format!(
            "open: MiniStoreOptions::open with the server's options (64 MiB segments, 16 kept), median of 3; journal built with append_json in {:.1} s; the active segment ({}) is scanned and each line JSON-validated by open; \"page cache evicted\" = posix_fadvise(DONTNEED) on each file before each open",
            open.fill.as_secs_f64(),
            table::mib(open.active_bytes)
        ));
    }
    if let Some(j) = &results.journals {
        notes.push(format!(
            "journals: unary Append RPCs (the client without AppendStream); the server in a child process with default flags (--max-journals {}, --writer-threads {}); {} journals created with one append each, {} at a time, in {:.1} s; threads, VmRSS and descriptors from /proc before and after creating them; \"spread\" = each call to the next journal in turn, so most calls reopen a journal closed to make room (--max-journals); the five latency rows (1 journal, both spreads, both raw rows) run in {} turns each, in turn with each other, their calls pooled, so the VM's disk phases fall on all alike; raw = this process writing a 200 B line and a 32 B entry to a pair of files and fdatasyncing both, one after the other",
            j.max_open,
            ministore_server::journals::DEFAULT_WRITER_THREADS,
            j.journals,
            64,
            j.create.as_secs_f64(),
            scale_bench::TURNS
        ));
    }
    if let Some(f) = &results.followers {
        notes.push(format!(
            "followers: {} following Streams of one journal on {} connections, from seq 2 of a 1-record journal, each caught up and waiting when RSS is read; then one AppendBatch of {} records: fan-out = from that call to the last follower's last record",
            f.followers,
            f.followers.div_ceil(100),
            f.burst
        ));
    }
    if let Some(o) = &results.offload {
        notes.push(format!(
            "offload: unary Append at 1 caller to one journal, alone and while another connection sends AppendBatch requests of {} MiB of nested JSON in a loop ({} sent), each checked in full and refused by its expectation (so the disk is not what is measured); alone and loaded in {} turns each, in turn, their calls pooled",
            o.batch_bytes >> 20,
            o.batches,
            scale_bench::TURNS
        ));
    }
    notes
}

fn progress(what: &str) {
    eprintln!("ministore-bench: {what}...");
}

/// `/proc/loadavg`'s three averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPUs and model, as far as /proc/cpuinfo tells.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} CPUs ({model})")
}

/// The name of the file system holding `path`, as far as we can tell.
#[cfg(target_os = "linux")]
fn filesystem(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return "unknown file system".into();
    };
    // SAFETY: statfs reads the NUL-terminated path and writes only into `stat`.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return "unknown file system".into();
    }
    match stat.f_type as u64 {
        t if t == libc::TMPFS_MAGIC as u64 => "tmpfs".into(),
        t if t == libc::EXT4_SUPER_MAGIC as u64 => "ext4".into(),
        t if t == libc::XFS_SUPER_MAGIC as u64 => "xfs".into(),
        t if t == libc::BTRFS_SUPER_MAGIC as u64 => "btrfs".into(),
        t if t == libc::OVERLAYFS_SUPER_MAGIC as u64 => "overlayfs".into(),
        t => format!("file system type {t:#x}"),
    }
}

/// The name of the file system holding `path`, as far as we can tell.
#[cfg(not(target_os = "linux"))]
fn filesystem(_path: &Path) -> String {
    "unknown file system".into()
}
