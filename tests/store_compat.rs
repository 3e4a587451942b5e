//! File compatibility with the published crate (`ministore` 0.1.7 from crates.io), both ways:
//! journals it wrote open, replay and stream here, and journals written here (or opened and
//! upgraded here) replay with it.

use std::path::{Path, PathBuf};

use ministore::{JsonLine, MiniStore, MiniStoreOptions};
use ministore_client::Client;
use ministore_published as published;
use ministore_tests::files::{PUBLISHED_HEADER, file_names, header, rotated_segments};
use ministore_tests::records::{read_all, seqs};
use ministore_tests::server::ServerProcess;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counter {
    Set { value: u32 },
    Inc { delta: u32 },
}

fn record(i: u32) -> Counter {
    match i % 3 {
        0 => Counter::Set { value: i },
        _ => Counter::Inc { delta: i },
    }
}

/// The journal's files, oldest first: rotated segments by number, then the active file.
fn segments_in_order(path: &Path) -> Vec<PathBuf> {
    let mut files = rotated_segments(path);
    files.push(path.to_path_buf());
    files
}

fn first_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split_inclusive('\n')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Writes `records` with the published crate, rotating at `max_bytes`, keeping every segment.
async fn write_published(path: &Path, records: &[Counter], max_bytes: u64) {
    let mut store = published::MiniStoreOptions::new()
        .max_bytes_per_segment(max_bytes)
        .max_segments(1000)
        .open(path)
        .await
        .unwrap();
    for r in records {
        store.append(r).await.unwrap();
    }
}

#[tokio::test]
async fn a_journal_written_by_the_published_crate_opens_replays_and_streams_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let written: Vec<Counter> = (1..=20).map(record).collect();
    write_published(&path, &written, 100).await;
    let files = segments_in_order(&path);
    assert!(
        files.len() >= 4,
        "the published crate should have rotated: {files:?}"
    );
    assert!(files.iter().all(|f| first_line(f) == PUBLISHED_HEADER));

    // replay
    let replayed: Vec<Counter> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written);

    // read_from: sequence numbers counted from the oldest file
    let read = read_all(&mut MiniStore::read_from(&path, 1), 100).await;
    assert_eq!(seqs(&read), (1..=20).collect::<Vec<u64>>());
    assert!(
        read.iter()
            .all(|r| r.parse::<Counter>().unwrap() == record(r.seq as u32))
    );
    let tail = read_all(&mut MiniStore::read_from(&path, 15), 100).await;
    assert_eq!(seqs(&tail), (15..=20).collect::<Vec<u64>>());

    // stream, file by file
    let mut streamed = Vec::new();
    let mut first_seqs = Vec::new();
    for file in &files {
        first_seqs.push(streamed.len() as u64 + 1);
        let stream = MiniStore::stream::<Counter>(file).await.unwrap();
        streamed.extend(stream.map(|r| r.unwrap()).collect::<Vec<_>>().await);
    }
    assert_eq!(streamed, written);

    // open: the same numbers, now written into every header
    let mut store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 20);
    assert_eq!(store.durable().first_seq, 1);
    for (file, first_seq) in files.iter().zip(&first_seqs) {
        assert_eq!(first_line(file), header(*first_seq), "{}", file.display());
    }
    assert_eq!(store.append_batch(&[record(21)]).await.unwrap(), 21..22);
    drop(store);

    // ... which the published crate still reads.
    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, (1..=21).map(record).collect::<Vec<_>>());
    let mut active = published::MiniStore::stream::<Counter>(&path)
        .await
        .unwrap();
    let mut from_active = Vec::new();
    while let Some(r) = active.next().await {
        from_active.push(r.unwrap());
    }
    assert_eq!(from_active.last(), Some(&record(21)));
}

#[tokio::test]
async fn a_journal_written_here_replays_with_the_published_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let written: Vec<Counter> = (1..=30).map(record).collect();
    let mut store = MiniStoreOptions::new()
        .max_bytes_per_segment(100)
        .max_segments(1000)
        .open(&path)
        .await
        .unwrap();
    // Every way of appending.
    for r in &written[..10] {
        store.append(r).await.unwrap();
    }
    for chunk in written[10..20].chunks(3) {
        store.append_batch(chunk).await.unwrap();
    }
    let lines: Vec<JsonLine> = written[20..]
        .iter()
        .map(|r| JsonLine::from_value(r).unwrap())
        .collect();
    store.append_json(&lines).await.unwrap();
    drop(store);
    assert!(
        segments_in_order(&path).len() >= 5,
        "{:?}",
        file_names(dir.path())
    );

    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written);
}

#[tokio::test]
async fn records_the_published_crate_appends_to_a_journal_written_here_continue_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let opts = MiniStoreOptions::new()
        .max_bytes_per_segment(100)
        .max_segments(1000);
    let mut store = opts.clone().open(&path).await.unwrap();
    for i in 1..=10 {
        store.append(&record(i)).await.unwrap();
    }
    drop(store);

    // The published crate appends and rotates: its new segments have no first_seq.
    let more: Vec<Counter> = (11..=20).map(record).collect();
    write_published(&path, &more, 100).await;
    assert!(
        segments_in_order(&path)
            .iter()
            .any(|f| first_line(f) == PUBLISHED_HEADER)
    );

    let mut store = opts.open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 20);
    store.append(&record(21)).await.unwrap();
    let read = read_all(&mut store.reader(1), 100).await;
    assert_eq!(seqs(&read), (1..=21).collect::<Vec<u64>>());
    assert!(
        read.iter()
            .all(|r| r.parse::<Counter>().unwrap() == record(r.seq as u32))
    );
}

/// The bytes `records` take in a file that starts at seq 1: header and JSON lines.
fn text_len(records: &[Counter]) -> u64 {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap().len() as u64 + 1)
        .sum::<u64>()
        + header(1).len() as u64
}

#[tokio::test]
async fn a_journal_closed_here_holds_no_preallocated_zeros_for_the_published_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let written: Vec<Counter> = (1..=30).map(record).collect();
    // Preallocated: the writer writes zeros ahead of its records, 256 KiB at a time.
    let mut store = MiniStoreOptions::new()
        .preallocate(true)
        .open(&path)
        .await
        .unwrap();
    store.append_batch(&written).await.unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > text_len(&written));
    drop(store);

    assert_eq!(std::fs::metadata(&path).unwrap().len(), text_len(&written));
    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written);
}

#[tokio::test]
async fn with_the_default_options_the_published_crate_reads_a_journal_while_it_is_open_here() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let mut written: Vec<Counter> = (1..=30).map(record).collect();
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append_batch(&written).await.unwrap();

    assert_eq!(std::fs::metadata(&path).unwrap().len(), text_len(&written));
    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written);

    written.push(record(31));
    store.append(&written[30]).await.unwrap();
    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written, "still open, one more record");
}

#[tokio::test]
async fn a_server_with_default_flags_keeps_its_journals_plain_json_lines_running_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let client = Client::connect(server.addr.to_string()).await.unwrap();
    let written: Vec<Counter> = (1..=20).map(record).collect();
    for r in &written {
        client.append("shared", r).await.unwrap();
    }

    let path = server.data_dir.join("shared").join("journal.jsonl");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), text_len(&written));
    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written, "read while the server runs");

    // Right after kill -9: the header and complete JSON lines, nothing else.
    server.signal("KILL");
    let (code, _) = server.wait();
    assert_eq!(code, None, "killed by a signal");
    let replayed: Vec<Counter> = published::MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written, "read after kill -9");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header(1).trim_end()));
    for (line, r) in lines.zip(&written) {
        assert_eq!(&serde_json::from_str::<Counter>(line).unwrap(), r, "{line}");
    }
    assert!(text.ends_with('\n'));
}
