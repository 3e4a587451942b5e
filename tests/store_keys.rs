//! Retry-safe appends in the store: idempotency keys remembered durably (across reopen,
//! rotation and the process), forgotten only as documented (the `max_keys` bound,
//! retention); a reused key and a wrong expected last seq write nothing; the metadata
//! that makes this work never enters the JSON lines, and damage to it is refused, not cut.

use std::path::{Path, PathBuf};

use ministore::{Append, Appended, JsonLine, MiniStore, MiniStoreError, MiniStoreOptions};
use ministore_tests::files::{file_names, header};
use ministore_tests::records::small_segments;

fn line(text: &str) -> JsonLine {
    JsonLine::from_slice(text.as_bytes()).unwrap()
}

fn keyed(key: &str, records: &[&str]) -> Append {
    Append::new(records.iter().map(|r| line(r)).collect()).key(key)
}

fn written(seqs: std::ops::Range<u64>) -> Appended {
    Appended {
        seqs,
        duplicate: false,
    }
}

fn duplicate(seqs: std::ops::Range<u64>) -> Appended {
    Appended {
        seqs,
        duplicate: true,
    }
}

fn journal(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal.jsonl")
}

/// Appends `n` records of about 30 bytes: with [`small_segments`] segments, 3 per segment.
async fn fill(store: &mut MiniStore, n: usize) {
    for i in 0..n {
        let record = format!("\"filler record {i:05} of thirty\"");
        store.append_json(&[line(&record)]).await.unwrap();
    }
}

#[tokio::test]
async fn a_key_survives_reopen_and_rotation_and_its_retry_gets_the_original_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = small_segments().open(&path).await.unwrap();
    fill(&mut store, 3).await;
    let batch = keyed("order-42", &[r#"{"a":1}"#, r#"{"b":2}"#]);
    assert_eq!(
        store.append_request(batch.clone()).await.unwrap(),
        written(4..6)
    );
    drop(store);

    // Reopened: the key was rebuilt from the metadata files.
    let mut store = small_segments().open(&path).await.unwrap();
    assert_eq!(store.remembered_keys(), 1);
    assert_eq!(
        store.append_request(batch.clone()).await.unwrap(),
        duplicate(4..6)
    );
    // Rotated well past it, then reopened again.
    let segments_before = store.durable().segments;
    fill(&mut store, 20).await;
    assert!(store.durable().segments > segments_before + 2);
    drop(store);
    let mut store = small_segments().open(&path).await.unwrap();
    assert_eq!(store.append_request(batch).await.unwrap(), duplicate(4..6));
    assert_eq!(store.last_seq(), 25, "no retry was written");

    let replayed: Vec<serde_json::Value> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed.len(), 25);
    assert_eq!(
        replayed[3..5],
        [serde_json::json!({"a": 1}), serde_json::json!({"b": 2})]
    );
}

#[tokio::test]
async fn a_reused_key_and_a_wrong_expectation_write_nothing_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    let first = Append::new(vec![line("1")]).key("k").expected_last_seq(0);
    assert_eq!(
        store.append_request(first.clone()).await.unwrap(),
        written(1..2)
    );
    // A retry is answered before its expectation is checked: it succeeds, as the first
    // attempt did.
    assert_eq!(store.append_request(first).await.unwrap(), duplicate(1..2));

    let err = store.append_request(keyed("k", &["2"])).await.unwrap_err();
    assert!(
        matches!(&err, MiniStoreError::KeyReused { key, first_seq: 1 } if key == "k"),
        "{err:?}"
    );
    assert!(err.to_string().contains("seq 1"), "{err}");

    let stale = Append::new(vec![line("2")]).expected_last_seq(0);
    let err = store.append_request(stale).await.unwrap_err();
    assert!(
        matches!(
            err,
            MiniStoreError::LastSeqMismatch {
                expected: 0,
                last_seq: 1
            }
        ),
        "{err:?}"
    );
    let too_long = keyed(&"x".repeat(ministore::MAX_KEY_BYTES + 1), &["3"]);
    assert!(matches!(
        store.append_request(too_long).await,
        Err(MiniStoreError::InvalidArgument(_))
    ));
    assert_eq!(store.last_seq(), 1);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}1\n", header(1)),
        "nothing was written"
    );
}

#[tokio::test]
async fn the_same_key_twice_in_one_group_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = MiniStore::open(journal(&dir)).await.unwrap();
    let results = store
        .append_requests(vec![
            keyed("a", &["1"]),
            keyed("b", &["2", "3"]),
            keyed("a", &["1"]),
            keyed("a", &["9"]),
        ])
        .await
        .unwrap();
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(results[0], Ok(written(1..2)));
    assert_eq!(results[1], Ok(written(2..4)));
    assert_eq!(results[2], Ok(duplicate(1..2)));
    assert!(
        results[3].as_ref().unwrap_err().contains("seq 1"),
        "{results:?}"
    );
    assert_eq!(store.last_seq(), 3);
}

#[tokio::test]
async fn keys_beyond_the_bound_or_whose_records_retention_deleted_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let bounded = MiniStoreOptions::new().max_keys(2);
    let mut store = bounded.clone().open(&path).await.unwrap();
    for key in ["k1", "k2", "k3"] {
        store.append_request(keyed(key, &["1"])).await.unwrap();
    }
    assert_eq!(store.remembered_keys(), 2);
    // The oldest is forgotten: its retry is written again, as documented.
    assert_eq!(
        store.append_request(keyed("k1", &["1"])).await.unwrap(),
        written(4..5)
    );
    drop(store);
    // The bound holds at reopen too: the newest two (k3, k1) are remembered.
    let mut store = bounded.open(&path).await.unwrap();
    assert_eq!(store.remembered_keys(), 2);
    assert!(
        store
            .append_request(keyed("k1", &["1"]))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        store
            .append_request(keyed("k3", &["1"]))
            .await
            .unwrap()
            .duplicate
    );
    assert!(
        !store
            .append_request(keyed("k2", &["1"]))
            .await
            .unwrap()
            .duplicate
    );
    drop(store);

    // Retention: once a key's records are deleted, so is the key, and its metadata file.
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let keep_two = small_segments().max_segments(2);
    let mut store = keep_two.clone().open(&path).await.unwrap();
    store.append_request(keyed("old", &["1"])).await.unwrap();
    fill(&mut store, 30).await;
    assert!(store.durable().first_seq > 1, "retention deleted seq 1");
    assert_eq!(store.remembered_keys(), 0);
    let metas: Vec<String> = file_names(dir.path())
        .into_iter()
        .filter(|f| f.ends_with(".meta"))
        .collect();
    assert_eq!(
        metas.len(),
        2,
        "one metadata file per retained segment: {metas:?}"
    );
    drop(store);
    let mut store = keep_two.open(&path).await.unwrap();
    assert!(
        !store
            .append_request(keyed("old", &["1"]))
            .await
            .unwrap()
            .duplicate
    );
}

#[tokio::test]
async fn keys_and_checksums_never_enter_the_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStore::open(&path).await.unwrap();
    store
        .append_request(keyed("a-key-that-must-not-show", &[r#"{"x":1}"#, "2"]))
        .await
        .unwrap();
    // Read while the store is open, as `tail -f | jq` would.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}{{\"x\":1}}\n2\n", header(1)));
    for line in text.lines().skip(1) {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

/// Opens the journal, writes two groups, and returns the metadata file and the byte
/// offsets where each entry starts.
async fn two_groups(path: &Path) -> (PathBuf, u64) {
    let mut store = MiniStore::open(path).await.unwrap();
    store.append_request(keyed("first", &["1"])).await.unwrap();
    let meta = path.with_file_name("journal.jsonl.from-1.meta");
    let first_entry_end = std::fs::metadata(&meta).unwrap().len();
    store.append_request(keyed("second", &["2"])).await.unwrap();
    (meta, first_entry_end)
}

#[tokio::test]
async fn damage_to_an_acknowledged_entry_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let (meta, first_entry_end) = two_groups(&path).await;
    // Flip a bit inside the first entry: a later group's entry follows it, so it was
    // acknowledged and this is damage, not an interrupted write.
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[first_entry_end as usize - 6] ^= 0x10;
    std::fs::write(&meta, &bytes).unwrap();
    let before = (std::fs::read(&path).unwrap(), bytes);

    let err = MiniStore::open(&path).await.unwrap_err();
    assert!(matches!(err, MiniStoreError::BadMeta { .. }), "{err:?}");
    assert!(err.to_string().contains("damage"), "{err}");
    assert_eq!(
        (std::fs::read(&path).unwrap(), std::fs::read(&meta).unwrap()),
        before,
        "nothing was changed"
    );

    // A flipped bit in a record's bytes is seen by its CRC32C the same way.
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    two_groups(&path).await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}1\n2\n", header(1))
    );
    // Still valid JSON, same length: only the checksum can tell.
    std::fs::write(&path, format!("{}3\n2\n", header(1))).unwrap();
    let err = MiniStore::open(&path).await.unwrap_err();
    assert!(err.to_string().contains("CRC32C"), "{err}");
}

#[tokio::test]
async fn a_journal_without_metadata_opens_and_keys_start_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    // As the published crate (or an earlier build) leaves it: no metadata files.
    std::fs::write(&path, format!("{}1\n2\n", header(1))).unwrap();
    let mut store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 2);
    assert_eq!(
        store.append_request(keyed("k", &["3"])).await.unwrap(),
        written(3..4)
    );
    drop(store);
    // Its metadata covers what was written here, from seq 3.
    assert!(dir.path().join("journal.jsonl.from-3.meta").exists());
    let mut store = MiniStore::open(&path).await.unwrap();
    assert_eq!(
        store.append_request(keyed("k", &["3"])).await.unwrap(),
        duplicate(3..4)
    );
    let replayed: Vec<u32> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, vec![1, 2, 3]);
}

/// `n` requests of one record each, keyed `<name>-<i>`, committed together.
async fn keyed_group(store: &mut MiniStore, name: &str, n: usize) {
    let requests = (0..n)
        .map(|i| keyed(&format!("{name}-{i}"), &[&i.to_string()]))
        .collect();
    for result in store.append_requests(requests).await.unwrap() {
        assert!(!result.unwrap().duplicate);
    }
}

/// Journals opened with one `KeyMemory` keep their keys within it together, each its
/// newest `KEYS_EACH_JOURNAL_KEEPS` whatever the others hold, through a reopen too; a
/// journal closed gives its keys back.
#[tokio::test]
async fn journals_sharing_a_key_memory_stay_within_it_through_a_reopen() {
    use ministore::{KEY_BYTES, KEYS_EACH_JOURNAL_KEEPS as KEEPS, KeyMemory};
    let dir = tempfile::tempdir().unwrap();
    let memory = KeyMemory::new(1500 * KEY_BYTES);
    let options = MiniStoreOptions::new().key_memory(memory.clone());
    let (path_a, path_b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let mut a = options.clone().open(&path_a).await.unwrap();
    keyed_group(&mut a, "a", 2000).await;
    assert_eq!(a.remembered_keys(), 1500);
    assert_eq!(memory.used_bytes(), 1500 * KEY_BYTES);
    let mut b = options.clone().open(&path_b).await.unwrap();
    keyed_group(&mut b, "b", KEEPS + 76).await;
    assert_eq!(b.remembered_keys(), KEEPS);
    assert_eq!(memory.used_bytes(), (1500 + KEEPS) * KEY_BYTES);
    // The newest are remembered, the oldest beyond the memory are not.
    assert_eq!(
        a.append_request(keyed("a-1999", &["1999"])).await.unwrap(),
        duplicate(2000..2001)
    );
    assert_eq!(
        b.append_request(keyed("b-76", &["76"])).await.unwrap(),
        duplicate(77..78)
    );
    assert_eq!(
        b.append_request(keyed("b-75", &["75"])).await.unwrap(),
        written(KEEPS as u64 + 77..KEEPS as u64 + 78)
    );

    drop(a);
    assert_eq!(memory.used_bytes(), KEEPS * KEY_BYTES);
    // Reopened while b holds its 1,024: a rebuilds its newest 1,024 from its metadata,
    // since b's and its own floor fill the memory.
    let mut a = options.open(&path_a).await.unwrap();
    assert_eq!(a.remembered_keys(), KEEPS);
    assert_eq!(memory.used_bytes(), 2 * KEEPS * KEY_BYTES);
    assert_eq!(
        a.append_request(keyed("a-1999", &["1999"])).await.unwrap(),
        duplicate(2000..2001)
    );
    assert_eq!(
        a.append_request(keyed(&format!("a-{}", 2000 - KEEPS), &["976"]))
            .await
            .unwrap(),
        duplicate(977..978)
    );
    drop((a, b));
    assert_eq!(memory.used_bytes(), 0);
}
