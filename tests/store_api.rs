//! The store's public API on real files: every behaviour its reference documentation
//! promises (the published crate's page, `/work/shared/spec/ministore-api.txt`, and the
//! additions documented in `ministore`'s own docs).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::task::Poll;

use ministore::{
    ActiveIndex, JournalReader, JsonLine, MiniStore, MiniStoreError, MiniStoreOptions,
};
use ministore_tests::files::{
    PUBLISHED_HEADER, SegmentIndex, file_names, header, index_path, rotated_segments,
};
use ministore_tests::records::{
    INDEXED_RECORDS, fixed_width, indexed_journal, indexed_options, read_all, seqs,
};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Counter {
    Set { value: u32 },
    Inc { delta: u32 },
}

fn journal(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal.jsonl")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The text of an active file whose store is open: its records, without the zeros the
/// writer writes ahead of them (checked to be nothing else), which it cuts on close.
fn written(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    assert!(
        bytes[end..].iter().all(|&b| b == 0),
        "{} holds more than zeros after its first NUL",
        path.display()
    );
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

/// Options that write zeros ahead of the records (off by default).
fn preallocated() -> MiniStoreOptions {
    MiniStoreOptions::new().preallocate(true)
}

#[tokio::test]
async fn by_default_the_active_file_is_plain_json_lines_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    for i in 1..=3u64 {
        store.append(&i).await.unwrap();
        let text = read(&path);
        let mut lines = text.lines();
        assert_eq!(format!("{}\n", lines.next().unwrap()), header(1));
        let records: Vec<u64> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records, (1..=i).collect::<Vec<_>>());
        assert!(text.ends_with('\n'));
    }
}

/// A 20-character record: 23 bytes as a journal line (quotes and newline included).
fn rec(i: u64) -> String {
    format!("r{i:019}")
}

/// The journal's files without the lock file.
fn segment_names(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| !n.ends_with(".lock") && !n.ends_with(".meta"))
        .collect()
}

/// The metadata files (keys, batch boundaries, checksums) in `dir`, sorted.
fn meta_names(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| n.ends_with(".meta"))
        .collect()
}

/// Polls `fut` once, with the task's real waker, and returns what it says.
/// A store of 100-byte segments keeping `max_segments`, with records `rec(1..=n)`
/// appended one call at a time (so rotation happens between them).
async fn appended_one_by_one(path: &Path, max_segments: usize, n: u64) -> MiniStore {
    let mut store = MiniStoreOptions::new()
        .max_bytes_per_segment(100)
        .max_segments(max_segments)
        .open(path)
        .await
        .unwrap();
    for i in 1..=n {
        store.append(&rec(i)).await.unwrap();
    }
    store
}

async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

#[tokio::test]
async fn open_creates_parent_directories_and_writes_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/journal.jsonl");

    let store = MiniStore::open(&path).await.unwrap();

    assert_eq!(store.last_seq(), 0);
    assert_eq!(store.path(), path);
    assert_eq!(read(&path), "// MINISTORE JOURNAL v0.1.4 first_seq=1\n");
}

#[tokio::test]
async fn open_writes_the_header_into_an_existing_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    std::fs::write(&path, "").unwrap();

    let mut store = MiniStore::open(&path).await.unwrap();
    assert_eq!(read(&path), header(1));
    store.append(&1).await.unwrap();

    assert_eq!(written(&path), format!("{}1\n", header(1)));
    drop(store);
    assert_eq!(read(&path), format!("{}1\n", header(1)));
}

#[tokio::test]
async fn reopening_a_journal_keeps_its_records_and_continues_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append(&Counter::Set { value: 1 }).await.unwrap();
    drop(store);

    let mut store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 1);
    store.append(&Counter::Inc { delta: 2 }).await.unwrap();
    assert_eq!(store.last_seq(), 2);

    let records: Vec<Counter> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(
        records,
        vec![Counter::Set { value: 1 }, Counter::Inc { delta: 2 }]
    );
}

#[tokio::test]
async fn appended_records_replay_in_order_while_the_store_is_open_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let written = vec![
        Counter::Set { value: 100 },
        Counter::Inc { delta: 25 },
        Counter::Inc { delta: 7 },
    ];

    let mut store = MiniStore::open(&path).await.unwrap();
    for (i, record) in written.iter().enumerate() {
        store.append(record).await.unwrap();
        assert_eq!(store.last_seq(), i as u64 + 1);
        // "The record is visible in subsequent replay calls": no close needed.
        let replayed: Vec<Counter> = MiniStore::replay(&path).await.unwrap();
        assert_eq!(replayed, written[..=i]);
    }
    drop(store);

    let replayed: Vec<Counter> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, written);
    assert_eq!(
        read(&path),
        format!(
            "{}{}\n{}\n{}\n",
            header(1),
            r#"{"Set":{"value":100}}"#,
            r#"{"Inc":{"delta":25}}"#,
            r#"{"Inc":{"delta":7}}"#
        )
    );
}

#[tokio::test]
async fn replay_of_a_journal_that_does_not_exist_is_empty() {
    let dir = tempfile::tempdir().unwrap();

    let missing_file: Vec<Counter> = MiniStore::replay(journal(&dir)).await.unwrap();
    let missing_dir: Vec<Counter> = MiniStore::replay(dir.path().join("no/such/dir/journal.jsonl"))
        .await
        .unwrap();

    assert!(missing_file.is_empty());
    assert!(missing_dir.is_empty());
    assert!(
        file_names(dir.path()).is_empty(),
        "replay must not create anything"
    );
}

#[tokio::test]
async fn replay_of_an_empty_journal_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    std::fs::write(&path, "").unwrap();
    let zero_bytes: Vec<Counter> = MiniStore::replay(&path).await.unwrap();

    drop(MiniStore::open(&path).await.unwrap());
    let header_only: Vec<Counter> = MiniStore::replay(&path).await.unwrap();

    assert!(zero_bytes.is_empty());
    assert!(header_only.is_empty());
}

#[tokio::test]
async fn replay_reads_rotated_segments_in_numeric_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    // Written by hand with the published crate's header (no sequence numbers), so only the
    // file names can give the order. As text, ".10" < ".1000" < ".2" < ".999".
    for (name, body) in [
        ("journal.jsonl.2", "1\n"),
        ("journal.jsonl.10", "2\n3\n"),
        ("journal.jsonl.999", "4\n"),
        ("journal.jsonl.1000", "5\n"),
        ("journal.jsonl", "6\n"),
    ] {
        std::fs::write(dir.path().join(name), format!("{PUBLISHED_HEADER}{body}")).unwrap();
    }

    let records: Vec<u64> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(records, vec![1, 2, 3, 4, 5, 6]);

    let read = read_all(&mut MiniStore::read_from(&path, 1), 100).await;
    assert_eq!(seqs(&read), vec![1, 2, 3, 4, 5, 6]);
    assert!(read.iter().all(|r| r.json == r.seq.to_string()));
}

#[tokio::test]
async fn replay_validates_the_header_of_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let bad = dir.path().join("journal.jsonl.000002");
    std::fs::write(
        dir.path().join("journal.jsonl.000001"),
        format!("{}1\n", header(1)),
    )
    .unwrap();
    std::fs::write(&bad, "2\n3\n").unwrap();
    std::fs::write(&path, format!("{}4\n", header(4))).unwrap();

    match MiniStore::replay::<u32, _>(&path).await {
        Err(MiniStoreError::BadHeader { path: p, .. }) => assert_eq!(p, bad),
        other => panic!("expected BadHeader naming {}, got {other:?}", bad.display()),
    }

    // The active file's header is checked too, and by `stream`.
    std::fs::write(&bad, format!("{}2\n3\n", header(2))).unwrap();
    std::fs::write(&path, "4\n").unwrap();
    match MiniStore::replay::<u32, _>(&path).await {
        Err(MiniStoreError::BadHeader { path: p, .. }) => assert_eq!(p, path),
        other => panic!(
            "expected BadHeader naming {}, got {other:?}",
            path.display()
        ),
    }
    match MiniStore::stream::<u32>(&path).await {
        Err(err @ MiniStoreError::BadHeader { .. }) => {
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}")
        }
        other => panic!("expected BadHeader, got {other:?}"),
    }
}

#[tokio::test]
async fn a_record_of_the_wrong_type_is_corrupt_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let rotated = dir.path().join("journal.jsonl.000001");
    std::fs::write(&rotated, format!("{}1\n2\n", header(1))).unwrap();
    std::fs::write(&path, format!("{}3\n\"three\"\n4\n", header(3))).unwrap();

    // Line 1 is the header, so the third record of the journal is line 3 of the active file.
    match MiniStore::replay::<u32, _>(&path).await {
        Err(MiniStoreError::Corrupt { path: p, line, .. }) => {
            assert_eq!((p, line), (path.clone(), 3))
        }
        other => panic!("expected Corrupt at {}:3, got {other:?}", path.display()),
    }
    // As JSON the lines are fine.
    let values: Vec<serde_json::Value> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(values.len(), 5);

    // The same in a rotated segment: the line number counts within that file.
    std::fs::write(&rotated, format!("{}1\n[2]\n", header(1))).unwrap();
    let err = MiniStore::replay::<u32, _>(&path).await.unwrap_err();
    assert!(
        matches!(&err, MiniStoreError::Corrupt { path: p, line: 3, .. } if *p == rotated),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3: ", rotated.display())),
        "{err}"
    );
}

#[tokio::test]
async fn stream_yields_each_record_as_it_is_read_and_goes_on_after_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    std::fs::write(&path, format!("{}1\n\"two\"\n3\n", header(1))).unwrap();

    let mut stream = MiniStore::stream::<u32>(&path).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    match stream.next().await {
        Some(Err(MiniStoreError::Corrupt { path: p, line, .. })) => {
            assert_eq!((p, line), (path.clone(), 3))
        }
        other => panic!("expected Corrupt at line 3, got {other:?}"),
    }
    assert_eq!(stream.next().await.unwrap().unwrap(), 3);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn stream_reads_lazily_and_sees_records_appended_after_it_was_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append_batch(&[1u32, 2]).await.unwrap();

    let mut stream = MiniStore::stream::<u32>(&path).await.unwrap();
    // Through the `tokio_stream::Stream` implementation.
    assert_eq!(StreamExt::next(&mut stream).await.unwrap().unwrap(), 1);
    store.append(&3u32).await.unwrap();
    let rest: Vec<u32> = stream.map(|r| r.unwrap()).collect().await;

    assert_eq!(rest, vec![2, 3]);
}

#[tokio::test]
async fn stream_reads_only_the_file_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let _store = appended_one_by_one(&path, 100, 8).await;
    // 40-byte header + 3 records of 23 bytes reaches 100: segments of 3 records each.
    assert_eq!(
        segment_names(dir.path()),
        [
            "journal.jsonl",
            "journal.jsonl.000001",
            "journal.jsonl.000002"
        ]
    );

    let active: Vec<String> = MiniStore::stream(&path)
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    let first: Vec<String> = MiniStore::stream(dir.path().join("journal.jsonl.000001"))
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;

    assert_eq!(active, vec![rec(7), rec(8)]);
    assert_eq!(first, vec![rec(1), rec(2), rec(3)]);
}

#[tokio::test]
async fn stream_of_a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = MiniStore::stream::<u32>(journal(&dir)).await.unwrap_err();
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotFound), "{err:?}");
}

#[tokio::test]
async fn rotation_renames_the_full_segment_and_starts_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let max = 100;
    let mut store = MiniStoreOptions::new()
        .max_bytes_per_segment(max)
        .max_segments(100)
        .open(&path)
        .await
        .unwrap();

    // What the active file should hold, and the rotated segments so far.
    let mut active = header(1);
    let mut rotated: Vec<String> = Vec::new();
    for i in 1..=10 {
        store.append(&rec(i)).await.unwrap();
        active.push_str(&format!("\"{}\"\n", rec(i)));
        if active.len() as u64 >= max {
            // Rotated before `append` returned: the full segment under the next number,
            // and a new active file that starts at the next sequence number.
            rotated.push(std::mem::replace(&mut active, header(i + 1)));
        }
        let mut names = vec!["journal.jsonl".to_string()];
        names.extend((1..=rotated.len()).map(|n| format!("journal.jsonl.{n:06}")));
        assert_eq!(segment_names(dir.path()), names, "after record {i}");
        assert_eq!(written(&path), active, "active file after record {i}");
        for (n, content) in rotated.iter().enumerate() {
            assert_eq!(
                read(&dir.path().join(format!("journal.jsonl.{:06}", n + 1))),
                *content
            );
        }
    }
    assert_eq!(rotated.len(), 3);
    assert_eq!(store.durable().segments, 4);
    drop(store);
    assert_eq!(read(&path), active, "active file after a clean close");
}

#[tokio::test]
async fn retention_keeps_max_segments_files_and_sequence_numbers_stay_stable() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let opts = MiniStoreOptions::new()
        .max_bytes_per_segment(100)
        .max_segments(3);
    let mut store = opts.clone().open(&path).await.unwrap();
    for i in 1..=30 {
        store.append(&rec(i)).await.unwrap();
        assert!(
            segment_names(dir.path()).len() <= 3,
            "after record {i}: {:?}",
            file_names(dir.path())
        );
    }
    assert_eq!(
        segment_names(dir.path()),
        [
            "journal.jsonl",
            "journal.jsonl.000009",
            "journal.jsonl.000010"
        ]
    );
    let durable = store.durable();
    assert_eq!(
        (durable.first_seq, durable.last_seq, durable.segments),
        (25, 30, 3)
    );

    // Each record keeps the sequence number it was given, though the files holding
    // records 1..=24 are gone.
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, (25..=30).map(rec).collect::<Vec<_>>());
    let read = read_all(&mut MiniStore::read_from(&path, 27), 100).await;
    assert_eq!(seqs(&read), vec![27, 28, 29, 30]);
    assert!(
        read.iter()
            .all(|r| r.parse::<String>().unwrap() == rec(r.seq))
    );

    // And after reopening, and more rotations and deletions.
    drop(store);
    let mut store = opts.open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 30);
    for i in 31..=40 {
        assert_eq!(store.append_batch(&[rec(i)]).await.unwrap(), i..i + 1);
    }
    let read = read_all(&mut store.reader(1), 100).await;
    assert_eq!(read.first().map(|r| r.seq), Some(store.durable().first_seq));
    assert_eq!(read.last().map(|r| r.seq), Some(40));
    assert!(
        read.iter()
            .all(|r| r.parse::<String>().unwrap() == rec(r.seq))
    );
    assert_eq!(segment_names(dir.path()).len(), 3);
}

#[tokio::test]
async fn max_segments_one_keeps_only_the_active_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let _store = appended_one_by_one(&path, 1, 7).await;

    assert_eq!(segment_names(dir.path()), ["journal.jsonl"]);
    // Retention deleted each segment's metadata with it; the active one's is named by
    // the seq it starts at.
    assert_eq!(meta_names(dir.path()), ["journal.jsonl.from-7.meta"]);
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, vec![rec(7)]);
    assert_eq!(
        seqs(&read_all(&mut MiniStore::read_from(&path, 1), 10).await),
        vec![7]
    );
}

#[tokio::test]
async fn zero_max_segments_or_segment_size_is_an_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);

    let zero_segments = MiniStoreOptions::new().max_segments(0).open(&path).await;
    let zero_bytes = MiniStoreOptions::new()
        .max_bytes_per_segment(0)
        .open(&path)
        .await;

    assert!(
        matches!(zero_segments, Err(MiniStoreError::InvalidArgument(_))),
        "{zero_segments:?}"
    );
    assert!(
        matches!(zero_bytes, Err(MiniStoreError::InvalidArgument(_))),
        "{zero_bytes:?}"
    );
    assert!(
        file_names(dir.path()).is_empty(),
        "nothing is created for invalid options"
    );
}

#[tokio::test]
async fn append_batch_returns_the_sequence_numbers_of_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();

    assert_eq!(store.append_batch(&["a", "b", "c"]).await.unwrap(), 1..4);
    store.append(&"d").await.unwrap();
    assert_eq!(store.append_batch(&["e", "f"]).await.unwrap(), 5..7);
    assert_eq!(store.last_seq(), 6);

    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, ["a", "b", "c", "d", "e", "f"]);
}

#[tokio::test]
async fn a_batch_that_cannot_be_serialized_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store
        .append(&BTreeMap::from([("k".to_string(), 1)]))
        .await
        .unwrap();
    let before = std::fs::read(&path).unwrap();

    // The first record is fine, the second has a key JSON cannot have.
    let batch = [BTreeMap::new(), BTreeMap::from([(vec![1u8], 2)])];
    let err = store.append_batch(&batch).await.unwrap_err();

    assert!(matches!(err, MiniStoreError::Serialize(_)), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(store.last_seq(), 1);
    assert_eq!(
        store
            .append_batch(&[BTreeMap::<String, u32>::new()])
            .await
            .unwrap(),
        2..3
    );
}

#[tokio::test]
async fn an_empty_batch_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    // A segment size the header alone reaches: any write would rotate.
    let mut store = MiniStoreOptions::new()
        .max_bytes_per_segment(1)
        .open(&path)
        .await
        .unwrap();
    store.append(&1).await.unwrap();
    let files = file_names(dir.path());
    let before = std::fs::read(&path).unwrap();

    assert_eq!(store.append_batch::<u32>(&[]).await.unwrap(), 2..2);
    assert_eq!(store.append_json(&[]).await.unwrap(), 2..2);

    assert_eq!(store.last_seq(), 1);
    assert_eq!(file_names(dir.path()), files);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(store.append_batch(&[2]).await.unwrap(), 2..3);
}

#[tokio::test]
async fn append_json_stores_the_json_compacted_to_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    let pretty = b"{\n  \"user\": \"alice smith\",\n  \"tags\": [ \"a\", \"b c\" ],\n  \"amount\": 1.50\n}\n";
    let lines = [
        JsonLine::from_slice(pretty).unwrap(),
        JsonLine::from_value(&Counter::Set { value: 3 }).unwrap(),
    ];

    assert_eq!(store.append_json(&lines).await.unwrap(), 1..3);

    let compact = r#"{"user":"alice smith","tags":["a","b c"],"amount":1.50}"#;
    assert_eq!(
        written(&path),
        format!("{}{compact}\n{}\n", header(1), r#"{"Set":{"value":3}}"#)
    );
    let read = read_all(&mut MiniStore::read_from(&path, 1), 10).await;
    assert_eq!(read[0].json, compact);
    assert_eq!(
        read[1].parse::<Counter>().unwrap(),
        Counter::Set { value: 3 }
    );
}

#[tokio::test]
async fn sequence_numbers_are_contiguous_across_rotation_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let opts = MiniStoreOptions::new()
        .max_bytes_per_segment(100)
        .max_segments(1000);
    let mut next = 1;
    for _round in 0..4 {
        let mut store = opts.clone().open(&path).await.unwrap();
        assert_eq!(store.last_seq(), next - 1);
        store.append(&rec(next)).await.unwrap();
        assert_eq!(store.last_seq(), next);
        next += 1;
        let batch: Vec<String> = (next..next + 4).map(rec).collect();
        assert_eq!(store.append_batch(&batch).await.unwrap(), next..next + 4);
        next += 4;
        let json: Vec<JsonLine> = (next..next + 2)
            .map(|i| JsonLine::from_value(&rec(i)).unwrap())
            .collect();
        assert_eq!(store.append_json(&json).await.unwrap(), next..next + 2);
        next += 2;
    }
    assert!(
        segment_names(dir.path()).len() > 5,
        "the test should rotate several times"
    );

    let read = read_all(&mut MiniStore::read_from(&path, 1), 7).await;
    assert_eq!(seqs(&read), (1..next).collect::<Vec<_>>());
    assert!(
        read.iter()
            .all(|r| r.parse::<String>().unwrap() == rec(r.seq))
    );
}

#[tokio::test]
async fn read_from_starts_at_any_sequence_number_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let n = 20;
    let store = appended_one_by_one(&path, 100, n).await;
    drop(store);

    for from in 0..=n + 2 {
        for batch in [1, 2, 100] {
            let mut reader = MiniStore::read_from(&path, from);
            let read = read_all(&mut reader, batch).await;
            let expected: Vec<u64> = (from.max(1)..=n).collect();
            assert_eq!(seqs(&read), expected, "from {from} in batches of {batch}");
            assert!(
                read.iter()
                    .all(|r| r.parse::<String>().unwrap() == rec(r.seq))
            );
            assert!(
                !reader.wait().await,
                "a reader without a writer has nothing to wait for"
            );
        }
    }
}

#[tokio::test]
async fn read_from_before_the_oldest_retained_record_starts_at_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let store = appended_one_by_one(&path, 2, 20).await;
    let oldest = store.durable().first_seq;
    assert!(oldest > 1);

    for from in [0, 1, oldest - 1, oldest] {
        let on_disk = read_all(&mut MiniStore::read_from(&path, from), 100).await;
        let durable = read_all(&mut store.reader(from), 100).await;
        assert_eq!(
            seqs(&on_disk),
            (oldest..=20).collect::<Vec<_>>(),
            "from {from}"
        );
        assert_eq!(on_disk, durable);
    }
}

/// The header line of the file at `path`, newline included.
fn first_line(path: &Path) -> String {
    let text = read(path);
    text[..=text.find('\n').unwrap()].to_string()
}

/// Reads 3 records from `from` with `reader` and checks they are exactly `from..from + 3`.
async fn assert_starts_exactly_at(mut reader: ministore::JournalReader, from: u64) {
    let batch = reader.next_batch(3).await.unwrap();
    assert_eq!(seqs(&batch), vec![from, from + 1, from + 2], "from {from}");
    for r in &batch {
        assert_eq!(
            r.parse::<String>().unwrap(),
            fixed_width(r.seq),
            "from {from}"
        );
    }
}

#[tokio::test]
async fn rotation_writes_an_index_of_the_sealed_segment_that_points_at_line_starts() {
    let dir = tempfile::tempdir().unwrap();
    drop(indexed_journal(dir.path()).await);
    let segments = rotated_segments(&journal(&dir));
    assert_eq!(segments.len(), 3);
    for segment in &segments {
        let bytes = std::fs::read(segment).unwrap();
        let index = SegmentIndex::read(&index_path(segment));
        assert_eq!(index.segment_len, bytes.len() as u64);
        assert_eq!(
            header(index.first_seq).len() as u64,
            index.header_len,
            "{}",
            segment.display()
        );
        assert!(index.entries.len() >= 4, "{index:?}");
        let mut previous = index.header_len;
        for &(seq, offset) in &index.entries {
            let at = offset as usize;
            assert_eq!(bytes[at - 1], b'\n');
            let line = format!("\"{}\"\n", fixed_width(seq));
            assert!(bytes[at..].starts_with(line.as_bytes()), "entry {seq}");
            // One entry per 64 KiB step, at the first record that starts in it.
            assert!(offset >= previous + 64 * 1024 && offset < previous + 64 * 1024 + 23);
            previous = offset;
        }
    }
}

#[tokio::test]
async fn a_reader_lands_on_its_exact_seq_at_and_between_every_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let store = indexed_journal(dir.path()).await;
    let mut starts = vec![1, 2, INDEXED_RECORDS - 2];
    for segment in rotated_segments(&path) {
        let index = SegmentIndex::read(&index_path(&segment));
        starts.extend([index.first_seq, index.first_seq + 1]);
        for &(seq, _) in &index.entries {
            starts.extend([seq - 1, seq, seq + 1, seq + 1000]);
        }
    }
    // The active segment's index lives in the writer: every 97th record of it.
    let active_first: u64 = first_line(&path)
        .trim_end()
        .rsplit_once("first_seq=")
        .unwrap()
        .1
        .parse()
        .unwrap();
    starts.extend((active_first..INDEXED_RECORDS - 2).step_by(97));
    for &from in &starts {
        assert_starts_exactly_at(MiniStore::read_from(&path, from), from).await;
        assert_starts_exactly_at(store.reader(from), from).await;
    }
    drop(store);
    for &from in &starts {
        assert_starts_exactly_at(MiniStore::read_from(&path, from), from).await;
    }
}

/// Turns the bytes `from..to` of `file` (line breaks among them) into 'x', lengths
/// unchanged: a reader that counted lines from the start of the file would land on the
/// wrong record, one positioned by an index entry after them on the right one.
fn blank(file: &Path, from: u64, to: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&vec![b'x'; (to - from) as usize], from)
        .unwrap();
}

#[tokio::test]
async fn a_reader_positioned_by_an_index_reads_nothing_before_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let store = indexed_journal(dir.path()).await;
    let segment = &rotated_segments(&path)[1];
    let index = SegmentIndex::read(&index_path(segment));
    let (seq, offset) = *index.entries.last().unwrap();
    blank(segment, index.header_len, offset - 1);
    assert_starts_exactly_at(MiniStore::read_from(&path, seq + 5), seq + 5).await;

    // The active segment, with the writer open: its in-memory index serves the readers the
    // store gave its watch to. (`read_from` reads the files as they are, without it.)
    let header_len = first_line(&path).len() as u64;
    blank(&path, header_len, header_len + 1000);
    let from = INDEXED_RECORDS - 10;
    assert!(std::fs::metadata(&path).unwrap().len() - header_len > 2 * 64 * 1024);
    assert_starts_exactly_at(store.reader(from), from).await;
    let watch = store.watch_durable();
    assert_starts_exactly_at(JournalReader::with_durable(&path, from, watch), from).await;
}

#[tokio::test]
async fn readers_holding_an_index_handle_find_the_index_of_a_store_reopened_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    drop(indexed_journal(dir.path()).await);
    let handle = ActiveIndex::default();
    let options = indexed_options().active_index(handle.clone());
    let store = options.clone().open(&path).await.unwrap();
    let watch = store.watch_durable();
    drop(store);
    // As ministore-server does with an idle journal: the reopened store fills the handle
    // readers of the closed one hold.
    let store = options.open(&path).await.unwrap();
    let header_len = first_line(&path).len() as u64;
    blank(&path, header_len, header_len + 1000);
    let from = INDEXED_RECORDS - 10;
    assert_starts_exactly_at(JournalReader::with_durable(&path, from, watch), from).await;
    drop(store);
}

#[tokio::test]
async fn retention_deletes_a_segment_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStoreOptions::new()
        .max_bytes_per_segment(100_000)
        .max_segments(3)
        .open(&path)
        .await
        .unwrap();
    let records: Vec<String> = (1..=30_000).map(fixed_width).collect();
    for chunk in records.chunks(1000) {
        store.append_batch(chunk).await.unwrap();
    }
    let names = segment_names(dir.path());
    let segments = rotated_segments(&path);
    assert_eq!(segments.len(), 2, "{names:?}");
    let mut expected: Vec<String> = segments
        .iter()
        .flat_map(|s| [s.clone(), index_path(s)])
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .chain(["journal.jsonl".to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    let from = store.durable().first_seq + 5000;
    assert_starts_exactly_at(store.reader(from), from).await;
}

#[tokio::test]
async fn a_reader_overtaken_by_retention_gets_truncated_never_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let opts = MiniStoreOptions::new().max_bytes_per_segment(100);
    // Segments of 3 records: 1-3, 4-6, 7-9, 10-12, and an empty active file.
    let mut store = opts.clone().max_segments(100).open(&path).await.unwrap();
    for i in 1..=12 {
        store.append(&rec(i)).await.unwrap();
    }
    drop(store);
    let mut on_disk = MiniStore::read_from(&path, 1);
    assert_eq!(seqs(&on_disk.next_batch(1).await.unwrap()), vec![1]);

    // Retention deletes the segments the reader needs next.
    let mut store = opts.max_segments(2).open(&path).await.unwrap();
    let mut durable = store.reader(1);
    assert_eq!(seqs(&durable.next_batch(1).await.unwrap()), vec![1]);
    for i in 13..=15 {
        store.append(&rec(i)).await.unwrap();
    }
    let oldest = store.durable().first_seq;
    assert_eq!(oldest, 13);

    for reader in [&mut on_disk, &mut durable] {
        // The rest of the open segment, then an error: no record is skipped silently.
        assert_eq!(seqs(&reader.next_batch(100).await.unwrap()), vec![2, 3]);
        match reader.next_batch(100).await {
            Err(MiniStoreError::Truncated {
                requested,
                oldest: o,
                ..
            }) => assert_eq!((requested, o), (4, oldest)),
            other => panic!("expected Truncated, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_reader_stops_at_a_damaged_line_and_returns_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut content = format!("{}1\n2\n", header(1)).into_bytes();
    content.extend_from_slice(b"\"\xff\"\n4\n");
    std::fs::write(&path, content).unwrap();

    let mut reader = MiniStore::read_from(&path, 1);
    assert_eq!(seqs(&reader.next_batch(100).await.unwrap()), vec![1, 2]);
    // The damaged line is refused every time; the record after it never takes its number.
    for _ in 0..2 {
        let err = reader.next_batch(100).await.unwrap_err();
        assert!(
            matches!(&err, MiniStoreError::Corrupt { path: p, line: 4, .. } if *p == path),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_reader_returns_only_durable_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append_batch(&[1, 2]).await.unwrap();
    // Bytes past what the store has fsynced, where its next write goes (over the zeros
    // it wrote ahead): as if a write were in progress.
    let end = written(&path).len() as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"3\n", end))
        .unwrap();

    let durable = read_all(&mut store.reader(1), 100).await;
    let on_disk = read_all(&mut MiniStore::read_from(&path, 1), 100).await;

    assert_eq!(seqs(&durable), vec![1, 2]);
    // A reader of the files, too, reads only records whose metadata entry is written: the
    // line alone is a write in progress, not a committed record.
    assert_eq!(seqs(&on_disk), vec![1, 2]);
    // The single-file line stream of the published API reads lines as they are.
    let lines: Vec<u32> = MiniStore::stream::<u32>(&path)
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(lines, vec![1, 2, 3]);
}

#[tokio::test]
async fn reader_wait_wakes_after_an_append_and_returns_false_once_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    let mut reader = store.reader(1);
    assert!(reader.next_batch(10).await.unwrap().is_empty());

    {
        let mut wait = pin!(reader.wait());
        assert!(poll_once(&mut wait).await.is_pending(), "nothing new yet");
        store.append(&"first").await.unwrap();
        assert!(wait.await);
    }
    let read = reader.next_batch(10).await.unwrap();
    assert_eq!((read[0].seq, read[0].json.as_str()), (1, "\"first\""));

    // Records already durable but not yet read: no waiting at all.
    store.append_batch(&["second", "third"]).await.unwrap();
    assert!(reader.wait().await);
    assert_eq!(seqs(&reader.next_batch(10).await.unwrap()), vec![2, 3]);

    let mut wait = pin!(reader.wait());
    assert!(poll_once(&mut wait).await.is_pending());
    drop(store);
    assert!(!wait.await, "no record will come once the writer is gone");
}

#[tokio::test]
async fn a_cancelled_append_poisons_the_store_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append(&"before").await.unwrap();

    // Drop an append while its write runs (it may finish first: then try again).
    let mut cancelled = false;
    for _ in 0..100 {
        let mut append = pin!(store.append(&"cancelled"));
        if poll_once(&mut append).await.is_pending() {
            cancelled = true;
            break;
        }
    }
    assert!(cancelled, "every append finished within one poll");

    let err = store.append(&"after").await.unwrap_err();
    assert!(matches!(err, MiniStoreError::Poisoned { .. }), "{err:?}");
    drop(store);

    // The cancelled write finishes on its own thread, which holds the journal until then.
    let store = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match MiniStore::open(&path).await {
                Err(MiniStoreError::Locked { .. }) => tokio::task::yield_now().await,
                other => return other.unwrap(),
            }
        }
    })
    .await
    .expect("the journal stays locked after its store was dropped");
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed[0], "before");
    assert!(replayed[1..].iter().all(|r| r == "cancelled"));
    assert_eq!(store.last_seq(), replayed.len() as u64);
}

#[tokio::test]
async fn a_second_open_of_the_same_journal_fails_with_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append(&1).await.unwrap();

    let err = MiniStore::open(&path).await.unwrap_err();
    match &err {
        MiniStoreError::Locked { path: p, lock } => {
            assert_eq!(p, &path);
            assert_eq!(lock, &dir.path().join("journal.jsonl.lock"));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    // Readers need no lock.
    assert_eq!(MiniStore::replay::<u32, _>(&path).await.unwrap(), vec![1]);

    drop(store);
    let store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 1);
}

#[tokio::test]
async fn opening_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();

    let err = MiniStore::open(dir.path()).await.unwrap_err();

    assert!(matches!(err, MiniStoreError::InvalidArgument(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&*dir.path().to_string_lossy()),
        "{message}"
    );
    assert!(message.contains("is a directory"), "{message}");
}

#[tokio::test]
async fn an_unwritable_path_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // Tests run as root, which ignores permission bits: a regular file in the middle of
    // the path makes it unwritable for anyone (ENOTDIR).
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a directory").unwrap();
    let path = file.join("sub/journal.jsonl");

    let err = MiniStore::open(&path).await.unwrap_err();

    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err:?}");
    match &err {
        MiniStoreError::Io { path: p, .. } => {
            assert!(path.starts_with(p) && p.starts_with(&file), "{p:?}")
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}

/// Record `i` of the live-reading tests: a few hundred bytes, different for every `i`, so
/// that a reader that mixes up offsets returns visibly wrong text.
fn live(i: u64) -> String {
    format!("live {i}: {}", "abcdefghij".repeat(20 + (i % 17) as usize))
}

#[tokio::test]
async fn with_preallocation_the_active_file_holds_zeros_ahead_of_its_records_while_open_and_none_after_close()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = preallocated().open(&path).await.unwrap();
    store.append_batch(&[1, 2, 3]).await.unwrap();
    let records = format!("{}1\n2\n3\n", header(1));

    // Extended with written zeros, so that the next commits overwrite allocated space.
    assert_eq!(written(&path), records);
    assert!(std::fs::metadata(&path).unwrap().len() > records.len() as u64);
    drop(store);

    assert_eq!(read(&path), records);
    let store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 3);
}

#[tokio::test]
async fn a_reader_without_the_writer_follows_a_live_journal_over_its_zeros_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    // Small segments: the reader also crosses rotations, and the zeros of each segment.
    let mut store = preallocated()
        .max_bytes_per_segment(256 * 1024)
        .max_segments(1000)
        .open(&path)
        .await
        .unwrap();
    let mut reader = MiniStore::read_from(&path, 1);
    let mut stream = MiniStore::stream::<String>(&path).await.unwrap();
    let mut read = Vec::new();
    let mut streamed = Vec::new();
    let mut next = 1u64;
    // Each append overwrites zeros the reader may have read past before: it must read
    // them again, never keep them.
    while next <= 3000 {
        let batch: Vec<String> = (next..next + 1 + next % 3).map(live).collect();
        store.append_batch(&batch).await.unwrap();
        next += batch.len() as u64;
        read.extend(reader.next_batch(1000).await.unwrap());
        // The stream reads the first active file only, until it is rotated away.
        if store.durable().segments == 1 {
            while let Some(record) = stream.next().await {
                streamed.push(record.unwrap());
            }
            assert_eq!(streamed.len() as u64, next - 1, "stream behind at {next}");
        }
    }
    read.extend(read_all(&mut reader, 1000).await);

    assert!(store.durable().segments > 3, "{:?}", store.durable());
    assert_eq!(seqs(&read), (1..next).collect::<Vec<_>>());
    for r in &read {
        assert_eq!(
            r.parse::<String>().unwrap(),
            live(r.seq),
            "record {}",
            r.seq
        );
    }
    assert!(!streamed.is_empty());
    for (i, s) in streamed.iter().enumerate() {
        assert_eq!(*s, live(i as u64 + 1));
    }
    // And in one go, as the published API reads.
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, (1..next).map(live).collect::<Vec<_>>());
}

#[tokio::test]
async fn replay_of_a_live_journal_returns_its_records_not_its_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = preallocated().open(&path).await.unwrap();
    for i in 1..=50u64 {
        store.append(&live(i)).await.unwrap();
        let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
        assert_eq!(replayed, (1..=i).map(live).collect::<Vec<_>>());
    }
    let on_disk = read_all(&mut MiniStore::read_from(&path, 1), 7).await;
    assert_eq!(seqs(&on_disk), (1..=50).collect::<Vec<_>>());
    assert!(std::fs::metadata(&path).unwrap().len() > written(&path).len() as u64);
}

#[tokio::test]
async fn rotation_seals_segments_that_end_at_their_last_record_while_the_writer_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = indexed_journal(dir.path()).await;
    let segments = rotated_segments(&journal(&dir));
    assert_eq!(segments.len(), 3);
    for segment in &segments {
        let bytes = std::fs::read(segment).unwrap();
        assert!(!bytes.contains(&0), "{} holds zeros", segment.display());
        assert_eq!(bytes.last(), Some(&b'\n'));
        let index = SegmentIndex::read(&index_path(segment));
        assert_eq!(
            index.segment_len,
            bytes.len() as u64,
            "{}",
            segment.display()
        );
    }
    // By default the active file, too, ends at its last record while open.
    let active = journal(&dir);
    assert_eq!(std::fs::read(&active).unwrap().last(), Some(&b'\n'));
    let from = INDEXED_RECORDS / 2;
    let batch = MiniStore::read_from(journal(&dir), from)
        .next_batch(2)
        .await
        .unwrap();
    assert_eq!(batch[0].json, format!("\"{}\"", fixed_width(from)));
    drop(store);
}
