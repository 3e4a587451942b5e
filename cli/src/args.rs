//! Command-line arguments: one clap struct, a subcommand per job.
//!
//! The offline commands (`verify`, `dump`, `inspect`) take a PATH on this machine and read
//! files. The online commands planned for this binary (`append`, `tail`, `ls`, `info`) will
//! take a journal NAME and a `--server` URL and talk gRPC; the two kinds never share a
//! command name, so neither needs a flag that changes what its argument means.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ministore: work with ministore journals.
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
/// or a journal's file (journal.jsonl). Exit status: 0 clean (warnings allowed),
/// 1 damaged, 2 bad usage or a file could not be read.
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
