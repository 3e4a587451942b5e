//! Every reader checks each record against the CRC32C its metadata entry keeps, and
//! returns the record's commit time: a record whose bytes changed is `Checksum` damage
//! (DATA_LOSS through the server) naming file, seq and byte offset, never served.

use ministore::{JsonLine, MiniStore, MiniStoreError};
use ministore_tests::files::{header, rotated_segments};
use ministore_tests::records::{read_all, small_segments};
use tokio_stream::StreamExt;

/// A journal of records `"r01"`..=`"rNN"` appended one by one, in segments of a few.
async fn journal(dir: &tempfile::TempDir, n: u64) -> (std::path::PathBuf, MiniStore) {
    let path = dir.path().join("journal.jsonl");
    let mut store = small_segments().open(&path).await.unwrap();
    for i in 1..=n {
        let line = JsonLine::from_value(&format!("record number {i:02} of many")).unwrap();
        store.append_json(&[line]).await.unwrap();
    }
    (path, store)
}

#[tokio::test]
async fn a_flipped_byte_in_a_sealed_segment_is_damage_naming_seq_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = journal(&dir, 12).await;
    drop(store);
    let sealed = &rotated_segments(&path)[1];
    let text = std::fs::read_to_string(sealed).unwrap();
    let first_seq: u64 = text
        .lines()
        .next()
        .unwrap()
        .rsplit_once('=')
        .unwrap()
        .1
        .parse()
        .unwrap();
    // Still valid JSON of the same length: only the checksum can tell.
    let at = text.find("number").unwrap();
    let mut bytes = text.into_bytes();
    bytes[at] = b'N';
    std::fs::write(sealed, &bytes).unwrap();
    let offset = header(first_seq).len() as u64;

    let err = MiniStore::replay::<String, _>(&path).await.unwrap_err();
    match &err {
        MiniStoreError::Checksum {
            path: p,
            seq,
            offset: o,
            ..
        } => assert_eq!((p, *seq, *o), (sealed, first_seq, offset)),
        other => panic!("expected Checksum, got {other:?}"),
    }
    assert!(err.to_string().contains("CRC32C"), "{err}");
    // The records before it are read; the damage stops the reader, every time it is asked.
    let mut reader = MiniStore::read_from(&path, 1);
    let before = reader.next_batch(100).await.unwrap();
    assert_eq!(before.len() as u64, first_seq - 1);
    assert!(reader.next_batch(100).await.is_err());
    assert!(reader.next_batch(100).await.is_err());
    assert_eq!(std::fs::read(sealed).unwrap(), bytes, "left as it is");

    // The one-file line stream of the published API reports it too, and goes on.
    let items: Vec<Result<String, MiniStoreError>> = MiniStore::stream::<String>(sealed)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(&items[0], Err(MiniStoreError::Checksum { seq, offset: o, .. }) if *seq == first_seq && *o == offset),
        "{:?}",
        items[0]
    );
    assert!(items[1..].iter().all(Result::is_ok), "{items:?}");

    // `ministore verify` (the offline check) reports it where it is.
    let report = ministore::verify::verify_journal(&path).unwrap();
    let problem = report
        .problems
        .iter()
        .find(|p| p.kind == ministore::verify::ProblemKind::Checksum)
        .unwrap_or_else(|| panic!("verify missed it: {:?}", report.problems));
    assert_eq!(
        (&problem.file, problem.seq, problem.offset),
        (sealed, Some(first_seq), Some(offset))
    );
    assert_eq!(problem.severity, ministore::verify::Severity::Damage);
}

#[tokio::test]
async fn a_flipped_byte_in_the_active_segment_stops_the_writers_own_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append_batch(&["alice", "bob"]).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("bob", "bib")).unwrap();
    let err = store.reader(1).next_batch(10).await;
    // "alice" comes first, then the damage.
    assert_eq!(err.unwrap().len(), 1);
    let mut reader = store.reader(2);
    assert!(matches!(
        reader.next_batch(10).await,
        Err(MiniStoreError::Checksum { seq: 2, .. })
    ));
}

#[tokio::test]
async fn commit_times_never_go_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let (path, store) = journal(&dir, 12).await;
    let read = read_all(&mut store.reader(1), 5).await;
    drop(store);
    let times: Vec<u64> = read.iter().map(|r| r.commit_unix_ns.unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[0] >= before, "commit times are wall-clock times");
    let store = small_segments().open(&path).await.unwrap();
    let again = read_all(&mut store.reader(1), 5).await;
    assert_eq!(again, read, "the same records and times after reopening");
    drop(store);
    let on_disk = read_all(&mut MiniStore::read_from(&path, 1), 7).await;
    assert_eq!(on_disk, read);
}

#[tokio::test]
async fn records_written_without_metadata_are_read_without_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    std::fs::write(&path, format!("{}1\n2\n", header(1))).unwrap();
    let mut store = MiniStore::open(&path).await.unwrap();
    store.append(&3).await.unwrap();
    let read = read_all(&mut store.reader(1), 10).await;
    let times: Vec<bool> = read.iter().map(|r| r.commit_unix_ns.is_some()).collect();
    assert_eq!(times, [false, false, true]);
}

/// The line stream checks records whose entries lie past the first 64 KiB of metadata
/// (read in turns, off the caller's thread) exactly as the first ones, on a runtime with a
/// single thread too, and reads a file whose metadata is longer than one read.
#[tokio::test(flavor = "current_thread")]
async fn the_line_stream_checks_records_far_into_a_long_metadata_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let mut store = MiniStore::open(&path).await.unwrap();
    // 4,000 requests of one record each: 4,000 entries, several reads of metadata.
    let requests = (1..=4000)
        .map(|i| ministore::Append::new(vec![JsonLine::from_value(&format!("r{i:04}")).unwrap()]))
        .collect();
    for result in store.append_requests(requests).await.unwrap() {
        result.unwrap();
    }
    drop(store);
    let meta_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "meta"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(meta_bytes > 2 * 64 * 1024, "metadata of {meta_bytes} bytes");

    // Record 3,500 changed in place, still valid JSON of the same length.
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("\"r3500\"").unwrap();
    let mut bytes = text.into_bytes();
    bytes[at + 1] = b'R';
    std::fs::write(&path, &bytes).unwrap();

    let items: Vec<Result<String, MiniStoreError>> = MiniStore::stream::<String>(&path)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 4000);
    for (i, item) in items.iter().enumerate() {
        let seq = i as u64 + 1;
        match item {
            Ok(record) => assert_eq!(*record, format!("r{seq:04}")),
            Err(MiniStoreError::Checksum {
                seq: bad, offset, ..
            }) => {
                assert_eq!((*bad, *offset), (3500, at as u64), "only record 3,500");
            }
            Err(other) => panic!("record {seq}: {other}"),
        }
    }
    assert!(items[3499].is_err());
}
