//! The store benchmark: what one thread gets from the disk with `write` + `fdatasync` of
//! 200-byte records in a plain file, beside `MiniStore::append` and
//! `MiniStore::append_batch` of the same records, each run for the same time in the same
//! directory, one after the other.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ministore::MiniStoreOptions;

/// Bytes per record on disk: a JSON string of 197 characters, its two quotes, a newline.
pub const RECORD_BYTES: usize = 200;
/// Records per `append_batch` call.
pub const BATCH: usize = 100;

/// One measurement: how many records were committed in how many calls, in how long.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Records made durable.
    pub records: u64,
    /// Calls made.
    pub calls: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Median time of one call.
    pub p50: Duration,
    /// 99th percentile time of one call.
    pub p99: Duration,
}

impl Measurement {
    /// Durable records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Calls per second.
    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn new(
        name: &str,
        records_per_call: u64,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
    ) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).copied().unwrap_or_default()
        };
        Measurement {
            name: name.to_string(),
            records: latencies.len() as u64 * records_per_call,
            calls: latencies.len() as u64,
            elapsed,
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

/// Name of the `MiniStore::append` measurement.
pub const APPEND: &str = "MiniStore::append";

/// Runs the five measurements in `dir`, `duration` each: raw (appending, then overwriting
/// zeros), `append` (the default, then with preallocation), `append_batch`. The first is
/// the floor every ratio is taken against.
pub async fn run(dir: &Path, duration: Duration) -> Result<Vec<Measurement>, Box<dyn Error>> {
    let raw_path = dir.join("raw.bin");
    let raw =
        tokio::task::spawn_blocking(move || raw_write_fdatasync(&raw_path, duration)).await??;
    let zeroed_path = dir.join("raw-zeroed.bin");
    let zeroed =
        tokio::task::spawn_blocking(move || raw_overwrite_fdatasync(&zeroed_path, duration))
            .await??;
    let append = store_appends(dir.join("append/journal.jsonl"), duration, 1, false).await?;
    let preallocated = store_appends(dir.join("prealloc/journal.jsonl"), duration, 1, true).await?;
    let batch = store_appends(dir.join("batch/journal.jsonl"), duration, BATCH, false).await?;
    Ok(vec![raw, zeroed, append, preallocated, batch])
}

/// The record every measurement writes, as the store serializes it (without the newline).
fn record() -> String {
    "x".repeat(RECORD_BYTES - 3)
}

/// The floor: append one line to a plain file and `fdatasync` it, in a loop, on one thread.
fn raw_write_fdatasync(path: &Path, duration: Duration) -> std::io::Result<Measurement> {
    let line = format!("\"{}\"\n", record());
    assert_eq!(line.len(), RECORD_BYTES);
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all(line.as_bytes())?;
        file.sync_data()?;
        latencies.push(t.elapsed());
    }
    Ok(Measurement::new(
        "raw write+fdatasync",
        1,
        start.elapsed(),
        latencies,
    ))
}

/// The floor of what the store does: write one line over zeros written (and fsynced)
/// ahead of time, then `fdatasync`, so no call changes the file's size. The zeros are
/// written in 16 MiB steps between calls; that time counts in no call and not in the rate.
fn raw_overwrite_fdatasync(path: &Path, duration: Duration) -> std::io::Result<Measurement> {
    use std::os::unix::fs::FileExt;
    const STEP: u64 = 16 << 20;
    let line = format!("\"{}\"\n", record());
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)?;
    let (mut offset, mut zeroed) = (0u64, 0u64);
    let mut not_counted = Duration::ZERO;
    let mut latencies = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < duration + not_counted {
        if offset + RECORD_BYTES as u64 > zeroed {
            let t = Instant::now();
            file.write_all_at(&vec![0u8; STEP as usize], zeroed)?;
            file.sync_data()?;
            zeroed += STEP;
            not_counted += t.elapsed();
        }
        let t = Instant::now();
        file.write_all_at(line.as_bytes(), offset)?;
        file.sync_data()?;
        latencies.push(t.elapsed());
        offset += RECORD_BYTES as u64;
    }
    Ok(Measurement::new(
        "  raw, over zeros written ahead",
        1,
        start.elapsed() - not_counted,
        latencies,
    ))
}

/// `append` (`per_call == 1`) or `append_batch` of `per_call` records, in a loop, with
/// or without preallocation.
async fn store_appends(
    path: PathBuf,
    duration: Duration,
    per_call: usize,
    preallocate: bool,
) -> Result<Measurement, ministore::MiniStoreError> {
    let batch = vec![record(); per_call];
    let mut store = MiniStoreOptions::new()
        .preallocate(preallocate)
        .open(&path)
        .await?;
    let mut latencies = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        if per_call == 1 {
            store.append(&batch[0]).await?;
        } else {
            store.append_batch(&batch).await?;
        }
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let name = if preallocate {
        "  MiniStore::append, preallocated".to_string()
    } else if per_call == 1 {
        APPEND.to_string()
    } else {
        format!("MiniStore::append_batch ({per_call}/call)")
    };
    let measured = Measurement::new(&name, per_call as u64, elapsed, latencies);
    assert_eq!(
        store.last_seq(),
        measured.records,
        "every call must have committed"
    );
    Ok(measured)
}
