//! Command-line arguments: one clap struct, a subcommand per job.
//!
//! The offline commands (`verify`, `dump`, `inspect`) take a PATH on this machine and read
//! files. The online commands (`append`, `tail`, `ls`, `info`) take a journal NAME and talk
//! gRPC to the server at `--addr`; the two kinds never share a command name, so neither
//! needs a flag that changes what its argument means.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ministore: work with ministore journals.
///
/// Online commands talk to a running ministore-server (--addr, default 127.0.0.1:50051):
///
///   append JOURNAL [JSON|-]          append one record, or one per line of stdin; print the seqs
///   tail [-f] [--from SEQ] JOURNAL   print the records as JSON lines; -f follows, across restarts
///   ls [--json]                      every journal: seq range, records, segments, size
///   info JOURNAL [--json]            one journal's retained range, segments and damage
///
/// Offline commands read a data directory or a journal on this machine, read-only:
/// they never take a journal's lock and never repair or write, so they are safe on
/// the files of a running server.
///
///   verify PATH    check every byte; exit 0 clean, 1 damaged, 2 cannot read
///   dump PATH      print the records as JSON lines {"seq":N,"record":...}
///   inspect PATH   segments, seq ranges, sizes, indexes; a quick structure check
///
/// PATH is a data directory (one subdirectory per journal), a journal's directory,
/// or a journal's file (journal.jsonl).
///
/// Exit status:
///   0  success (offline: clean, warnings allowed)
///   1  damaged: offline, damage found; online, the server answered DATA_LOSS
///   2  bad usage, input that is not JSON, or a local file that cannot be read
///   3  the server cannot be reached or is unavailable (UNAVAILABLE, DEADLINE_EXCEEDED): retry later
///   4  the journal does not exist (NOT_FOUND)
///   5  the server refused or failed the request (INVALID_ARGUMENT, PERMISSION_DENIED,
///      UNAUTHENTICATED, RESOURCE_EXHAUSTED, OUT_OF_RANGE, ...): the message says why
#[derive(Debug, Parser)]
#[command(name = "ministore", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every file of a data directory or a journal, read-only, and report each problem
    /// with its file, seq and byte offset.
    ///
    /// DAMAGE (exit 1) is what no open repairs: a file that is not a journal, a line that is
    /// not JSON with records after it, a rotated segment that does not end with a complete
    /// record, records missing between segments, an index pointing at the wrong records.
    /// Warnings (exit 0) are what a crash leaves and the next open repairs (an unfinished
    /// write at the end of the active file; on a live journal it may be a write in
    /// progress), and index files readers ignore. Exit 2: a file could not be read.
    Verify(CheckArgs),

    /// Print a journal's records as JSON lines {"seq":N,"record":<the stored JSON>}, the
    /// record exactly as stored.
    ///
    /// Reads the files as they are (no lock: a server may have the journal open; every
    /// record it acknowledged before the dump started is printed). Exit 1 on damage, after
    /// the records before it, naming the file and seq.
    Dump(DumpArgs),

    /// Show each journal's segments (first and last seq, bytes, index), records and size,
    /// with a quick structure check (`verify` reads every line). Exit codes as `verify`.
    Inspect(CheckArgs),

    /// Repair what can be repaired without losing a committed record, offline: what a
    /// crash leaves (an unfinished write, a header cut short, a rotation that did not
    /// finish; what a server's open would repair) and indexes pointing at the wrong records.
    ///
    /// Each file it changes is first copied aside as `<file>.before-repair-<time>`; bytes it
    /// cuts are kept as `.broken-<offset>`; it deletes nothing. It refuses while a server
    /// uses the data directory. Then it verifies again: exit 0 when clean, 1 when damage is
    /// left that no repair can fix without losing records (reported as `verify` does).
    Repair(CheckArgs),

    /// Append records to a journal on the server (created by its first append) and print
    /// the seq of each, one per line, once it is durable.
    ///
    /// With JSON, that one record. With `-` or nothing, stdin: one record per line (blank
    /// lines are skipped). Lines are sent as they arrive; lines already waiting go
    /// together, as one atomic AppendBatch. A line that is not one JSON value stops it
    /// (exit 2): the lines before it are appended, that line and those after it are not.
    Append(AppendArgs),

    /// Print a journal's records as JSON lines, each exactly as stored.
    ///
    /// From --from (default 1: the oldest retained record) to the end; with -f, then waits
    /// for new records and prints each as soon as it is durable, until interrupted. A
    /// follower whose server restarts or whose connection drops reconnects by itself and
    /// goes on with the next record: no gap, no duplicate. With -f the journal need not
    /// exist yet.
    Tail(TailArgs),

    /// List every journal on the server (all pages of ListJournals), sorted by name: first
    /// and last seq, records, segment files and bytes on disk.
    Ls(LsArgs),

    /// Show one journal on the server: its retained range, segment files, and where it is
    /// damaged, if it is (the Info RPC).
    Info(InfoArgs),
}

/// How to reach the server: the flags every online command takes.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server: HOST:PORT, or an http:// or https:// URL.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MINISTORE_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: String,

    /// Bearer token sent with every call. Prefer the environment variable: arguments are
    /// visible to other users of the machine (`ps`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MINISTORE_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "PEM", env = "MINISTORE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// The name the server's certificate must carry, when it is not the host of --addr.
    #[arg(long, value_name = "NAME", env = "MINISTORE_TLS_DOMAIN")]
    pub tls_domain: Option<String>,

    /// Client certificate (PEM) for servers that require mutual TLS; needs --client-key.
    #[arg(
        long,
        value_name = "PEM",
        env = "MINISTORE_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM); needs --client-cert.
    #[arg(
        long,
        value_name = "PEM",
        env = "MINISTORE_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

/// Arguments of `append`.
#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The journal's name.
    #[arg(value_name = "JOURNAL")]
    pub journal: String,

    /// One record as JSON text; `-` or nothing: one record per line of stdin.
    #[arg(value_name = "JSON|-")]
    pub record: Option<String>,

    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The journal's name.
    #[arg(value_name = "JOURNAL")]
    pub journal: String,

    /// Keep following: print new records as they become durable, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// First sequence number to print (before the oldest retained one: from that one).
    #[arg(long, value_name = "SEQ", default_value_t = 1)]
    pub from: u64,

    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// One JSON object per journal and line instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The journal's name.
    #[arg(value_name = "JOURNAL")]
    pub journal: String,

    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `verify` and `inspect`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A data directory, a journal's directory, or a journal's file.
    #[arg(value_name = "PATH", env = "MINISTORE_DATA_DIR")]
    pub path: PathBuf,

    /// Print the report as one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// A journal's directory or its file (not a data directory).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// First sequence number to print (before the oldest retained one: from that one).
    #[arg(long, value_name = "SEQ", default_value_t = 1)]
    pub from: u64,

    /// Last sequence number to print (default: up to the last record on disk).
    #[arg(long, value_name = "SEQ")]
    pub to: Option<u64>,
}
