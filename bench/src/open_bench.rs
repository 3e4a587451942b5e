//! Open time of a large journal: the server opens each journal on its first request, so this
//! is how long the first caller after a restart waits. The journal is built with the
//! server's segment options (64 MiB segments, 16 kept): 15 full rotated segments and an
//! active one holding the rest, which `open` scans to find (and repair) its tail.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fill::{evict_page_cache, fill};
use crate::grpc_bench::BoxError;
use crate::store_bench::RECORD_BYTES;

/// Records per `append_json` when building the journal (4 MB).
const FILL_BATCH: usize = 20_000;
/// Opens timed per cache state; the median is reported.
const TRIES: usize = 3;

/// What the open section measured.
#[derive(Debug)]
pub struct OpenResults {
    /// Journal bytes on disk.
    pub bytes: u64,
    /// Segment files, the active one included.
    pub segments: usize,
    /// Bytes of the active segment (scanned and validated by `open`).
    pub active_bytes: u64,
    /// How long building it took.
    pub fill: Duration,
    /// Median open time with the files in the page cache.
    pub warm: Duration,
    /// Median open time after evicting the files from the page cache, if that worked.
    pub cold: Option<Duration>,
    /// `ministore verify` of the same journal (every line parsed, every CRC32C checked),
    /// warm page cache: how long it took.
    pub verify: Duration,
}

/// Builds a journal of about `bytes` bytes in `dir` and times opening it.
pub async fn run(dir: &Path, bytes: u64) -> Result<OpenResults, BoxError> {
    let journal_dir = dir.join("open");
    let path = journal_dir.join("journal.jsonl");
    let options = ministore_server::Config::with_data_dir(dir).store_options();
    let records = bytes / RECORD_BYTES as u64;
    let fill_time = fill(&path, options.clone(), records, FILL_BATCH).await?;

    let time_open = || async {
        let started = Instant::now();
        let store = options.clone().open(&path).await?;
        let elapsed = started.elapsed();
        if store.last_seq() != records {
            return Err(format!("open found {} records, not {records}", store.last_seq()).into());
        }
        Ok::<_, BoxError>((elapsed, store.durable().segments))
    };
    let mut warm = Vec::new();
    let mut segments = 0;
    for _ in 0..TRIES {
        let (elapsed, n) = time_open().await?;
        warm.push(elapsed);
        segments = n;
    }
    let mut cold = Vec::new();
    for _ in 0..TRIES {
        if evict_page_cache(&journal_dir)? == 0 {
            break;
        }
        cold.push(time_open().await?.0);
    }
    let started = Instant::now();
    let report = ministore::verify::verify_journal(&path)?;
    let verify = started.elapsed();
    if report.worst() >= Some(ministore::verify::Severity::Damage) {
        return Err(format!("verify found damage: {:?}", report.problems).into());
    }
    warm.sort_unstable();
    cold.sort_unstable();
    let total = std::fs::read_dir(&journal_dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    Ok(OpenResults {
        bytes: total,
        segments,
        active_bytes: std::fs::metadata(&path)?.len(),
        fill: fill_time,
        warm: warm[warm.len() / 2],
        cold: cold.get(cold.len() / 2).copied(),
        verify,
    })
}
