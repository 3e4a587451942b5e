//! Crashes of the real `ministore-server` binary: SIGKILL at a random moment under load, and
//! the files a crash can leave (a record cut at any byte, a rotation cut short) served by a
//! fresh binary.
//!
//! The promise under test: no acknowledged record is ever lost or moved, sequence numbers
//! stay `1..=last` with no gap and no duplicate, and a follower resumes after a restart. The
//! store-level versions of the hand-made states are in `store_recovery.rs`; here the point
//! is the server serving such data directories.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ministore_client::{Client, ClientBuilder};
use ministore_tests::files::{copy_dir, file_names, header};
use ministore_tests::server::ServerProcess;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Kill-and-restart rounds of the load test.
const ROUNDS: u64 = 8;
/// Concurrent writers per round.
const WRITERS: u64 = 16;
/// Small segments and no retention: rotations happen every few hundred records under
/// load, and every record stays on disk to be checked.
const SMALL_SEGMENTS: [&str; 4] = ["--max-bytes-per-segment", "65536", "--max-segments", "0"];

/// splitmix64: a tiny seeded generator, so a failing run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// `MINISTORE_CRASH_SEED` if set, else a fresh seed. The seed fixes the kill points (after
/// how many acknowledged appends) and the batch sizes; the interleaving is up to the OS.
fn seed() -> u64 {
    match std::env::var("MINISTORE_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("MINISTORE_CRASH_SEED must be a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// One record of the load test: unique by (round, writer, i).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    round: u64,
    writer: u64,
    i: u64,
    pad: String,
}

impl Rec {
    fn new(round: u64, writer: u64, i: u64) -> Rec {
        Rec {
            round,
            writer,
            i,
            pad: "ministore ".repeat(16),
        }
    }

    fn id(&self) -> (u64, u64, u64) {
        (self.round, self.writer, self.i)
    }
}

/// Starts the binary on `data`, on `addr` if given (so a follower finds it again after a
/// restart), else on a free port.
fn start(data: &Path, addr: Option<&str>) -> ServerProcess {
    let mut args = SMALL_SEGMENTS.to_vec();
    if let Some(addr) = addr {
        args.extend(["--listen", addr]);
    }
    ServerProcess::start(data, &args)
}

/// Appends until the server goes away, one record or a batch of 1 to 4 (a quarter of the
/// writers) at a time, and returns every (seq, record) that was acknowledged. An append
/// may fail only once `killed` is set.
async fn write_until_killed(
    client: Client,
    round: u64,
    writer: u64,
    mut rng: Rng,
    acks: Arc<watch::Sender<u64>>,
    killed: Arc<AtomicBool>,
) -> Vec<(u64, Rec)> {
    let mut acked = Vec::new();
    let mut i = 0;
    loop {
        let batch = writer.is_multiple_of(4);
        let n = if batch { rng.range(1, 4) } else { 1 };
        let recs: Vec<Rec> = (i..i + n).map(|i| Rec::new(round, writer, i)).collect();
        i += n;
        let result = if batch {
            client.append_batch("load", &recs).await
        } else {
            client.append("load", &recs[0]).await.map(|seq| seq..=seq)
        };
        match result {
            Ok(seqs) => {
                assert_eq!(seqs.clone().count(), recs.len(), "{seqs:?}");
                acked.extend(seqs.zip(recs));
                acks.send_modify(|count| *count += n);
            }
            Err(e) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "round {round}, writer {writer}: an append failed while the server ran: {e}"
                );
                return acked;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_never_loses_an_acknowledged_record() {
    let seed = seed();
    println!("seed {seed} (MINISTORE_CRASH_SEED={seed} makes the same random choices)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();

    let first = start(data, None);
    let addr = first.addr.to_string();
    let client = Client::connect(first.url()).await.unwrap();
    let genesis = Rec::new(0, WRITERS, 0);
    let mut acked = vec![(client.append("load", &genesis).await.unwrap(), genesis)];

    // A follower tails the journal through every crash: it reconnects to the restarted
    // server (same address) and resumes after the last record it received.
    let followed: Arc<Mutex<Vec<(u64, Rec)>>> = Arc::default();
    let (followed_to, mut follower_at) = watch::channel(0u64);
    let follower = {
        let client = ClientBuilder::new(first.url())
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect()
            .await
            .unwrap();
        let followed = followed.clone();
        tokio::spawn(async move {
            let mut tail = client.stream::<Rec>("load", 1, true);
            while let Some(item) = tail.next().await {
                let (seq, rec) = item.expect("the follower must survive crashes");
                followed.lock().unwrap().push((seq, rec));
                followed_to.send_replace(seq);
            }
        })
    };

    let mut server = Some(first);
    for round in 0..ROUNDS {
        let server = server.take().unwrap_or_else(|| start(data, Some(&addr)));
        // One attempt per append: the writers stop at the kill, and the next server starts
        // once they have (client_retries.rs covers appends retried across a restart).
        let client = ClientBuilder::new(server.url())
            .retry_budget(Duration::ZERO)
            .connect()
            .await
            .unwrap();
        let kill_after = rng.range(100, 1500);
        let (acks, mut acks_seen) = watch::channel(0u64);
        let acks = Arc::new(acks);
        let killed = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                tokio::spawn(write_until_killed(
                    client.clone(),
                    round,
                    writer,
                    Rng(rng.next()),
                    acks.clone(),
                    killed.clone(),
                ))
            })
            .collect();
        drop(acks);

        // The kill moment: once `kill_after` appends were acknowledged, with the writers
        // still going.
        acks_seen
            .wait_for(|count| *count >= kill_after)
            .await
            .expect("the writers stopped before the kill");
        killed.store(true, Ordering::SeqCst);
        server.signal("KILL");
        let (code, logs) = tokio::task::spawn_blocking(move || server.wait())
            .await
            .unwrap();
        assert_eq!(code, None, "the server should die of SIGKILL:\n{logs}");

        let before = acked.len();
        for writer in writers {
            acked.extend(writer.await.unwrap());
        }
        println!(
            "round {round}: SIGKILL after {kill_after} acknowledged appends; {} acknowledged this round, last seq {}",
            acked.len() - before,
            acked.iter().map(|a| a.0).max().unwrap()
        );
    }

    let server = start(data, Some(&addr));
    let client = Client::connect(server.url()).await.unwrap();
    let stored: Vec<(u64, Rec)> = client.replay("load", 1).await.unwrap();
    let last = stored.last().expect("records").0;
    assert!(
        stored.iter().map(|r| r.0).eq(1..=last),
        "sequence numbers must be 1..={last} with no gap"
    );
    let mut ids = HashSet::new();
    for (seq, rec) in &stored {
        assert!(
            ids.insert(rec.id()),
            "{rec:?} is stored twice, again at {seq}"
        );
    }
    for (seq, rec) in &acked {
        assert_eq!(
            stored.get(*seq as usize - 1).map(|s| &s.1),
            Some(rec),
            "acknowledged seq {seq} was lost or changed"
        );
    }
    // Each writer waited for one append before the next: its records stay in its order.
    let mut next_i: HashMap<(u64, u64), u64> = HashMap::new();
    for (seq, rec) in &stored {
        let at = next_i.entry((rec.round, rec.writer)).or_default();
        assert!(
            rec.i >= *at,
            "{rec:?} at seq {seq} is out of its writer's order"
        );
        *at = rec.i + 1;
    }
    let info = client.info("load").await.unwrap();
    assert_eq!((info.first_seq, info.last_seq), (1, last));
    assert!(info.segments > 5, "rotations under load: {info:?}");
    println!(
        "{last} records in {} segments: {} acknowledged, {} written but not acknowledged before a kill",
        info.segments,
        acked.len(),
        stored.len() - acked.len()
    );

    // The follower caught up through every restart, saw exactly what is stored, and never
    // a record twice or out of order.
    tokio::time::timeout(
        Duration::from_secs(20),
        follower_at.wait_for(|seq| *seq >= last),
    )
    .await
    .expect("the follower did not catch up after the restarts")
    .unwrap();
    follower.abort();
    let followed = followed.lock().unwrap().clone();
    assert_eq!(followed, stored, "what the follower saw");

    // And the journal goes on.
    assert_eq!(
        client
            .append("load", &Rec::new(ROUNDS, 0, 0))
            .await
            .unwrap(),
        last + 1
    );
}

/// Records with escapes and multi-byte UTF-8, so that cuts land inside both.
fn rec(i: u64) -> String {
    format!("rec {i}: \"quoted\" \\ é€😀")
}

fn recs(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|i| (i, rec(i))).collect()
}

/// Segments of 1 KiB: a few dozen records make a journal with rotated segments.
const TINY_SEGMENTS: [&str; 4] = ["--max-bytes-per-segment", "1024", "--max-segments", "0"];

/// Writes records `1..=n` to journal `name` through the binary, with at least `min` of them
/// and at least `in_active` in the active file, then stops the server cleanly. Returns `n`.
async fn write_journal(data: &Path, name: &str, min: u64, in_active: usize) -> u64 {
    let server = ServerProcess::start(data, &TINY_SEGMENTS);
    let client = Client::connect(server.url()).await.unwrap();
    let active = data.join(name).join("journal.jsonl");
    let mut n = 0;
    // Acknowledged records are fsynced: reading the file now sees them.
    let complete_lines = || {
        let bytes = std::fs::read(&active).unwrap();
        bytes.iter().filter(|&&b| b == b'\n').count()
    };
    while n < min || complete_lines() <= in_active {
        n += 1;
        assert_eq!(client.append(name, &rec(n)).await.unwrap(), n);
    }
    server.signal("TERM");
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    n
}

/// Checks that journal `name` on `client`'s server holds exactly records `1..=n` and
/// takes record `n + 1` next, right after them.
async fn assert_served_with(client: &Client, name: &str, n: u64) {
    let info = client.info(name).await.unwrap();
    assert_eq!((info.first_seq, info.last_seq), (1, n), "{name}");
    assert_eq!(
        client.append(name, &rec(n + 1)).await.unwrap(),
        n + 1,
        "{name}"
    );
    let stored: Vec<(u64, String)> = client.replay(name, 1).await.unwrap();
    assert_eq!(stored, recs(1..=n + 1), "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_cut_at_any_byte_of_its_last_two_records_is_served_up_to_the_cut() {
    let src = tempfile::tempdir().unwrap();
    let n = write_journal(src.path(), "torn", 60, 2).await;
    let journal = src.path().join("torn");
    assert!(file_names(&journal).len() > 3, "rotated segments expected");
    let text = std::fs::read(journal.join("journal.jsonl")).unwrap();
    let end = text.len();
    let line_start = |before: usize| {
        text[..before - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1
    };
    let last = line_start(end);
    let second_last = line_start(last);

    // One journal per cut, all served by one server: each is opened (and repaired) by the
    // server on its first request.
    let data = tempfile::tempdir().unwrap();
    for cut in second_last..=end {
        let dir = data.path().join(format!("cut{cut}"));
        copy_dir(&journal, &dir);
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("journal.jsonl"))
            .and_then(|f| f.set_len(cut as u64))
            .unwrap();
    }
    let server = ServerProcess::start(data.path(), &TINY_SEGMENTS);
    let client = Client::connect(server.url()).await.unwrap();
    for cut in second_last..=end {
        // A line is a record only with its '\n'.
        let complete = match cut {
            c if c == end => n,
            c if c >= last => n - 1,
            _ => n - 2,
        };
        assert_served_with(&client, &format!("cut{cut}"), complete).await;
    }
    println!(
        "{} cuts between bytes {second_last} and {end}",
        end - second_last + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_cut_short_at_any_step_is_served_with_every_record() {
    let src = tempfile::tempdir().unwrap();
    let n = write_journal(src.path(), "rot", 60, 1).await;
    let journal = src.path().join("rot");
    let rotated = file_names(&journal)
        .iter()
        .filter_map(|f| f.strip_prefix("journal.jsonl.")?.parse::<u64>().ok())
        .max()
        .expect("rotated segments");
    let sealed = format!("journal.jsonl.{:06}", rotated + 1);
    let new_header = header(n + 1);

    // The states a crash during `rotate` (src/writer.rs) can leave once the active file was
    // renamed: no active file; an empty one; a header cut short; the rotation complete.
    // Each with the new segment's metadata file not yet begun, or half-created (its `.tmp`,
    // never renamed into place; the whole one, without an active file, is
    // store_io_faults.rs's).
    let mut actives: Vec<(String, Option<&[u8]>)> = vec![
        ("renamed".into(), None),
        ("empty".into(), Some(b"")),
        ("complete".into(), Some(new_header.as_bytes())),
    ];
    for cut in 1..new_header.len() {
        actives.push((format!("header{cut}"), Some(&new_header.as_bytes()[..cut])));
    }
    let meta_tmp = format!("journal.jsonl.from-{}.meta.tmp", n + 1);
    let mut states = Vec::new();
    for (name, active) in actives {
        states.push((format!("{name}-meta-tmp"), active, true));
        states.push((name, active, false));
    }
    let data = tempfile::tempdir().unwrap();
    for (name, active, half_created_meta) in &states {
        let dir = data.path().join(name);
        copy_dir(&journal, &dir);
        std::fs::rename(dir.join("journal.jsonl"), dir.join(&sealed)).unwrap();
        if let Some(bytes) = active {
            std::fs::write(dir.join("journal.jsonl"), bytes).unwrap();
        }
        if *half_created_meta {
            std::fs::write(dir.join(&meta_tmp), b"MSMETA01\x07").unwrap();
        }
    }

    let server = ServerProcess::start(data.path(), &TINY_SEGMENTS);
    let client = Client::connect(server.url()).await.unwrap();
    for (name, _, _) in &states {
        assert_served_with(&client, name, n).await;
        let dir = data.path().join(name);
        let active = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
        assert!(
            active.starts_with(&new_header),
            "{name}: the new active file starts at seq {}: {active:?}",
            n + 1
        );
        let files = file_names(&dir);
        assert!(
            files.contains(&format!("journal.jsonl.from-{}.meta", n + 1))
                && !files.iter().any(|f| f.ends_with(".tmp")),
            "{name}: {files:?}"
        );
    }
}
