//! Every file operation of the writer, made to fail (`ministore::io`): the caller gets the
//! error, nothing acknowledged is lost, nothing unacknowledged is ever read or kept, and the
//! journal goes on once the fault clears. A failed fsync is never trusted: the file is cut
//! back to what the last good fsync covered.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ministore::io::{Fault, FaultInjector, FileOp};
use ministore::{Append, JsonLine, MiniStore, MiniStoreError, MiniStoreOptions};
use ministore_tests::files::{file_names, header, rotated_segments};
use ministore_tests::records::{read_all, seqs};

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// Faults the test switches on and off: each rule fails its operation `times` times.
#[derive(Debug, Default)]
struct Script {
    rules: Mutex<Vec<Rule>>,
}

#[derive(Debug, Clone)]
struct Rule {
    op: FileOp,
    errno: i32,
    /// For writes: bytes written before failing.
    short: Option<usize>,
    /// Operations of its kind let through before the first it fails.
    skip: usize,
    times: usize,
}

impl Script {
    fn fail(&self, op: FileOp, errno: i32, times: usize) {
        self.fail_after(op, 0, errno, times);
    }

    /// Lets `skip` operations of kind `op` through, then fails the next `times`.
    fn fail_after(&self, op: FileOp, skip: usize, errno: i32, times: usize) {
        self.add(Rule {
            op,
            errno,
            short: None,
            skip,
            times,
        });
    }

    fn fail_short(&self, written: usize, errno: i32) {
        self.add(Rule {
            op: FileOp::Write,
            errno,
            short: Some(written),
            skip: 0,
            times: 1,
        });
    }

    fn add(&self, rule: Rule) {
        self.rules.lock().unwrap().push(rule);
    }

    fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }
}

impl FaultInjector for Script {
    fn fault(&self, op: FileOp, _path: &Path) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| r.op == op && r.times > 0)?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        rule.times -= 1;
        let error = std::io::Error::from_raw_os_error(rule.errno);
        Some(match rule.short {
            Some(written) => Fault::Short { written, error },
            None => Fault::Fail(error),
        })
    }
}

fn rec(i: u64) -> String {
    format!("record {i}")
}

/// A journal with records 1..=3, whose writer meets the faults of the returned script.
async fn journal(dir: &Path, options: MiniStoreOptions) -> (MiniStore, Arc<Script>) {
    let script = Arc::new(Script::default());
    let mut store = options
        .inject_faults(script.clone())
        .open(dir.join("journal.jsonl"))
        .await
        .unwrap();
    store.append_batch(&[rec(1), rec(2), rec(3)]).await.unwrap();
    (store, script)
}

/// The active file holds exactly the header and records `1..=n`: nothing of a failed write.
fn holds_exactly(path: &Path, n: u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let expected: String = (1..=n).map(|i| format!("\"{}\"\n", rec(i))).collect();
    assert_eq!(
        text,
        format!("{}{expected}", header(1)),
        "{}",
        path.display()
    );
}

/// `store` serves records 1..=n to readers, and the next append goes on at n + 1.
async fn goes_on_after(store: &mut MiniStore, n: u64) {
    let read = read_all(&mut store.reader(1), 100).await;
    assert_eq!(seqs(&read), (1..=n).collect::<Vec<_>>());
    assert_eq!(
        store.append_batch(&[rec(n + 1)]).await.unwrap(),
        n + 1..n + 2
    );
}

#[tokio::test]
async fn a_failed_fsync_is_cut_back_to_the_durable_length_and_appends_go_on() {
    for preallocate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, script) =
            journal(dir.path(), MiniStoreOptions::new().preallocate(preallocate)).await;
        script.fail(FileOp::Fsync, EIO, 1);
        let err = store.append(&rec(4)).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
        // The bytes the failed fsync may or may not have written are gone from the file,
        // not merely hidden: a reopen, or a reader of the file, cannot find them.
        holds_exactly(store.path(), 3);
        assert_eq!(store.last_seq(), 3);
        goes_on_after(&mut store, 3).await;
        drop(store);
        let reopened: Vec<String> = MiniStore::replay(dir.path().join("journal.jsonl"))
            .await
            .unwrap();
        assert_eq!(
            reopened,
            (1..=4).map(rec).collect::<Vec<_>>(),
            "preallocate={preallocate}"
        );
    }
}

#[tokio::test]
async fn a_failed_write_or_a_short_one_leaves_nothing_behind() {
    for (what, short) in [("EIO", None), ("ENOSPC after 5 bytes", Some(5))] {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, script) = journal(dir.path(), MiniStoreOptions::new()).await;
        match short {
            Some(written) => script.fail_short(written, ENOSPC),
            None => script.fail(FileOp::Write, EIO, 1),
        }
        let err = store.append_batch(&[rec(4), rec(5)]).await.unwrap_err();
        let errno = if short.is_some() { ENOSPC } else { EIO };
        assert_eq!(err.raw_os_error(), Some(errno), "{what}: {err}");
        holds_exactly(store.path(), 3);
        goes_on_after(&mut store, 3).await;
    }
}

#[tokio::test]
async fn when_even_the_cut_back_fails_nothing_is_written_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, script) = journal(dir.path(), MiniStoreOptions::new()).await;
    script.fail(FileOp::Fsync, EIO, 1);
    script.fail(FileOp::Truncate, EIO, 2);
    assert_eq!(
        store.append(&rec(4)).await.unwrap_err().raw_os_error(),
        Some(EIO)
    );
    // The cut is tried again, fails again: refused, and nothing written after those bytes.
    let len = std::fs::metadata(store.path()).unwrap().len();
    let err = store.append(&rec(5)).await.unwrap_err();
    assert!(err.to_string().contains("could not be cut"), "{err}");
    assert_eq!(std::fs::metadata(store.path()).unwrap().len(), len);
    // Readers never see the failed bytes, even while they are in the file.
    let read = read_all(&mut store.reader(1), 100).await;
    assert_eq!(seqs(&read), vec![1, 2, 3]);
    // The fault clears: the cut succeeds, and the journal goes on where it was durable.
    script.clear();
    goes_on_after(&mut store, 3).await;
    holds_exactly(store.path(), 4);
}

#[tokio::test]
async fn a_rotation_failing_at_any_step_keeps_every_record_and_is_finished_by_a_reopen() {
    // A rotation creates two files, the new segment's metadata, then the segment: `Create`
    // is failed at the first (nothing created), then at the second (the metadata is there,
    // whole, and the segment is not).
    for (op, skip) in [
        (FileOp::Rename, 0),
        (FileOp::SyncDir, 0),
        (FileOp::Create, 0),
        (FileOp::Create, 1),
        (FileOp::Delete, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let script = Arc::new(Script::default());
        // Segments of ~60 bytes, two kept: every few records rotate, and retention deletes.
        let options = MiniStoreOptions::new()
            .max_bytes_per_segment(60)
            .max_segments(2);
        let mut store = options
            .clone()
            .inject_faults(script.clone())
            .open(&path)
            .await
            .unwrap();
        let mut acknowledged = Vec::new();
        let mut refused = false;
        script.fail_after(op, skip, EIO, 1);
        for i in 1..=12u64 {
            match store.append(&rec(i)).await {
                Ok(()) => acknowledged.push(i),
                Err(e) => {
                    // The records were durable before the rotation failed: they were
                    // acknowledged, and only later appends are refused.
                    assert!(matches!(e, MiniStoreError::Poisoned { .. }), "{op:?}: {e}");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "{op:?}: the fault never fired");
        drop(store);
        let store = options.open(&path).await.unwrap();
        assert_eq!(store.last_seq(), *acknowledged.last().unwrap(), "{op:?}");
        let oldest = store.durable().first_seq;
        let read = read_all(&mut store.reader(1), 100).await;
        let expected: Vec<u64> = acknowledged
            .iter()
            .copied()
            .filter(|&s| s >= oldest)
            .collect();
        assert_eq!(seqs(&read), expected, "{op:?} after {skip}");
        for r in &read {
            assert_eq!(r.parse::<String>().unwrap(), rec(r.seq));
        }
        assert!(
            !file_names(dir.path()).iter().any(|f| f.ends_with(".tmp")),
            "{op:?} after {skip}: {:?}",
            file_names(dir.path())
        );
    }
}

/// Watches a journal's files at every file operation of its writer (it injects no fault):
/// what a reader in another thread or process could find at that instant.
#[derive(Debug)]
struct Watcher {
    dir: std::path::PathBuf,
    creations: std::sync::atomic::AtomicU64,
    seen: Mutex<Vec<String>>,
}

impl FaultInjector for Watcher {
    fn fault(&self, op: FileOp, path: &Path) -> Option<Fault> {
        if op == FileOp::Create {
            self.creations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(why) = each_segment_has_its_whole_metadata(&self.dir) {
            let at = path.file_name().unwrap().to_string_lossy();
            self.seen
                .lock()
                .unwrap()
                .push(format!("before {op:?} of {at}: {why}"));
        }
        None
    }
}

/// Each segment a reader can find (the active file once its header is whole, each rotated
/// one) has the metadata file named by its first seq, and every metadata file has a whole
/// header (magic, and the first seq its name says).
fn each_segment_has_its_whole_metadata(dir: &Path) -> Result<(), String> {
    let names = file_names(dir);
    for name in &names {
        let Some(rest) = name.strip_prefix("journal.jsonl") else {
            continue;
        };
        let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
        if let Some(seq) = rest
            .strip_prefix(".from-")
            .and_then(|r| r.strip_suffix(".meta"))
        {
            let whole = bytes.len() >= 36
                && bytes.starts_with(b"MSMETA01")
                && bytes[8..16] == seq.parse::<u64>().unwrap().to_le_bytes();
            if !whole {
                return Err(format!("{name} has no whole header: {} bytes", bytes.len()));
            }
        }
        let segment = rest.is_empty() || rest[1..].bytes().all(|b| b.is_ascii_digit());
        let Some(header_end) = bytes.iter().position(|&b| b == b'\n') else {
            continue;
        };
        if !segment {
            continue;
        }
        let header = String::from_utf8_lossy(&bytes[..header_end]);
        let first_seq = header.rsplit_once("first_seq=").unwrap().1;
        let meta = format!("journal.jsonl.from-{first_seq}.meta");
        if !names.contains(&meta) {
            return Err(format!("{name} (from seq {first_seq}) has no {meta}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn at_every_step_of_a_rotation_each_segment_a_reader_finds_has_its_whole_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let watcher = Arc::new(Watcher {
        dir: dir.path().to_path_buf(),
        creations: Default::default(),
        seen: Mutex::default(),
    });
    // Segments of ~60 bytes, three kept: every other append rotates, and retention deletes.
    let mut store = MiniStoreOptions::new()
        .max_bytes_per_segment(60)
        .max_segments(3)
        .inject_faults(watcher.clone())
        .open(dir.path().join("journal.jsonl"))
        .await
        .unwrap();
    for i in 1..=30u64 {
        store.append(&rec(i)).await.unwrap();
    }
    let rotated = rotated_segments(store.path());
    let rotations: u64 = rotated
        .last()
        .unwrap()
        .extension()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rotations >= 10, "{rotations} rotations");
    assert_eq!(rotated.len(), 2);
    // Every step of each was watched: both creations among them.
    let creations = watcher.creations.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(creations, 2 * rotations);
    let oldest = store.durable().first_seq;
    let read = read_all(&mut store.reader(oldest), 100).await;
    assert_eq!(seqs(&read), (oldest..=30).collect::<Vec<_>>());
    assert_eq!(watcher.seen.lock().unwrap().as_slice(), &[] as &[String]);
}

#[tokio::test]
async fn through_the_server_each_fault_is_the_right_status_and_the_journal_goes_on() {
    use ministore_server::Journals;
    use tonic::Code;
    let dir = tempfile::tempdir().unwrap();
    let script = Arc::new(Script::default());
    let journals = Journals::new(
        dir.path(),
        MiniStoreOptions::new().inject_faults(script.clone()),
    );
    let journal = journals.get("j", true).await.unwrap();
    let line = |s: &str| JsonLine::from_slice(s.as_bytes()).unwrap();
    assert_eq!(
        journal
            .append(Append::new(vec![line("1")]))
            .await
            .unwrap()
            .seqs,
        1..2
    );
    for (fault, code) in [
        (
            Rule {
                op: FileOp::Fsync,
                errno: EIO,
                short: None,
                skip: 0,
                times: 1,
            },
            Code::Unavailable,
        ),
        (
            Rule {
                op: FileOp::Write,
                errno: ENOSPC,
                short: Some(1),
                skip: 0,
                times: 1,
            },
            Code::ResourceExhausted,
        ),
        (
            Rule {
                op: FileOp::Write,
                errno: EIO,
                short: None,
                skip: 0,
                times: 1,
            },
            Code::Unavailable,
        ),
    ] {
        script.add(fault.clone());
        let err = journal
            .append(Append::new(vec![line("2"), line("3")]))
            .await
            .unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), code, "{fault:?}");
        assert_eq!(journal.durable().last_seq, 1, "{fault:?}");
    }
    assert_eq!(
        journal
            .append(Append::new(vec![line("2")]))
            .await
            .unwrap()
            .seqs,
        2..3
    );
    journals.shut_down().await;
    let stored: Vec<u64> = MiniStore::replay(dir.path().join("j/journal.jsonl"))
        .await
        .unwrap();
    assert_eq!(stored, vec![1, 2]);
}

#[tokio::test]
async fn a_failed_read_is_an_error_naming_the_file_and_the_reader_goes_on_once_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let (store, script) = journal(dir.path(), MiniStoreOptions::new()).await;
    script.fail(FileOp::Read, EIO, 2);
    let mut reader = store.reader(1);
    for _ in 0..2 {
        let err = reader.next_batch(10).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO), "{err}");
        assert!(err.to_string().contains("journal.jsonl"), "{err}");
    }
    // The fault is gone: the same reader reads from where it was, nothing skipped.
    assert_eq!(seqs(&reader.next_batch(10).await.unwrap()), [1, 2, 3]);
    holds_exactly(&dir.path().join("journal.jsonl"), 3);
}
