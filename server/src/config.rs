//! Command-line flags: one clap struct, every flag also an environment variable.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Default address: loopback only, so a fresh server is never exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Memory for all journals' idempotency keys unless configured (`--dedupe-key-bytes`):
/// 256 MiB, about 2 million keys, so one journal reaches its default `--dedupe-keys`.
pub const DEFAULT_DEDUPE_KEY_BYTES: usize = 256 * 1024 * 1024;

/// ministore-server: durable JSON journals over gRPC.
///
/// Every append is fsynced before it is acknowledged. Journal NAME lives in
/// DATA_DIR/NAME/journal.jsonl plus rotated segments journal.jsonl.000001, ...
///
/// RETENTION: per journal, at most MAX_SEGMENTS files of MAX_BYTES_PER_SEGMENT
/// are kept (by default 16 x 64 MiB = 1 GiB). When a journal grows past that, its
/// oldest segment is DELETED (and the deletion logged). Use --max-segments 0 to
/// keep everything.
#[derive(Debug, Clone, Parser)]
// No `about` from Cargo.toml: `-h` shows the first line of the text below, `--help` all of it.
#[command(name = "ministore-server", version)]
pub struct Config {
    /// Address to listen on (host:port, the host a name or an IP address, e.g.
    /// `localhost:50051` or `[::1]:50051`). Use port 0 to pick a free port; the chosen
    /// address is printed on startup as "listening on ADDR".
    #[arg(long, env = "MINISTORE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,

    /// Serve Prometheus metrics at http://ADDR/metrics (host:port like --listen; port 0
    /// picks a free port, printed on startup as "metrics on ADDR"). Off unless given.
    /// Plain HTTP with no authentication: bind it to loopback or a private interface.
    #[arg(long, env = "MINISTORE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Directory holding one subdirectory per journal. Created if missing; only one
    /// server may use it at a time.
    #[arg(long, env = "MINISTORE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Where journals live: `local` (DATA_DIR on this machine, the default), or a NATS
    /// JetStream cluster, `nats://HOST:PORT[,HOST:PORT...]` (`tls://` for TLS): each journal
    /// is then a replicated stream, acknowledged once a majority of replicas stored it,
    /// and several ministore-servers can serve the same journals. The cluster's servers
    /// must run with `sync_interval: always` (see README, "Running a cluster").
    #[arg(long, env = "MINISTORE_BACKEND", default_value = "local")]
    pub backend: String,

    /// With a nats:// backend: replicas of each journal's stream (1, 3 or 5).
    #[arg(long, env = "MINISTORE_NATS_REPLICAS", default_value_t = 3)]
    pub nats_replicas: usize,

    /// With a nats:// backend: a NATS credentials file (JWT and NKey seed), as `nats --creds`.
    #[arg(long, env = "MINISTORE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// With a nats:// backend: user name (with --nats-password).
    #[arg(long, env = "MINISTORE_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,

    /// With a nats:// backend: password of --nats-user.
    #[arg(long, env = "MINISTORE_NATS_PASSWORD", requires = "nats_user")]
    pub nats_password: Option<String>,

    /// With a nats:// backend: an authentication token.
    #[arg(long, env = "MINISTORE_NATS_TOKEN")]
    pub nats_token: Option<String>,

    /// With a nats:// backend: PEM CA certificate(s) to verify the NATS servers (implies TLS).
    #[arg(long, env = "MINISTORE_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// With a nats:// backend: PEM client certificate for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "MINISTORE_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,

    /// With a nats:// backend: PEM private key of --nats-tls-cert.
    #[arg(long, env = "MINISTORE_NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,

    /// With a nats:// backend: how long a journal's stream remembers idempotency keys
    /// (JetStream's duplicate window), in seconds. A retry later than that is written again.
    #[arg(
        long,
        env = "MINISTORE_NATS_DEDUPE_WINDOW_SECONDS",
        default_value_t = 120
    )]
    pub nats_dedupe_window_seconds: u64,

    /// With a nats:// backend: the cluster's monitoring URLs (http://HOST:8222, comma
    /// separated). When given, the server refuses to start unless every one reports
    /// `sync_interval: always` (fsync before acknowledging); without it, it warns that it
    /// could not check.
    #[arg(long, env = "MINISTORE_NATS_MONITOR", value_delimiter = ',')]
    pub nats_monitor: Vec<String>,

    /// Size in bytes at which a journal's active segment is rotated.
    #[arg(long, env = "MINISTORE_MAX_BYTES_PER_SEGMENT", default_value_t = 64 * 1024 * 1024)]
    pub max_bytes_per_segment: u64,

    /// Segment files kept per journal, the active one included; older ones are deleted.
    /// 0 keeps every segment (no retention).
    #[arg(long, env = "MINISTORE_MAX_SEGMENTS", default_value_t = 16)]
    pub max_segments: usize,

    /// Write zeros ahead of the records in each journal's active file (256 KiB at a time),
    /// so that an append's fdatasync has no file size to commit: about 10 µs less per
    /// append on ext4. While the server runs, and after a crash until the next start,
    /// active files then end in NUL bytes, which `cat`, `tail -f | jq` and programs built
    /// on the published ministore 0.1.7 do not read. Off by default: every file is plain
    /// JSON lines at every instant.
    #[arg(long, env = "MINISTORE_PREALLOCATE")]
    pub preallocate: bool,

    /// Accepted for scripts written when preallocation was on by default; it is off now.
    #[arg(
        long,
        hide = true,
        env = "MINISTORE_NO_PREALLOCATE",
        conflicts_with = "preallocate"
    )]
    pub no_preallocate: bool,

    /// Idempotency keys remembered per journal: the newest, among those of retained
    /// records. A retry with a key older than that is written again. Each remembered key
    /// takes about 120 bytes of memory (see the README's memory bound). 0 remembers none.
    #[arg(long, env = "MINISTORE_DEDUPE_KEYS", default_value_t = ministore::DEFAULT_MAX_KEYS)]
    pub dedupe_keys: usize,

    /// Bytes of memory for the idempotency keys of all journals together (128 bytes a key).
    /// Past it, a journal that holds at least 1,024 keys remembers a new key by forgetting
    /// its own oldest; each journal keeps its newest 1,024 whatever the others hold.
    #[arg(long, env = "MINISTORE_DEDUPE_KEY_BYTES", default_value_t = DEFAULT_DEDUPE_KEY_BYTES)]
    pub dedupe_key_bytes: usize,

    /// Largest record accepted, in bytes of JSON. Larger ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MINISTORE_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// Largest gRPC message accepted, in bytes (a batch of records is one message).
    /// Larger messages are refused with RESOURCE_EXHAUSTED before they are read.
    #[arg(long, env = "MINISTORE_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Stream RPCs open at once, across all clients; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MINISTORE_MAX_STREAMS", default_value_t = 1024)]
    pub max_streams: usize,

    /// Stream RPCs open at once on one connection; more get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "MINISTORE_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 128
    )]
    pub max_streams_per_connection: usize,

    /// Bytes of records held in memory for readers at once, across all Replay and Stream
    /// RPCs (records read ahead of a client, pages being built). When it is spent, readers
    /// wait for it (Replay pages get shorter): slow readers cost themselves time, not the
    /// server memory. See the README's "Security and limits" for the whole memory bound.
    #[arg(long, env = "MINISTORE_MAX_READ_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_read_bytes: usize,

    /// Journals whose files are open at once (each holds 3 descriptors and its key index).
    /// Any number of journals can be used: to open one more, the least recently used idle
    /// journal is closed, and reopened on its next append. Only when all of them have
    /// appends in progress does opening another get RESOURCE_EXHAUSTED.
    #[arg(long, env = "MINISTORE_MAX_JOURNALS", default_value_t = 1024)]
    pub max_journals: usize,

    /// Seconds without an append after which a journal's files are closed (it reopens on
    /// its next append; its followers keep following).
    #[arg(long, env = "MINISTORE_JOURNAL_IDLE_SECONDS", default_value_t = 60)]
    pub journal_idle_seconds: u64,

    /// Bytes of memory, all journals together, for the state of closed journals (lengths,
    /// segment lists, index, idempotency keys), kept so that a journal reopens by checking
    /// its files unchanged instead of reading them again. The least recently closed beyond
    /// it are forgotten and reopen in full; 0 keeps none.
    #[arg(long, env = "MINISTORE_WARM_JOURNAL_BYTES", default_value_t = crate::journals::DEFAULT_WARM_BYTES)]
    pub warm_journal_bytes: usize,

    /// Threads that commit appends (write and fsync), shared by all journals: at most this
    /// many journals commit at the same moment, each of them every append waiting for it.
    #[arg(long, env = "MINISTORE_WRITER_THREADS", default_value_t = crate::journals::DEFAULT_WRITER_THREADS)]
    pub writer_threads: usize,

    /// TCP connections served at once. At the cap, a new connection closes the oldest one
    /// that has not yet sent its first request, or is itself closed if there is none. The
    /// server lowers the cap to fit its open-files limit (see README, "Security and limits").
    #[arg(long, env = "MINISTORE_MAX_CONNECTIONS", default_value_t = 1000)]
    pub max_connections: usize,

    /// Seconds a new connection may take (TLS included) to send its first request before
    /// it is closed.
    #[arg(
        long,
        env = "MINISTORE_HANDSHAKE_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub handshake_timeout_seconds: u64,

    /// HTTP/2 streams (RPCs in flight) one connection may open at once; the client waits
    /// for one to finish before opening another.
    #[arg(long, env = "MINISTORE_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Deadline for each unary RPC, in seconds (a client's shorter grpc-timeout wins).
    /// Streams are not limited by it.
    #[arg(long, env = "MINISTORE_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,

    /// PEM certificate chain: serve TLS (with --tls-key). Plaintext is then refused.
    #[arg(long, env = "MINISTORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "MINISTORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): require client certificates signed by them (mutual TLS).
    #[arg(long, env = "MINISTORE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Token file: require `authorization: Bearer <token>` on every Journal RPC. One token
    /// per line, optionally followed by rights=read|append|read,append and
    /// journals=a,b|*. Tokens are never logged.
    #[arg(long, env = "MINISTORE_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,

    /// With --auth-tokens, require a token for health and reflection too (by default they
    /// stay open, for load balancers and grpcurl).
    #[arg(long, env = "MINISTORE_AUTH_ALL_SERVICES", requires = "auth_tokens")]
    pub auth_all_services: bool,

    /// After SIGTERM/SIGINT, how long in-flight RPCs may take to finish before their
    /// connections are closed. Queued appends are committed either way.
    #[arg(long, env = "MINISTORE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,

    /// Log format: human-readable lines or one JSON object per line.
    #[arg(long, env = "MINISTORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, e.g. "info" or "ministore_server=debug" (RUST_LOG syntax). Per-RPC
    /// spans and timings are logged at debug.
    #[arg(long, env = "MINISTORE_LOG", default_value = "info")]
    pub log_level: String,

    /// Faults for the journals' file operations and the RPCs' reads, for tests of the
    /// failure paths (see `ministore::io`); none by default, and no flag sets any.
    #[arg(skip)]
    pub store_faults: ministore::io::Faults,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Config {
    /// The configuration with every default and `data_dir` as given: what tests and
    /// embedders start from.
    ///
    /// ```
    /// let config = ministore_server::Config::with_data_dir("/tmp/ministore-example");
    /// assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    /// assert_eq!(config.max_segments, 16);
    /// ```
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Config::parse_from(["ministore-server"]);
        config.data_dir = data_dir.into();
        config
    }

    /// The store options for each journal (0 segments meaning "keep all").
    pub fn store_options(&self) -> ministore::MiniStoreOptions {
        let mut options = ministore::MiniStoreOptions::new();
        options.faults = self.store_faults.clone();
        options
            .max_bytes_per_segment(self.max_bytes_per_segment)
            .max_segments(match self.max_segments {
                0 => usize::MAX,
                n => n,
            })
            .preallocate(self.preallocate)
            .max_keys(self.dedupe_keys)
            .key_memory(ministore::KeyMemory::new(self.dedupe_key_bytes))
    }

    /// Whether journals live in the local data directory (`--backend local`), not in a
    /// NATS JetStream cluster.
    pub fn is_local(&self) -> bool {
        self.backend == "local"
    }

    /// One line saying how much each journal keeps, for the startup log.
    pub fn retention_summary(&self) -> String {
        let segment = human_bytes(self.max_bytes_per_segment);
        match self.max_segments {
            0 => format!("every segment is kept (segments rotate at {segment})"),
            n => format!(
                "each journal keeps at most {n} segments of {segment} (~{}); older records are deleted",
                human_bytes(self.max_bytes_per_segment.saturating_mul(n as u64))
            ),
        }
    }
}

/// `1.0 MiB`, `512 KiB`, `200 B`: sizes as a person reads them.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
