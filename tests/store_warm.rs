//! A journal closed warm ([`MiniStore::blocking_close_warm`]) and reopened from the state it
//! kept: it goes on exactly where it was (records, seqs, keys) when nobody touched its
//! files, and any change made while it was closed (a cut tail, records or segments added
//! by another `MiniStore`, an edit in place, a file removed) is noticed and recovered by the
//! full open, as after a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ministore::io::{Fault, FaultInjector, FileOp};
use ministore::{
    ActiveIndex, Append, Appended, JsonLine, MiniStore, MiniStoreError, MiniStoreOptions,
    WarmJournal,
};
use ministore_tests::files::rotated_segments;
use ministore_tests::records::{read_all, seqs, small_segments};

fn line(text: &str) -> JsonLine {
    JsonLine::from_slice(text.as_bytes()).unwrap()
}

fn keyed(key: &str, text: &str) -> Append {
    Append::new(vec![JsonLine::from_value(&text).unwrap()]).key(key)
}

/// Record `seq`'s text: with the header, three fit in a [`small_segments`] segment.
fn record(seq: u64) -> String {
    format!("record {seq:04} of thirty bytes")
}

fn journal(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal.jsonl")
}

/// Appends records `from..=to`, one request each, checking each seq.
fn append_range(store: &mut MiniStore, from: u64, to: u64) {
    for seq in from..=to {
        let seqs = store.blocking_append_json(&[JsonLine::from_value(&record(seq)).unwrap()]);
        assert_eq!(seqs.unwrap(), seq..seq + 1);
    }
}

/// The records of the journal, as its files hold them.
async fn on_disk(path: &Path) -> Vec<String> {
    MiniStore::replay(path).await.unwrap()
}

fn records(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(record).collect()
}

/// Closes `store` warm and reopens it, which must not need a full open.
fn warm_cycle(store: MiniStore) -> MiniStore {
    let warm = store
        .blocking_close_warm()
        .expect("a healthy journal closes warm");
    let reopened = warm.blocking_reopen().unwrap();
    assert_eq!(reopened.changed, None, "nothing changed its files");
    reopened.store
}

/// A journal at `path` of records `1..=n` in [`small_segments`], open.
fn rotated_journal(path: &Path, n: u64) -> MiniStore {
    let mut store = small_segments().blocking_open(path).unwrap();
    append_range(&mut store, 1, n);
    store
}

/// A journal at `path` of records `1..=n`, closed warm.
fn closed_warm(path: &Path, n: u64) -> WarmJournal {
    let mut store = MiniStoreOptions::new().blocking_open(path).unwrap();
    append_range(&mut store, 1, n);
    store
        .blocking_close_warm()
        .expect("a healthy journal closes warm")
}

/// Reopens `store` after `change` was made to its files while it was closed warm: the
/// full open must have noticed.
fn reopen_after(store: MiniStore, change: impl FnOnce()) -> MiniStore {
    let warm = store
        .blocking_close_warm()
        .expect("a healthy journal closes warm");
    change();
    let reopened = warm.blocking_reopen().unwrap();
    assert!(reopened.changed.is_some(), "the change went unnoticed");
    reopened.store
}

#[tokio::test]
async fn a_journal_reopened_warm_keeps_every_record_seq_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let index = ActiveIndex::default();
    let mut store = small_segments()
        .active_index(index.clone())
        .blocking_open(&path)
        .unwrap();
    append_range(&mut store, 1, 7);
    let first = store
        .append_request(keyed("order-1", &record(8)))
        .await
        .unwrap();
    assert_eq!(first.seqs, 8..9);
    append_range(&mut store, 9, 10);
    let (segments, keys) = (store.durable().segments, store.remembered_keys());
    assert!(segments > 2, "rotated: {segments} segments");

    for round in 0..3 {
        store = warm_cycle(store);
        // Its readers find the active segment's index through the same handle.
        assert_eq!(store.watch_durable().index, index);
        let last = 10 + 2 * round;
        assert_eq!(store.last_seq(), last);
        assert_eq!(store.remembered_keys(), keys);
        // A keyed retry after the reopen is the same append, not a second one.
        let retry = store
            .append_request(keyed("order-1", &record(8)))
            .await
            .unwrap();
        assert_eq!(
            retry,
            Appended {
                seqs: 8..9,
                duplicate: true
            }
        );
        // Numbering goes on where it was, through the kept index and rotation.
        append_range(&mut store, last + 1, last + 2);
        let read = seqs(&read_all(&mut store.reader(1), 5).await);
        assert_eq!(read, (1..=last + 2).collect::<Vec<_>>());
    }
    assert!(store.durable().segments > segments);
    drop(store);
    assert_eq!(on_disk(&path).await, records(1, 16));
    // What the warm reopens wrote, a full open agrees with.
    let store = small_segments().blocking_open(&path).unwrap();
    assert_eq!((store.last_seq(), store.remembered_keys()), (16, keys));
}

#[tokio::test]
async fn a_tail_cut_while_closed_is_noticed_and_recovered_by_the_full_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = MiniStoreOptions::new().blocking_open(&path).unwrap();
    append_range(&mut store, 1, 3);
    let len = std::fs::metadata(&path).unwrap().len();
    let store = reopen_after(store, || {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 2).unwrap(); // into the last record's line
    });
    // The full open went by the files: record 3 is gone, and its seq is given again.
    assert_eq!(store.last_seq(), 2);
    let mut store = store;
    append_range(&mut store, 3, 3);
    drop(store);
    assert_eq!(on_disk(&path).await, records(1, 3));
}

#[tokio::test]
async fn records_and_segments_added_by_another_store_while_closed_are_all_recovered() {
    // A few records by the other store (the active file grows), then enough to rotate
    // (a new active file and new segments).
    for (options, added) in [(MiniStoreOptions::new(), 2u64), (small_segments(), 12)] {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(&dir);
        let mut store = options.clone().blocking_open(&path).unwrap();
        append_range(&mut store, 1, 2);
        let segments = rotated_segments(&path).len();
        let mut store = reopen_after(store, || {
            let mut other = options.clone().blocking_open(&path).unwrap();
            append_range(&mut other, 3, 2 + added);
            let key = other.blocking_append_requests(&[keyed("theirs", "k")]);
            assert_eq!(key.unwrap()[0].as_ref().unwrap().seqs.end, 4 + added);
        });
        let last = 3 + added;
        assert_eq!(store.last_seq(), last, "{added} added");
        assert_eq!(
            rotated_segments(&path).len() > segments,
            added > 2,
            "{added} added"
        );
        // Their key is known: its retry here is a duplicate.
        let retry = store.append_request(keyed("theirs", "k")).await.unwrap();
        assert_eq!((retry.seqs.start, retry.duplicate), (last, true));
        append_range(&mut store, last + 1, last + 1);
        drop(store);
        let mut expected = records(1, 2 + added);
        expected.extend(["k".to_owned(), record(last + 1)]);
        assert_eq!(on_disk(&path).await, expected, "{added} added");
    }
}

#[test]
fn a_record_edited_in_place_while_closed_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let warm = closed_warm(&path, 3);
    // Same length, same file: only its change time tells. That moves in steps of the file
    // system's clock (a few ms): let one pass since our last write.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let at = std::fs::read_to_string(&path)
        .unwrap()
        .find("0002")
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"X", at as u64))
        .unwrap();
    // The full open read the files and checked record 2 against its CRC: acknowledged
    // records follow it, so it is damage, refused, not cut.
    let err = warm.blocking_reopen().unwrap_err();
    assert!(matches!(err, MiniStoreError::BadMeta { .. }), "{err}");
}

#[tokio::test]
async fn a_segment_removed_while_closed_is_reported_as_damage_by_the_full_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let store = rotated_journal(&path, 12);
    assert_eq!(store.damage(), None);
    let segments = rotated_segments(&path);
    assert!(segments.len() >= 3);
    let store = reopen_after(store, || std::fs::remove_file(&segments[1]).unwrap());
    assert!(store.damage().is_some(), "the gap is reported");
    assert_eq!(store.last_seq(), 12);
}

#[test]
fn a_journal_another_store_holds_is_not_reopened_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let warm = closed_warm(&path, 1);
    // The lock was released at close, as dropping the store releases it.
    let other = MiniStoreOptions::new().blocking_open(&path).unwrap();
    assert!(matches!(
        warm.blocking_reopen(),
        Err(MiniStoreError::Locked { .. })
    ));
    drop(other);
}

/// Fails every rename: the rotation that needs one fails, and poisons the writer.
#[derive(Debug)]
struct FailRenames;

impl FaultInjector for FailRenames {
    fn fault(&self, op: FileOp, _: &Path) -> Option<Fault> {
        (op == FileOp::Rename).then(|| Fault::Fail(std::io::Error::from_raw_os_error(5)))
    }
}

#[test]
fn a_writer_that_cannot_vouch_for_its_files_keeps_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let mut store = small_segments()
        .inject_faults(Arc::new(FailRenames))
        .blocking_open(&path)
        .unwrap();
    // The third record fills the segment: it is durable, its rotation fails, and the
    // writer refuses appends from then on.
    append_range(&mut store, 1, 3);
    assert!(
        store.blocking_append_json(&[line("4")]).is_err(),
        "poisoned"
    );
    assert!(store.blocking_close_warm().is_none());
    // The full open takes the journal as the failed rotation left it.
    let store = small_segments().blocking_open(&path).unwrap();
    assert_eq!(store.last_seq(), 3);
}

#[test]
fn the_memory_of_a_warm_journal_counts_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = MiniStoreOptions::new()
        .blocking_open(dir.path().join("plain.jsonl"))
        .unwrap();
    let mut with_keys = MiniStoreOptions::new()
        .blocking_open(dir.path().join("keys.jsonl"))
        .unwrap();
    let lines: Vec<JsonLine> = (1..=1000)
        .map(|seq| JsonLine::from_value(&record(seq)).unwrap())
        .collect();
    plain.blocking_append_json(&lines).unwrap();
    let requests: Vec<Append> = (0..1000).map(|i| keyed(&format!("key-{i}"), "1")).collect();
    with_keys.blocking_append_requests(&requests).unwrap();
    let plain = plain.blocking_close_warm().unwrap().memory_bytes();
    let with_keys = with_keys.blocking_close_warm().unwrap().memory_bytes();
    assert!(plain < 4096, "{plain} bytes without keys");
    // A key is remembered as its 16-byte hash and what it wrote, in a map and a queue.
    assert!(
        with_keys >= plain + 1000 * 40,
        "{with_keys} bytes with 1,000 keys"
    );
}

#[test]
fn a_settled_directory_is_trusted_by_its_change_time_and_a_file_removed_from_it_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal(&dir);
    let store = rotated_journal(&path, 12);
    let segments = rotated_segments(&path);
    // No file created, deleted or renamed for longer than the file system's timestamp step
    // could hide: the reopen believes the directory's change time without listing it.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let store = warm_cycle(store);
    assert_eq!(store.last_seq(), 12);
    // A segment removed changes the directory's time: listed, the loss is found.
    let store = reopen_after(store, || std::fs::remove_file(&segments[0]).unwrap());
    assert_eq!(store.last_seq(), 12);
    assert_eq!(store.durable().first_seq, 4, "the oldest segment is gone");
}
