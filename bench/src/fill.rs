//! Large journals made quickly: the store library's `append_json` with big batches, straight
//! into a journal file, with the server's segment options, so the files are exactly what
//! the server would have written.

use std::path::Path;
use std::time::{Duration, Instant};

use ministore::{JsonLine, MiniStoreOptions};

use crate::grpc_bench::{BoxError, record};

/// Appends `records` copies of [`record`] to the journal at `path` in batches of
/// `per_batch`, and returns how long it took.
pub async fn fill(
    path: &Path,
    options: MiniStoreOptions,
    records: u64,
    per_batch: usize,
) -> Result<Duration, BoxError> {
    let line = JsonLine::from_slice(record().get().as_bytes())?;
    let batch = vec![line; per_batch];
    let started = Instant::now();
    let mut store = options.open(path).await?;
    let mut left = records;
    while left > 0 {
        let n = left.min(per_batch as u64) as usize;
        store.append_json(&batch[..n]).await?;
        left -= n as u64;
    }
    assert_eq!(store.last_seq(), records, "every record must be committed");
    Ok(started.elapsed())
}

/// Drops the page cache of every file in `dir` (they are clean: the store fsynced them), so
/// the next read comes from the disk. Best effort: returns how many files were evicted.
pub fn evict_page_cache(dir: &Path) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut evicted = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let file = std::fs::File::open(&path)?;
        file.sync_all()?;
        // SAFETY: a valid open descriptor; the call only advises the kernel.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc == 0 {
            evicted += 1;
        }
    }
    Ok(evicted)
}
