//! The client retries for its caller: every append carries an idempotency key, outages are
//! retried with it, and a caller sees its one sequence number or a definite error. Against
//! the real server: a key sent twice is written once, a failed expectation and a reused key
//! are definite errors, an outage longer than the budget gives up with the key, and the
//! real binary killed with SIGKILL and restarted under 16 concurrent writers leaves every
//! acknowledged record stored exactly once, at the seq its caller was given.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ministore_client::{AppendOptions, Client, ClientBuilder, ClientError, Code};
use ministore_tests::server::{ServerProcess, TestServer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[tokio::test]
async fn an_append_with_a_key_sent_twice_is_written_once_and_answered_as_a_duplicate() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let order = serde_json::json!({"id": 42});
    let key = || AppendOptions::new().key("order-42");

    let first = client.append_with("orders", &order, key()).await.unwrap();
    client.append("orders", &"someone else's").await.unwrap();
    let again = client.append_with("orders", &order, key()).await.unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert_eq!((again.seq, again.duplicate), (1, true), "the original seq");

    let batch = || AppendOptions::new().key("import-1");
    let first = client
        .append_batch_with("orders", &[1, 2, 3], batch())
        .await
        .unwrap();
    let again = client
        .append_batch_with("orders", &[1, 2, 3], batch())
        .await
        .unwrap();
    assert_eq!((first.seqs.clone(), first.duplicate), (3..=5, false));
    assert_eq!((again.seqs, again.duplicate), (3..=5, true));

    let stored: Vec<(u64, serde_json::Value)> = client.replay("orders", 1).await.unwrap();
    assert_eq!(stored.len(), 5, "each written once: {stored:?}");
}

#[tokio::test]
async fn a_failed_expectation_is_aborted_with_the_journals_last_seq_and_a_reused_key_is_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.append_batch("j", &[1, 2, 3]).await.unwrap();

    let stale = client
        .append_with("j", &4, AppendOptions::new().expected_last_seq(1))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Some(Code::Aborted), "{stale}");
    assert_eq!(
        stale.last_seq(),
        Some(3),
        "the journal's last seq, from the trailer"
    );
    assert!(!stale.is_retryable());
    let stale_batch = client
        .append_batch_with("j", &[4, 5], AppendOptions::new().expected_last_seq(0))
        .await
        .unwrap_err();
    assert_eq!(stale_batch.last_seq(), Some(3), "{stale_batch}");
    assert_eq!(
        client.info("j").await.unwrap().last_seq,
        3,
        "nothing written"
    );

    let ok = client
        .append_with(
            "j",
            &4,
            AppendOptions::new().expected_last_seq(3).key("four"),
        )
        .await
        .unwrap();
    assert_eq!(ok.seq, 4);
    // A retry of the append that was written is answered before its (now stale)
    // expectation is checked.
    let retried = client
        .append_with(
            "j",
            &4,
            AppendOptions::new().expected_last_seq(3).key("four"),
        )
        .await
        .unwrap();
    assert_eq!((retried.seq, retried.duplicate), (4, true));

    let reused = client
        .append_with("j", &5, AppendOptions::new().key("four"))
        .await
        .unwrap_err();
    assert!(
        matches!(reused, ClientError::Rpc(_)),
        "a definite refusal, not an outage given up on: {reused:?}"
    );
    assert_eq!(reused.code(), Some(Code::AlreadyExists), "{reused}");
    assert!(
        reused.to_string().contains('4'),
        "names the original seq: {reused}"
    );
    assert!(!reused.is_retryable());
    assert_eq!(client.info("j").await.unwrap().last_seq, 4);
}

#[tokio::test]
async fn an_outage_longer_than_the_budget_gives_up_with_the_key_that_settles_it() {
    // A server that was there and is gone: its port refuses connections.
    let server = TestServer::start().await;
    let addr = server.addr;
    let data = server.stop_keeping_data().await;
    let client = ClientBuilder::new(addr.to_string())
        .retry_budget(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect_lazy()
        .unwrap();

    let started = std::time::Instant::now();
    let err = client
        .append_with("j", &1, AppendOptions::new().key("mine"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    let ClientError::GaveUp { key, attempts, .. } = &err else {
        panic!("expected GaveUp, got {err:?}");
    };
    assert_eq!(key.as_deref(), Some("mine"));
    assert!(*attempts >= 3, "retried with backoff: {err}");
    assert!(
        waited < Duration::from_secs(3),
        "within its budget: {waited:?}"
    );
    assert_eq!(err.code(), Some(Code::Unavailable));
    assert!(err.is_retryable());
    assert!(err.to_string().contains("\"mine\""), "{err}");

    // Without a key of the caller's, the key the client made is offered instead.
    let err = client.append("j", &1).await.unwrap_err();
    let ClientError::GaveUp { key: Some(key), .. } = &err else {
        panic!("expected GaveUp with a key, got {err:?}");
    };
    assert_eq!(key.len(), 32, "{key}");
    drop(data);
}

/// Kill-and-restart rounds of the load test.
const KILLS: usize = 3;
/// Concurrent writers: most plain appends (which share batches), some with keys of their
/// own, some batches.
const WRITERS: u64 = 16;
/// Appends acknowledged between one restart and the next kill.
const ACKS_PER_ROUND: u64 = 300;

/// One record: unique by (writer, i), padded so that the 64 KiB segments rotate under load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    writer: u64,
    i: u64,
    pad: String,
}

impl Rec {
    fn new(writer: u64, i: u64) -> Rec {
        Rec {
            writer,
            i,
            pad: "ministore ".repeat(16),
        }
    }
}

/// What a writer was told about each call: the seq and the record.
#[derive(Debug, Default)]
struct Acked {
    records: Vec<(u64, Rec)>,
    calls: u64,
    retried: u64,
    /// Calls whose first attempt was written but not answered: the retry got `duplicate`.
    duplicates: u64,
}

/// Appends until `stop`, each call one record or (writers 14 and 15) a batch of three; every
/// call must succeed, through whatever kills happen meanwhile.
async fn write_until_stopped(
    client: Client,
    writer: u64,
    acks: Arc<watch::Sender<u64>>,
    stop: Arc<AtomicBool>,
) -> Acked {
    let mut acked = Acked::default();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let (recs, result) = match writer {
            0..12 => {
                let rec = Rec::new(writer, i);
                let result = client.append_with("load", &rec, AppendOptions::new()).await;
                (
                    vec![rec],
                    result.map(|a| (a.seq..=a.seq, a.duplicate, a.attempts)),
                )
            }
            12..14 => {
                let rec = Rec::new(writer, i);
                let options = AppendOptions::new().key(format!("w{writer}-{i}"));
                let result = client.append_with("load", &rec, options).await;
                (
                    vec![rec],
                    result.map(|a| (a.seq..=a.seq, a.duplicate, a.attempts)),
                )
            }
            _ => {
                let recs: Vec<Rec> = (i..i + 3).map(|i| Rec::new(writer, i)).collect();
                let result = client
                    .append_batch_with("load", &recs, AppendOptions::new())
                    .await;
                (recs, result.map(|a| (a.seqs, a.duplicate, a.attempts)))
            }
        };
        let (seqs, duplicate, attempts) = result.unwrap_or_else(|e| {
            panic!("writer {writer}, record {i}: an append failed through a restart: {e}")
        });
        i += recs.len() as u64;
        assert_eq!(seqs.clone().count(), recs.len(), "{seqs:?}");
        acked.calls += 1;
        acked.retried += u64::from(attempts > 1);
        acked.duplicates += u64::from(duplicate);
        acked.records.extend(seqs.zip(recs));
        acks.send_modify(|n| *n += 1);
    }
    acked
}

/// Starts the binary on `data` (on `addr` if given, so the client finds it again), off the
/// runtime's threads: it waits for the server's "listening on" line.
async fn start(data: &Path, addr: Option<String>) -> ServerProcess {
    let data = data.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["--max-bytes-per-segment", "65536", "--max-segments", "0"];
        if let Some(addr) = &addr {
            args.extend(["--listen", addr]);
        }
        ServerProcess::start(&data, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_retried_through_sigkill_and_restart_are_each_stored_once_at_their_acked_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = start(tmp.path(), None).await;
    let addr = server.addr.to_string();
    // The client as the README shows it: default retry budget and backoff.
    let client = Client::connect(server.url()).await.unwrap();

    let (acks, mut acks_seen) = watch::channel(0u64);
    let acks = Arc::new(acks);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(write_until_stopped(
                client.clone(),
                w,
                acks.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(acks);

    let mut target = ACKS_PER_ROUND;
    for kill in 1..=KILLS {
        acks_seen
            .wait_for(|n| *n >= target)
            .await
            .expect("the writers stopped");
        // Mid-stream: the writers have calls on the wire right now.
        server.signal("KILL");
        let (code, logs) = tokio::task::spawn_blocking(move || server.wait())
            .await
            .unwrap();
        assert_eq!(
            code, None,
            "kill {kill}: the server should die of SIGKILL:\n{logs}"
        );
        server = start(tmp.path(), Some(addr.clone())).await;
        target = *acks_seen.borrow() + ACKS_PER_ROUND;
    }
    acks_seen.wait_for(|n| *n >= target).await.unwrap();
    stop.store(true, Ordering::SeqCst);

    let mut acked: Vec<(u64, Rec)> = Vec::new();
    let (mut calls, mut retried, mut duplicates) = (0, 0, 0);
    for writer in writers {
        let a = writer.await.unwrap();
        acked.extend(a.records);
        (calls, retried, duplicates) = (
            calls + a.calls,
            retried + a.retried,
            duplicates + a.duplicates,
        );
    }

    // Every seq was given to one record only.
    let mut by_seq: HashMap<u64, &Rec> = HashMap::new();
    for (seq, rec) in &acked {
        if let Some(other) = by_seq.insert(*seq, rec) {
            panic!("seq {seq} was acknowledged to both {other:?} and {rec:?}");
        }
    }
    // The journal holds exactly the acknowledged records, each once, each at its seq.
    let stored: Vec<(u64, Rec)> = client.replay("load", 1).await.unwrap();
    assert!(
        stored.iter().map(|s| s.0).eq(1..=stored.len() as u64),
        "seqs 1..=n with no gap"
    );
    let mut ids = HashSet::new();
    for (seq, rec) in &stored {
        assert!(
            ids.insert((rec.writer, rec.i)),
            "{rec:?} is stored twice, again at {seq}"
        );
        assert_eq!(
            by_seq.get(seq),
            Some(&rec),
            "record {seq} is stored but was not acknowledged with that seq"
        );
    }
    assert_eq!(stored.len(), acked.len(), "stored and acknowledged");
    let info = client.info("load").await.unwrap();
    println!(
        "{KILLS} SIGKILLs: {calls} calls acknowledged ({} records in {} segments); \
         {retried} calls retried, {duplicates} of them written by an attempt whose answer was lost",
        acked.len(),
        info.segments
    );
    assert!(
        retried > 0,
        "no call was retried: the kills did not interrupt any append"
    );
    assert!(info.segments > 1, "rotations under load: {info:?}");
}
