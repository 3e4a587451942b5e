//! Many journals on a bounded server: a fixed pool of writer threads, at most
//! `--max-journals` journals with open files, idle ones closed and reopened on their next
//! append without losing a record, a seq, or a follower.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ministore_server::Config;
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
    let held = descriptors_under(&pid.to_string(), &data);
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
        let held = descriptors_under("self", &server.data_dir);
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
