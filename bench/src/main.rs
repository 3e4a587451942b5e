//! `ministore-bench`: how fast the store makes records durable, beside what the disk does
//! for a plain `write` + `fdatasync` in the same directory, in the same run.
//!
//! ```text
//! cargo run --release -p ministore-bench -- [--dir DIR] [--seconds N]
//! ```
//!
//! It works in a temporary directory made inside `--dir` (default: the current directory,
//! on the disk you care about; `/tmp` is often tmpfs, where fsync costs nothing) and
//! removes it afterwards.

mod store_bench;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use table::Table;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmarks ministore's durable appends against raw write+fdatasync"
)]
struct Args {
    /// Directory to benchmark in: a temporary directory is made inside it and removed
    /// afterwards. Default: the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ministore-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(format!("--seconds must be a positive number, not {}", args.seconds).into());
    }
    let parent = args.dir.unwrap_or_else(|| PathBuf::from("."));
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
    let duration = Duration::from_secs_f64(args.seconds);
    println!(
        "ministore store benchmark: {}-byte records, one thread, {} s per measurement, in {} ({fs})\n",
        store_bench::RECORD_BYTES,
        args.seconds,
        std::path::absolute(dir.path())?.display(),
    );

    let results = store_bench::run(dir.path(), duration).await?;
    let raw = results[0].records_per_sec();
    let mut table = Table::new(["measurement", "records/s", "p50 per call", "vs raw"]);
    for m in &results {
        table.row([
            m.name.clone(),
            table::rate(m.records_per_sec()),
            table::duration(m.p50),
            format!("{:.2}x", m.records_per_sec() / raw),
        ]);
    }
    print!("{}", table.render());
    Ok(())
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
