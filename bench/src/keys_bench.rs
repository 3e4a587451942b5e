//! What retry safety costs (issue #14): the unary `Append` RPC with an idempotency key
//! beside the same RPC without one, at 1 and 64 callers; the disk's own floor for a commit
//! that fsyncs two files (the records and their metadata) beside one; and the time and
//! memory to open a journal whose metadata holds 1,000,000 keys.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ministore::proto::{AppendRequest, append_request};
use ministore::{Append, JsonLine};

use crate::grpc_bench::{self, BoxError, Load};
use crate::store_bench::RECORD_BYTES;
use crate::table::{self, Table};

/// Callers measured.
const CALLERS: [usize; 2] = [1, 64];
/// Runs of each variant, interleaved.
const RUNS: usize = 4;
/// Keys in the journal the open measurement opens.
pub const KEYS: u64 = 1_000_000;
/// Keys with --quick.
pub const QUICK_KEYS: u64 = 100_000;
/// Requests per commit when building it.
const FILL_GROUP: usize = 1000;

/// What the keys section measured.
#[derive(Debug)]
pub struct KeyResults {
    /// (callers, without a key, with a key), each the best of [`RUNS`] interleaved runs.
    pub appends: Vec<(usize, Load, Load)>,
    /// write + fdatasync of one 200-byte line to one file, per second.
    pub raw_one_file: f64,
    /// The same, then write + fdatasync of a 60-byte entry to a second file.
    pub raw_two_files: f64,
    /// The same, the second file's fdatasync on a helper thread at the same time.
    pub raw_two_concurrent: f64,
    /// The same, the second file written over zeros written ahead.
    pub raw_two_over_zeros: f64,
    /// Keys in the journal opened.
    pub keys: u64,
    /// Median time to open it (warm page cache).
    pub open: Duration,
    /// The same journal opened remembering no keys (`max_keys(0)`).
    pub open_without_keys: Duration,
    /// The memory the remembered keys take, per key.
    pub bytes_per_key: f64,
}

/// Runs the section in `dir`.
pub async fn run(
    dir: &Path,
    duration: Duration,
    warmup: Duration,
    keys: u64,
) -> Result<KeyResults, BoxError> {
    let appends = grpc_bench::with_server(&dir.join("server"), 0, async |client, _addr| {
        let mut rows = Vec::new();
        for callers in CALLERS {
            let counter = Arc::new(AtomicU64::new(0));
            let mut best: [Option<Load>; 2] = [None, None];
            // Interleaved, so drift in the machine's state hits both alike; the best of
            // each, as a disturbance only ever slows a run down.
            for _ in 0..RUNS {
                for (slot, keyed) in [false, true].into_iter().enumerate() {
                    let raw = client.raw();
                    let counter = counter.clone();
                    let journal: Arc<str> = format!("keys-{callers}-{keyed}").into();
                    let record = grpc_bench::record().get().as_bytes().to_vec();
                    let load = grpc_bench::drive(callers, 1, duration / 2, warmup, move || {
                        let mut raw = raw.clone();
                        let key = match keyed {
                            true => format!(
                                "00000000-0000-4000-8000-{:012}",
                                counter.fetch_add(1, Ordering::Relaxed)
                            ),
                            false => String::new(),
                        };
                        let request = AppendRequest {
                            journal: journal.to_string(),
                            record: Some(append_request::Record::Payload(record.clone())),
                            idempotency_key: key,
                            ..Default::default()
                        };
                        async move {
                            raw.append(request).await?;
                            Ok(())
                        }
                    })
                    .await?;
                    if best[slot]
                        .as_ref()
                        .is_none_or(|b| b.calls_per_sec() < load.calls_per_sec())
                    {
                        best[slot] = Some(load);
                    }
                }
            }
            let [Some(plain), Some(keyed)] = best else {
                unreachable!("both ran")
            };
            rows.push((callers, plain, keyed));
        }
        Ok(rows)
    })
    .await?;

    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let (raw_one_file, raw_two_files, raw_two_concurrent, raw_two_over_zeros) =
        tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((
                raw_rate(&raw_dir, Flush::One, duration)?,
                raw_rate(&raw_dir, Flush::Sequential, duration)?,
                raw_rate(&raw_dir, Flush::Concurrent, duration)?,
                raw_rate(&raw_dir, Flush::ConcurrentOverZeros, duration)?,
            ))
        })
        .await??;

    let (open, open_without_keys, bytes_per_key) = open_with_keys(&dir.join("open"), keys).await?;
    Ok(KeyResults {
        appends,
        raw_one_file,
        raw_two_files,
        raw_two_concurrent,
        raw_two_over_zeros,
        keys,
        open,
        open_without_keys,
        bytes_per_key,
    })
}

/// How a raw commit flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// One file.
    One,
    /// Two files, one fdatasync after the other.
    Sequential,
    /// Two files, the second's fdatasync on a helper thread at the same time (as the store).
    Concurrent,
    /// As `Concurrent`, the second file's entries written over zeros written (and fsynced)
    /// ahead, so its fdatasync has no size change to commit.
    ConcurrentOverZeros,
}

/// Commits per second of write + fdatasync of a 200-byte line, and, unless `One`, of a
/// 60-byte entry to a second file: the disk's floor for the store's commit.
fn raw_rate(dir: &Path, flush: Flush, duration: Duration) -> std::io::Result<f64> {
    use std::io::Write;
    let open = |name: String| {
        std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(name))
    };
    let mut data = open(format!("data-{flush:?}"))?;
    let meta = Arc::new(open(format!("meta-{flush:?}"))?);
    if flush == Flush::ConcurrentOverZeros {
        meta.set_len(64 << 20)?;
        (&*meta).write_all(&vec![0u8; 64 << 20])?;
        meta.sync_all()?;
    }
    let mut meta_at = 0u64;
    let (jobs, incoming) = std::sync::mpsc::sync_channel::<()>(1);
    let (report, done) = std::sync::mpsc::sync_channel(1);
    let helper = {
        let meta = meta.clone();
        std::thread::spawn(move || {
            while incoming.recv().is_ok() {
                let _ = report.send(meta.sync_data());
            }
        })
    };
    let line = [b'x'; RECORD_BYTES];
    let entry = [0u8; 60];
    let start = Instant::now();
    let mut commits = 0u64;
    while start.elapsed() < duration {
        data.write_all(&line)?;
        match flush {
            Flush::One => {}
            Flush::ConcurrentOverZeros => {
                std::os::unix::fs::FileExt::write_all_at(&*meta, &entry, meta_at)?;
                meta_at += entry.len() as u64;
            }
            _ => (&*meta).write_all(&entry)?,
        }
        match flush {
            Flush::One => data.sync_data()?,
            Flush::Sequential => {
                data.sync_data()?;
                meta.sync_data()?;
            }
            Flush::Concurrent | Flush::ConcurrentOverZeros => {
                jobs.send(()).map_err(std::io::Error::other)?;
                data.sync_data()?;
                done.recv().map_err(std::io::Error::other)??;
            }
        }
        commits += 1;
    }
    drop(jobs);
    let _ = helper.join();
    Ok(commits as f64 / start.elapsed().as_secs_f64())
}

/// Builds a journal of `keys` keyed 200-byte records (one segment, as the server's 64 MiB
/// segments would not hold them: 16 MiB ones, all kept) and times opening it with and
/// without keys; the memory the keys take, per key.
async fn open_with_keys(dir: &Path, keys: u64) -> Result<(Duration, Duration, f64), BoxError> {
    let path = dir.join("journal.jsonl");
    let options = ministore_server::Config::with_data_dir(dir)
        .store_options()
        .max_segments(usize::MAX);
    let record = JsonLine::from_slice(grpc_bench::record().get().as_bytes())?;
    let mut store = options.clone().open(&path).await?;
    let mut written = 0;
    while written < keys {
        let group: Vec<Append> = (written..(written + FILL_GROUP as u64).min(keys))
            .map(|i| {
                Append::new(vec![record.clone()]).key(format!("00000000-0000-4000-8000-{i:012}"))
            })
            .collect();
        written += group.len() as u64;
        for result in store.append_requests(group).await? {
            result?;
        }
    }
    drop(store);
    let time_open = |options: ministore::MiniStoreOptions| {
        let path = path.clone();
        async move {
            let started = Instant::now();
            let store = options.open(&path).await?;
            let took = started.elapsed();
            let grown = store.remembered_keys_bytes() as u64;
            if store.last_seq() != keys {
                return Err::<_, BoxError>(
                    format!("open found {} records", store.last_seq()).into(),
                );
            }
            Ok((took, grown, store.remembered_keys()))
        }
    };
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut grown = Vec::new();
    for _ in 0..3 {
        let (took, rss_growth, remembered) = time_open(options.clone()).await?;
        if remembered as u64 != keys {
            return Err(format!("open remembered {remembered} keys, not {keys}").into());
        }
        with.push(took);
        grown.push(rss_growth);
        without.push(time_open(options.clone().max_keys(0)).await?.0);
    }
    with.sort_unstable();
    without.sort_unstable();
    grown.sort_unstable();
    Ok((with[1], without[1], grown[1] as f64 / keys as f64))
}

/// The section as a table, with its targets.
pub fn table(results: &KeyResults) -> Table {
    let mut table = Table::new([
        "retry-safe appends (#14)",
        "figure",
        "beside",
        "ratio",
        "target",
    ]);
    for (callers, plain, keyed) in &results.appends {
        let ratio = keyed.calls_per_sec() / plain.calls_per_sec();
        table.row([
            format!("Append with a key, {callers} caller(s), one RPC each (/s)"),
            table::rate(keyed.calls_per_sec()),
            format!("{} without", table::rate(plain.calls_per_sec())),
            format!("{ratio:.2}x"),
            verdict(ratio >= 0.9, ">= 0.90x (under 10% slower)"),
        ]);
        table.row([
            "  p50 with / without a key".to_string(),
            table::duration(keyed.p50),
            table::duration(plain.p50),
            format!("{:.2}x", keyed.p50.as_secs_f64() / plain.p50.as_secs_f64()),
            String::new(),
        ]);
    }
    for (name, rate) in [
        ("one after the other", results.raw_two_files),
        (
            "at the same time (as ministore)",
            results.raw_two_concurrent,
        ),
        (
            "at the same time, metadata over zeros",
            results.raw_two_over_zeros,
        ),
    ] {
        table.row([
            format!("raw: write+fdatasync of two files, {name} (/s)"),
            table::rate(rate),
            format!("{} one file", table::rate(results.raw_one_file)),
            format!("{:.2}x", rate / results.raw_one_file),
            String::new(),
        ]);
    }
    table.row([
        format!(
            "open a journal of {} keys",
            table::rate(results.keys as f64)
        ),
        table::duration(results.open),
        format!(
            "{} remembering none",
            table::duration(results.open_without_keys)
        ),
        String::new(),
        String::new(),
    ]);
    table.row([
        "  memory per remembered key".to_string(),
        format!("{:.0} B", results.bytes_per_key),
        String::new(),
        String::new(),
        String::new(),
    ]);
    table
}

fn verdict(pass: bool, target: &str) -> String {
    format!("{} {target}", if pass { "PASS" } else { "MISS" })
}
