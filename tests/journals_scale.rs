//! Many journals on a bounded server: a fixed pool of writer threads, at most
//! `--max-journals` journals with open files, idle ones closed and reopened on their next
//! append without losing a record, a seq, or a follower.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ministore::{Append, JournalReader, JsonLine, MiniStore, MiniStoreOptions};
use ministore_server::{Config, Journals};
use ministore_tests::events::{Records, follower};
use ministore_tests::server::{ServerProcess, TestServer};

/// Descriptors of process `pid` that name files of journals under `dir` (not the data
/// directory's own lock file), each by its file's path.
fn journal_descriptors(pid: &str, dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter(|target| target.starts_with(&dir) && !target.ends_with(".ministore.lock"))
                .collect()
        })
        .unwrap_or_default()
}

fn descriptors_under(pid: &str, dir: &Path) -> usize {
    journal_descriptors(pid, dir).len()
}

/// Descriptors of process `pid` into `dir` once they are at most `bound`, or after 5 s
/// whatever they are. A writer that reopened a journal closes another only after it has
/// replied, so for a moment each writer thread may hold one journal beyond
/// `--max-journals`.
async fn settled_descriptors(pid: &str, dir: &Path, bound: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = descriptors_under(pid, dir);
        if held <= bound || Instant::now() > deadline {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The names of the threads of process `pid`, counted.
fn threads_of(pid: u32) -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // "writer-3" and "writer-12" are one kind of thread.
        let kind = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        *names.entry(kind.to_owned()).or_default() += 1;
    }
    names
}

#[tokio::test]
async fn many_journals_share_a_bounded_set_of_threads_and_descriptors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::start(&data, &["--max-journals", "50", "--writer-threads", "4"]);
    let pid = server.child.id();
    let client = ministore_client::Client::connect(server.url())
        .await
        .unwrap();
    const JOURNALS: usize = 300;
    // Two rounds over 300 journals with room for 50: every append of the second round
    // reopens a journal closed to make room for others.
    for round in 1..=2u64 {
        let mut appends = tokio::task::JoinSet::new();
        for j in 0..JOURNALS {
            let client = client.clone();
            appends.spawn(async move { (j, client.append(&format!("j{j}"), &round).await) });
            if appends.len() >= 32 {
                let (j, seq) = appends.join_next().await.unwrap().unwrap();
                assert_eq!(seq.unwrap(), round, "journal j{j}");
            }
        }
        while let Some(done) = appends.join_next().await {
            let (j, seq) = done.unwrap();
            assert_eq!(seq.unwrap(), round, "journal j{j}");
        }
    }
    let threads = threads_of(pid);
    let total: usize = threads.values().sum();
    let writers = threads.get("writer-").copied().unwrap_or(0);
    let fsync = threads.get("ministore-fsync").copied().unwrap_or(0);
    // The bound the README documents: writer threads, as many fsync helpers, one async
    // worker per core, the blocking pool, and a few of the process's own.
    let cores = std::thread::available_parallelism().unwrap().get();
    let bound = 4 + 4 + cores + ministore_server::MAX_BLOCKING_THREADS + 8;
    assert_eq!(writers, 4, "{threads:?}");
    assert!(fsync <= 4, "{threads:?}");
    assert!(
        total <= bound,
        "{total} threads, more than {bound}: {threads:?}"
    );
    // Each open journal holds 3 descriptors (segment, metadata, lock), and at most 50
    // journals are open, whatever number was used.
    let held = settled_descriptors(&pid.to_string(), &data, 3 * 50).await;
    assert!(held <= 3 * 50, "{held} descriptors into the data directory");
    server.signal("TERM");
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
}

/// The records (seq, value) of journal `name` in `data_dir`, as its files hold them once
/// the server has stopped.
async fn records_on_disk(data_dir: &Path, name: &str) -> Vec<(u64, u64)> {
    let path: PathBuf = data_dir.join(name).join("journal.jsonl");
    let store = ministore::MiniStore::open(&path).await.unwrap();
    let mut reader = store.reader(1);
    let mut out = Vec::new();
    loop {
        let batch = reader.next_batch(1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(
            batch
                .into_iter()
                .map(|r| (r.seq, serde_json::from_str(&r.json).unwrap())),
        );
    }
}

#[tokio::test]
async fn closed_journals_reopen_with_every_record_and_their_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("data"));
    config.max_journals = 2;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    // Five journals, two open at a time: each append closes the least recently used.
    for round in 1..=4u64 {
        for j in 0..5 {
            let seq = client.append(&format!("j{j}"), &(j * 100 + round)).await;
            assert_eq!(seq.unwrap(), round, "journal j{j}, round {round}");
        }
        let held = settled_descriptors("self", &server.data_dir, 3 * 2).await;
        assert!(held <= 3 * 2, "{held} descriptors open, for 2 journals");
    }
    for j in 0..5u64 {
        let read: Vec<(u64, u64)> = client.replay(&format!("j{j}"), 1).await.unwrap();
        let expected: Vec<(u64, u64)> = (1..=4).map(|r| (r, j * 100 + r)).collect();
        assert_eq!(read, expected, "journal j{j} as served");
    }
    let data = server.data_dir.clone();
    server.stop().await.unwrap();
    for j in 0..5u64 {
        let expected: Vec<(u64, u64)> = (1..=4).map(|r| (r, j * 100 + r)).collect();
        assert_eq!(
            records_on_disk(&data, &format!("j{j}")).await,
            expected,
            "j{j} on disk"
        );
    }
}

#[tokio::test]
async fn a_follower_keeps_receiving_while_its_journal_is_closed_and_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("data"));
    config.max_journals = 1;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    client.append("followed", &1).await.unwrap();
    let (mut events, first) = follower(&client, "followed", 1).await;
    assert_eq!(first.seq, 1);
    // Another journal takes the only place: the followed journal's files close.
    client.append("other", &1).await.unwrap();
    let followed = server.data_dir.join("followed");
    // The writer's files close at once, and the waiting follower holds none.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journal_descriptors("self", &followed).is_empty() {
        let held = journal_descriptors("self", &followed);
        assert!(
            !held.iter().any(|p| p.ends_with("journal.jsonl.lock")),
            "the journal is still open for writing: {held:?}"
        );
        assert!(Instant::now() < deadline, "still open 10 s later: {held:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its next append reopens it, and the follower sees the record.
    assert_eq!(client.append("followed", &2).await.unwrap(), 2);
    let next = events.record().await.unwrap().expect("the stream goes on");
    assert_eq!(next.seq, 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_journal_closes_its_files_and_reopens_on_the_next_append() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("data"));
    config.journal_idle_seconds = 0;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    assert_eq!(client.append("quiet", &1).await.unwrap(), 1);
    let dir = server.data_dir.join("quiet");
    // The server looks for idle journals every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while descriptors_under("self", &dir) > 0 {
        assert!(
            Instant::now() < deadline,
            "its files are still open 10 s later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.append("quiet", &2).await.unwrap(), 2);
    let read: Vec<(u64, u64)> = client.replay("quiet", 1).await.unwrap();
    assert_eq!(read, vec![(1, 1), (2, 2)]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_with_appends_in_flight_on_many_journals_keeps_every_acknowledged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("data"));
    config.max_journals = 4;
    config.writer_threads = 2;
    let server = TestServer::start_with(config).await;
    let client = ministore_tests::server::client_without_retries(&server.url()).await;
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut appends = tokio::task::JoinSet::new();
    for i in 0..400u64 {
        let (client, acked) = (client.clone(), acked_tx.clone());
        appends.spawn(async move {
            let journal = format!("j{}", i % 40);
            let result = client.append(&journal, &i).await;
            if result.is_ok() {
                let _ = acked.send(());
            }
            (journal, i, result)
        });
    }
    drop(acked_tx);
    // Some are acknowledged, most still in flight: stop now.
    for _ in 0..10 {
        acked_rx.recv().await.expect("ten appends acknowledged");
    }
    let data = server.data_dir.clone();
    server.stop().await.unwrap();
    let mut acknowledged: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    while let Some(done) = appends.join_next().await {
        let (journal, i, result) = done.unwrap();
        if let Ok(seq) = result {
            acknowledged.entry(journal).or_default().push((seq, i));
        }
    }
    assert!(acknowledged.values().map(Vec::len).sum::<usize>() >= 10);
    for (journal, acked) in acknowledged {
        let on_disk = records_on_disk(&data, &journal).await;
        let seqs: Vec<u64> = on_disk.iter().map(|r| r.0).collect();
        assert_eq!(
            seqs,
            (1..=on_disk.len() as u64).collect::<Vec<_>>(),
            "{journal}: seqs without a gap"
        );
        for record in acked {
            assert!(
                on_disk.contains(&record),
                "{journal}: acknowledged {record:?} is on disk"
            );
        }
    }
}

fn append(values: &[u64], key: Option<&str>) -> Append {
    let lines = values.iter().map(|v| JsonLine::from_value(v).unwrap());
    let append = Append::new(lines.collect());
    match key {
        Some(key) => append.key(key),
        None => append,
    }
}

#[tokio::test]
async fn a_journal_closed_for_room_reopens_from_its_kept_state_with_its_keys_and_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let journals = Journals::new(dir.path(), MiniStoreOptions::new()).with_max_open(1);
    let a = journals.get("a", true).await.unwrap();
    let keyed = a.append(append(&[1], Some("once"))).await.unwrap();
    assert_eq!(keyed.seqs, 1..2);
    let mut follower = JournalReader::with_durable(a.path(), 1, a.watch_durable());
    let seqs_read = |batch: Vec<ministore::Record>| batch.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs_read(follower.next_batch(10).await.unwrap()), vec![1]);
    assert_eq!(journals.warm_journals().0, 0, "nothing closed yet");
    // Opening b closes a, whose state is kept.
    let b = journals.get("b", true).await.unwrap();
    let (warm, bytes) = journals.warm_journals();
    assert_eq!(warm, 1);
    assert!(bytes > 0);
    for round in 2..=4u64 {
        // Each append reopens its journal from the kept state, and closes the other one
        // (keeping its state) once it has replied.
        let retry = a.append(append(&[1], Some("once"))).await.unwrap();
        assert_eq!((retry.seqs, retry.duplicate), (1..2, true), "round {round}");
        assert_eq!(
            a.append(append(&[round], None)).await.unwrap().seqs.start,
            round
        );
        assert_eq!(
            b.append(append(&[round], None)).await.unwrap().seqs.start,
            round - 1
        );
        // The follower of a reads each of its records, across its closes and reopens.
        let read = seqs_read(follower.next_batch(10).await.unwrap());
        assert_eq!(read, vec![round], "round {round}");
    }
    journals.shut_down().await;
    let a_records: Vec<u64> = MiniStore::replay(dir.path().join("a/journal.jsonl"))
        .await
        .unwrap();
    assert_eq!(a_records, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn the_state_kept_for_closed_journals_stays_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    // One journal's kept state, measured.
    let one = {
        let journals =
            Journals::new(dir.path().join("probe"), MiniStoreOptions::new()).with_max_open(1);
        journals.get("p0", true).await.unwrap();
        journals.get("p1", true).await.unwrap();
        let (warm, bytes) = journals.warm_journals();
        assert_eq!(warm, 1);
        journals.shut_down().await;
        bytes
    };
    for (budget, most) in [(2 * one + one / 2, 2), (0, 0)] {
        let data = dir.path().join(format!("budget-{budget}"));
        let journals = Journals::new(&data, MiniStoreOptions::new())
            .with_max_open(1)
            .with_warm_budget(budget);
        for round in 1..=3u64 {
            for name in &names {
                let journal = journals.get(name, true).await.unwrap();
                let seqs = journal.append(append(&[round], None)).await.unwrap().seqs;
                // Reopened from kept state or in full, the numbering goes on.
                assert_eq!(seqs, round..round + 1, "{name}, budget {budget}");
                let (warm, bytes) = journals.warm_journals();
                assert!(warm <= most, "{warm} kept, budget {budget}");
                assert!(bytes <= budget, "{bytes} bytes kept, budget {budget}");
            }
        }
        if most > 0 {
            assert_eq!(journals.warm_journals().0, most, "the budget is used");
        }
        journals.shut_down().await;
        for name in &names {
            let path = data.join(name).join("journal.jsonl");
            let stored: Vec<u64> = MiniStore::replay(path).await.unwrap();
            assert_eq!(stored, vec![1, 2, 3], "{name}, budget {budget}");
        }
    }
}

#[tokio::test]
async fn a_journal_in_use_keeps_its_files_while_idle_ones_are_closed_to_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let journals = Journals::new(dir.path(), MiniStoreOptions::new()).with_max_open(2);
    let hot = journals.get("hot", true).await.unwrap();
    for i in 0..20u64 {
        hot.append(append(&[i], None)).await.unwrap();
        // A journal not seen before needs room: the idle one used longest ago goes.
        let cold = journals.get(&format!("cold{i}"), true).await.unwrap();
        cold.append(append(&[i], None)).await.unwrap();
        let held = journal_descriptors("self", &dir.path().join("hot"));
        assert_eq!(held.len(), 3, "round {i}: hot's files are closed: {held:?}");
    }
    let held = settled_descriptors("self", dir.path(), 3 * 2).await;
    assert!(held <= 3 * 2, "{held} descriptors for 2 open journals");
    journals.shut_down().await;
}

#[tokio::test]
async fn a_journal_forgotten_while_closed_comes_back_from_its_kept_state() {
    let dir = tempfile::tempdir().unwrap();
    let journals =
        Journals::new(dir.path(), MiniStoreOptions::new()).with_idle_close(Duration::ZERO);
    let journal = journals.get("a", true).await.unwrap();
    journal.append(append(&[1], Some("k"))).await.unwrap();
    drop(journal);
    // Held (as an RPC or a follower holds it): closed when idle, never forgotten.
    let held = journals.get("held", true).await.unwrap();
    held.append(append(&[1], None)).await.unwrap();
    // Idle for the idle time, nobody holding it: closed (its state kept), then forgotten.
    journals.sweep();
    let known = |journals: &Journals| -> Vec<String> {
        let open = journals.open_journals();
        open.iter().map(|j| j.name().to_owned()).collect()
    };
    assert_eq!(
        known(&journals),
        vec!["held".to_owned()],
        "a forgotten, held kept"
    );
    drop(held);
    // Once let go, and once its writer has finished the turn of its last append.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !known(&journals).is_empty() {
        assert!(std::time::Instant::now() < deadline, "held never forgotten");
        tokio::time::sleep(Duration::from_millis(1)).await;
        journals.sweep();
    }
    assert_eq!(
        journals.warm_journals().0,
        2,
        "both closed, their state kept"
    );

    let journal = journals.get("a", true).await.unwrap();
    assert_eq!(journals.warm_journals().0, 1, "its kept state was used");
    let retry = journal.append(append(&[1], Some("k"))).await.unwrap();
    assert_eq!((retry.seqs, retry.duplicate), (1..2, true));
    assert_eq!(journal.append(append(&[2], None)).await.unwrap().seqs, 2..3);
    let mut reader = JournalReader::with_durable(journal.path(), 1, journal.watch_durable());
    let read: Vec<u64> = reader
        .next_batch(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    assert_eq!(read, vec![1, 2]);
    journals.shut_down().await;
}
