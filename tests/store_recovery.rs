//! Crash safety: the files a crash can leave, made by hand, and what `open` makes of them.
//!
//! A crash during an append leaves any prefix of the bytes being written; a crash during
//! rotation leaves one of the intermediate states listed in `rotate`; a power loss can
//! leave a tail of zeros. Every such state must open with exactly the complete records and
//! the right next sequence number. Damage a crash cannot cause is refused, untouched.

use std::path::{Path, PathBuf};

use ministore::{MiniStore, MiniStoreError, MiniStoreOptions};
use ministore_tests::files::{
    SegmentIndex, copy_dir, file_names, header, index_path, rotated_segments,
};
use ministore_tests::records::{
    INDEXED_RECORDS, fixed_width, indexed_journal, indexed_options, read_all, seqs,
};

/// Records with escapes and multi-byte UTF-8, so that cuts land inside both.
fn rec(i: u64) -> String {
    format!("rec {i}: \"quoted\" \\ é€😀")
}

fn recs(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(rec).collect()
}

fn small_segments() -> MiniStoreOptions {
    MiniStoreOptions::new()
        .max_bytes_per_segment(150)
        .max_segments(1000)
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap();
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap();
}

fn broken_files(dir: &Path) -> Vec<String> {
    file_names(dir)
        .into_iter()
        .filter(|n| n.contains(".broken-"))
        .collect()
}

/// Writes records `1..=n` with small segments (so the journal has rotated segments and the
/// active file starts past seq 1). Returns the active file's path.
async fn journal_with(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("journal.jsonl");
    let mut store = small_segments().open(&path).await.unwrap();
    for i in 1..=n {
        store.append(&rec(i)).await.unwrap();
    }
    path
}

/// Opens the journal at `path` and checks it holds exactly records `1..=n` and goes on at
/// `n + 1`, then that this append survives a reopen.
async fn assert_reopens_with(path: &Path, n: u64, opts: MiniStoreOptions) {
    let mut store = opts.clone().open(path).await.unwrap();
    assert_eq!(store.last_seq(), n);
    let replayed: Vec<String> = MiniStore::replay(path).await.unwrap();
    assert_eq!(replayed, recs(1..=n));

    assert_eq!(
        store.append_batch(&[rec(n + 1)]).await.unwrap(),
        n + 1..n + 2
    );
    drop(store);
    let store = opts.open(path).await.unwrap();
    assert_eq!(store.last_seq(), n + 1);
    let read = read_all(&mut store.reader(1), 1000).await;
    assert_eq!(seqs(&read), (1..=n + 1).collect::<Vec<_>>());
    assert!(
        read.iter()
            .all(|r| r.parse::<String>().unwrap() == rec(r.seq))
    );
}

/// Every record of one file, through `MiniStore::stream`.
async fn stream_all(file: &Path) -> Vec<String> {
    let mut stream = MiniStore::stream::<String>(file).await.unwrap();
    let mut out = Vec::new();
    while let Some(record) = stream.next().await {
        out.push(record.unwrap());
    }
    out
}

/// The metadata file of the active segment in `dir` (the one covering the newest seqs).
fn active_meta(dir: &Path) -> PathBuf {
    let newest = file_names(dir)
        .into_iter()
        .filter_map(|f| {
            let seq = f
                .strip_prefix("journal.jsonl.from-")?
                .strip_suffix(".meta")?;
            Some((seq.parse::<u64>().ok()?, f))
        })
        .max()
        .expect("the journal has metadata files");
    dir.join(newest.1)
}

/// Writes records `1..=n` in rotated segments, then the records of `last` with one
/// `append_batch`, which must land in the active file. A crash may cut that write short in
/// the active file, in its metadata file, or in both: for every length each file can have
/// had, checks a copy of the journal cut there. Reopening keeps every record of the batch
/// or none of them, and appends go on after.
async fn check_every_cut_of_the_last_write(n: u64, last: &[String]) {
    let src = tempfile::tempdir().unwrap();
    let path = journal_with(src.path(), n).await;
    let mut store = small_segments()
        .max_bytes_per_segment(1 << 20)
        .open(&path)
        .await
        .unwrap();
    let start = len(&path);
    let meta = active_meta(src.path());
    let meta_start = len(&meta);
    let in_active_before = stream_all(&path).await.len();
    store.append_batch(last).await.unwrap();
    drop(store);
    let (end, meta_end) = (len(&path), len(&meta));
    assert!(meta_end > meta_start, "the batch has a metadata entry");
    assert!(
        file_names(src.path()).len() > 2,
        "the journal should have rotated segments"
    );
    // Where each record of the last write ends in the active file.
    let mut ends = Vec::new();
    let mut at = start;
    for r in last {
        at += serde_json::to_string(r).unwrap().len() as u64 + 1;
        ends.push(at);
    }
    assert_eq!(at, end);

    let mut expected = recs(1..=n);
    expected.extend_from_slice(last);
    let cuts = (start..=end)
        .map(|cut| (cut, meta_end))
        .chain((meta_start..meta_end).map(|meta_cut| (end, meta_cut)))
        .chain((start..end).step_by(7).map(|cut| (cut, meta_start + 5)));
    for (cut, meta_cut) in cuts {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join("journal.jsonl");
        truncate(&path, cut);
        truncate(&active_meta(dir.path()), meta_cut);
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let whole = cut == end && meta_cut == meta_end;
        let kept = n as usize + if whole { last.len() } else { 0 };
        let case = format!("active file cut at {cut}, metadata at {meta_cut}");

        // Before any repair, the line stream of one file (the published API) skips the
        // incomplete line only; readers of the journal read only whole requests, whose
        // metadata entry and every line are there: the batch whole or not at all.
        let streamed = stream_all(&path).await;
        assert_eq!(streamed.len(), in_active_before + complete, "{case}");
        let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
        assert_eq!(replayed, expected[..kept], "{case}");

        let mut store = MiniStore::open(&path).await.unwrap();
        assert_eq!(store.last_seq(), kept as u64, "{case}");
        let durable_end = if whole { end } else { start };
        assert_eq!(
            len(&path),
            durable_end,
            "open cuts the batch whole ({case})"
        );
        // Complete lines of a cut batch are kept aside; a partial line alone is not.
        assert_eq!(
            broken_files(dir.path()).len(),
            usize::from(!whole && complete > 0),
            "{case}"
        );
        let next = kept as u64 + 1;
        assert_eq!(
            store.append_batch(&["after"]).await.unwrap(),
            next..next + 1
        );
        drop(store);

        let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
        assert_eq!(replayed[..kept], expected[..kept], "{case}");
        assert_eq!(replayed[kept..], ["after"], "{case}");
    }
}

#[tokio::test]
async fn a_record_cut_at_any_byte_is_dropped_and_appends_go_on() {
    check_every_cut_of_the_last_write(10, &[rec(11)]).await;
}

#[tokio::test]
async fn a_batch_cut_at_any_byte_of_either_file_is_kept_whole_or_not_at_all() {
    check_every_cut_of_the_last_write(10, &recs(11..=15)).await;
}

#[tokio::test]
async fn a_tail_of_zeros_left_by_a_power_loss_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 10).await;
    let good = len(&path);
    // The file grew but the data never reached the disk.
    append_bytes(&path, &[0; 4096]);

    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, recs(1..=10));
    let store = small_segments().open(&path).await.unwrap();
    assert_eq!(len(&path), good);
    assert!(broken_files(dir.path()).is_empty());
    drop(store);
    assert_reopens_with(&path, 10, small_segments()).await;
}

#[tokio::test]
async fn a_last_record_whose_bytes_are_zeros_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 10).await;
    let good = len(&path);
    append_bytes(&path, &vec![0; rec(11).len() + 3]);

    let store = small_segments().open(&path).await.unwrap();
    assert_eq!(len(&path), good);
    drop(store);
    assert_reopens_with(&path, 10, small_segments()).await;
}

#[tokio::test]
async fn invalid_lines_at_the_end_are_cut_and_kept_aside_as_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 10).await;
    let good = len(&path);
    let tail = b"garbage\n\0\0\0\n{\"partial";
    append_bytes(&path, tail);

    let store = small_segments().open(&path).await.unwrap();

    assert_eq!(store.last_seq(), 10);
    assert_eq!(len(&path), good);
    let evidence = format!("journal.jsonl.broken-{good}");
    assert_eq!(broken_files(dir.path()), vec![evidence.clone()]);
    assert_eq!(std::fs::read(dir.path().join(evidence)).unwrap(), tail);
    drop(store);
    assert_reopens_with(&path, 10, small_segments()).await;
}

#[tokio::test]
async fn a_garbage_line_followed_by_a_valid_one_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let content = format!("{}\"a\"\n\"b\"\ngarbage\n\"c\"\n", header(1));
    std::fs::write(&path, &content).unwrap();

    let err = MiniStore::open(&path).await.unwrap_err();

    match &err {
        MiniStoreError::Corrupt { path: p, line, .. } => assert_eq!((p, *line), (&path, 4)),
        other => panic!("expected Corrupt at line 4, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    assert!(broken_files(dir.path()).is_empty());
    // Nor does a failed open leave the journal locked.
    let err = MiniStore::open(&path).await.unwrap_err();
    assert!(matches!(err, MiniStoreError::Corrupt { .. }), "{err:?}");
}

/// Opens the journal at `path` with `opts`, expecting it refused for the header of `path`,
/// and checks the file still holds `content`. Returns the error.
async fn assert_refused_untouched(
    path: &Path,
    content: &[u8],
    opts: MiniStoreOptions,
) -> MiniStoreError {
    let err = opts.open(path).await.unwrap_err();
    assert!(
        matches!(&err, MiniStoreError::BadHeader { path: p, .. } if p == path),
        "{content:?}: {err:?}"
    );
    assert_eq!(std::fs::read(path).unwrap(), content);
    err
}

#[tokio::test]
async fn a_file_that_is_not_a_journal_is_refused_and_left_untouched() {
    let foreign: [&[u8]; 5] = [
        b"shopping list\nmilk\n",
        b"{\"a\":1}\n{\"b\":2}\n",
        b"// a comment, not our header\n",
        b"hello",
        &[0; 100],
    ];
    for content in foreign {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, content).unwrap();

        assert_refused_untouched(&path, content, MiniStoreOptions::default()).await;
    }
}

#[tokio::test]
async fn a_rotated_segment_that_is_not_a_journal_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 10).await;
    let segment = dir.path().join("journal.jsonl.000002");
    std::fs::write(&segment, "not a journal\n").unwrap();
    let active = std::fs::read(&path).unwrap();

    let err = MiniStore::open(&path).await.unwrap_err();

    assert!(
        matches!(&err, MiniStoreError::BadHeader { path: p, .. } if *p == segment),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&segment).unwrap(),
        "not a journal\n"
    );
    assert_eq!(std::fs::read(&path).unwrap(), active);
}

/// A journal whose last append (record `n`) just rotated: records `1..=n` are in rotated
/// segments and the active file holds only its header. Returns the active file's path and `n`.
async fn just_rotated(dir: &Path) -> (PathBuf, u64) {
    let path = dir.join("journal.jsonl");
    let mut store = small_segments().open(&path).await.unwrap();
    for n in 1u64.. {
        store.append(&rec(n)).await.unwrap();
        if n >= 12 && std::fs::read(&path).unwrap() == header(n + 1).as_bytes() {
            return (path, n);
        }
    }
    unreachable!("the journal rotates every few records")
}

#[tokio::test]
async fn a_crash_after_renaming_the_active_segment_reopens_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (path, n) = just_rotated(dir.path()).await;
    // Step 2 of rotation done, step 4 not started: there is no active file.
    std::fs::remove_file(&path).unwrap();

    assert_reopens_with(&path, n, small_segments()).await;
}

#[tokio::test]
async fn a_crash_after_creating_the_new_active_file_reopens_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (path, n) = just_rotated(dir.path()).await;
    truncate(&path, 0);

    let store = small_segments().open(&path).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), header(n + 1));
    drop(store);
    assert_reopens_with(&path, n, small_segments()).await;
}

#[tokio::test]
async fn a_crash_while_writing_the_new_header_reopens_with_every_record() {
    let src = tempfile::tempdir().unwrap();
    let (_, n) = just_rotated(src.path()).await;
    let full = header(n + 1);
    assert!(full.starts_with("// MINISTORE JOU"));
    // Every prefix of the new active file's header, "// MINISTORE JOU" among them.
    for cut in 1..full.len() {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, &full[..cut]).unwrap();

        let store = small_segments().open(&path).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            full,
            "cut at {cut}"
        );
        assert_eq!(store.last_seq(), n);
        drop(store);
        assert_reopens_with(&path, n, small_segments()).await;
    }
}

#[tokio::test]
async fn a_new_active_file_whose_bytes_a_crash_left_as_zeros_reopens_with_every_record() {
    let src = tempfile::tempdir().unwrap();
    let (_, n) = just_rotated(src.path()).await;
    let full = header(n + 1);
    // A file system may keep a new file's size but not its bytes when the power fails
    // before the fsync of rotation step 5: zeros instead of the header, or after its start.
    let mut cases: Vec<Vec<u8>> = vec![vec![0; full.len()], vec![0; 256 << 10]];
    for cut in [1, 7, 16, full.len() - 1] {
        let mut torn = full.as_bytes()[..cut].to_vec();
        torn.resize(full.len() + 100, 0);
        cases.push(torn);
    }
    for content in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, &content).unwrap();

        let store = small_segments().open(&path).await.unwrap();
        assert_eq!(store.last_seq(), n, "{} bytes", content.len());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), full);
        drop(store);
        assert!(broken_files(dir.path()).is_empty(), "zeros are no evidence");
        assert_reopens_with(&path, n, small_segments()).await;
    }
}

#[tokio::test]
async fn zeros_with_anything_else_after_them_are_refused_and_left_untouched() {
    let src = tempfile::tempdir().unwrap();
    just_rotated(src.path()).await;
    let mut content = vec![0; 300];
    content.extend_from_slice(b"{\"a\":1}\n");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(src.path(), dir.path());
    let path = dir.path().join("journal.jsonl");
    std::fs::write(&path, &content).unwrap();

    assert_refused_untouched(&path, &content, small_segments()).await;
}

#[tokio::test]
async fn a_lone_file_of_zeros_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    std::fs::write(&path, [0; 100]).unwrap();

    let text = assert_refused_untouched(&path, &[0; 100], MiniStoreOptions::default())
        .await
        .to_string();
    assert!(
        text.contains("zero bytes only") && text.contains("delete it"),
        "{text}"
    );
}

#[tokio::test]
async fn a_new_journal_whose_header_was_cut_short_opens_empty() {
    let full = header(1);
    for cut in 0..full.len() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        std::fs::write(&path, &full[..cut]).unwrap();

        let store = MiniStore::open(&path).await.unwrap();
        assert_eq!(store.last_seq(), 0, "cut at {cut}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            full,
            "cut at {cut}"
        );
        drop(store);
        assert_reopens_with(&path, 0, small_segments()).await;
    }
}

#[tokio::test]
async fn a_journal_of_the_published_crate_cut_at_any_byte_of_its_last_record_opens() {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("journal.jsonl");
    let mut store = ministore_published::MiniStoreOptions::new()
        .max_bytes_per_segment(150)
        .max_segments(1000)
        .open(&path)
        .await
        .unwrap();
    let mut n = 0;
    // Stop on a record that stays in the active file.
    while n < 10 || len(&path) <= 27 {
        n += 1;
        store.append(&rec(n)).await.unwrap();
    }
    drop(store);
    let end = len(&path);
    let start = end - serde_json::to_string(&rec(n)).unwrap().len() as u64 - 1;

    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join("journal.jsonl");
        truncate(&path, cut);
        assert_reopens_with(&path, n - 1, small_segments()).await;
    }
}

#[tokio::test]
async fn a_crash_before_retention_deleted_old_segments_reopens_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (path, n) = just_rotated(dir.path()).await;
    let segments = |dir: &Path| {
        file_names(dir)
            .into_iter()
            .filter(|f| !f.ends_with(".lock") && !f.ends_with(".meta"))
            .count()
    };
    assert!(segments(dir.path()) > 3);
    // As if the last rotation had created the new active file, then crashed before
    // deleting what max_segments(3) no longer keeps.
    let keep_three = small_segments().max_segments(3);

    let mut store = keep_three.clone().open(&path).await.unwrap();
    assert_eq!(store.last_seq(), n);
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, recs(1..=n), "open deletes nothing");

    // The next rotation deletes them; sequence numbers do not move.
    let mut next = n + 1;
    while segments(dir.path()) > 3 {
        assert_eq!(
            store.append_batch(&[rec(next)]).await.unwrap(),
            next..next + 1
        );
        next += 1;
    }
    let read = read_all(&mut store.reader(1), 1000).await;
    assert_eq!(read.last().unwrap().seq, next - 1);
    assert!(
        read.iter()
            .all(|r| r.parse::<String>().unwrap() == rec(r.seq))
    );
}

/// The rotated segments of an [`indexed_journal`], oldest first.
fn indexed_segments(dir: &Path) -> Vec<PathBuf> {
    let segments = rotated_segments(&dir.join("journal.jsonl"));
    assert_eq!(segments.len(), 3, "{segments:?}");
    segments
}

/// Checks that readers of the journal at `path` start exactly where asked around every
/// entry of `index` (the index of one of its segments as it was written).
async fn assert_lands_exactly_around(path: &Path, index: &SegmentIndex, what: &str) {
    let mut starts = vec![index.first_seq, index.first_seq + 1];
    for &(seq, _) in &index.entries {
        starts.extend([seq - 1, seq, seq + 1, seq + 700]);
    }
    for from in starts {
        let batch = MiniStore::read_from(path, from)
            .next_batch(2)
            .await
            .unwrap();
        assert_eq!(seqs(&batch), vec![from, from + 1], "{what}: from {from}");
        assert_eq!(
            batch[0].parse::<String>().unwrap(),
            fixed_width(from),
            "{what}: from {from}"
        );
    }
}

#[tokio::test]
async fn a_missing_torn_stale_or_foreign_index_is_ignored_and_readers_still_land_exactly() {
    let src = tempfile::tempdir().unwrap();
    drop(indexed_journal(src.path()).await);
    let [first, second, _] = &indexed_segments(src.path())[..] else {
        unreachable!()
    };
    let good = std::fs::read(index_path(second)).unwrap();
    let index = SegmentIndex::read(&index_path(second));
    // Entries that all claim one record too many: used, they would misplace every reader,
    // so a reader that lands exactly has ignored them.
    let shifted = SegmentIndex {
        entries: index.entries.iter().map(|&(s, o)| (s + 1, o)).collect(),
        ..index.clone()
    };
    let mut flipped = good.clone();
    flipped[45] ^= 1;
    let cases: Vec<(&str, Option<Vec<u8>>)> = vec![
        ("missing (a crash before it was written)", None),
        ("empty", Some(Vec::new())),
        ("cut after its magic", Some(good[..8].to_vec())),
        ("cut in an entry", Some(good[..good.len() - 20].to_vec())),
        (
            "without its checksum",
            Some(good[..good.len() - 8].to_vec()),
        ),
        ("a byte flipped", Some(flipped)),
        ("zeros", Some(vec![0; good.len()])),
        ("not an index", Some(b"hello\n".repeat(100))),
        (
            "of another segment",
            Some(std::fs::read(index_path(first)).unwrap()),
        ),
        (
            "for a longer segment",
            Some(
                SegmentIndex {
                    segment_len: index.segment_len + 1,
                    ..shifted.clone()
                }
                .encode(),
            ),
        ),
        (
            "for a segment starting elsewhere",
            Some(
                SegmentIndex {
                    first_seq: index.first_seq + 1,
                    ..shifted.clone()
                }
                .encode(),
            ),
        ),
        (
            "for a longer header",
            Some(
                SegmentIndex {
                    header_len: index.header_len + 1,
                    ..shifted.clone()
                }
                .encode(),
            ),
        ),
        (
            "whose entries are not line starts",
            Some(
                SegmentIndex {
                    entries: index.entries.iter().map(|&(s, o)| (s, o + 1)).collect(),
                    ..index.clone()
                }
                .encode(),
            ),
        ),
        (
            "whose entries run past the segment",
            Some(
                SegmentIndex {
                    entries: vec![(index.first_seq + 10, index.segment_len + 230)],
                    ..index.clone()
                }
                .encode(),
            ),
        ),
    ];
    for (what, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let target = index_path(&dir.path().join(second.file_name().unwrap()));
        match bytes {
            Some(bytes) => std::fs::write(&target, bytes).unwrap(),
            None => std::fs::remove_file(&target).unwrap(),
        }
        let path = dir.path().join("journal.jsonl");
        assert_lands_exactly_around(&path, &index, what).await;
        // The writer neither trusts nor needs it either.
        assert_reopens_with_fixed_width(&path).await;
    }
}

/// Opens the [`indexed_journal`] at `path` and checks its records are all there.
async fn assert_reopens_with_fixed_width(path: &Path) {
    let store = indexed_options().open(path).await.unwrap();
    assert_eq!(store.last_seq(), INDEXED_RECORDS);
    let read = read_all(&mut store.reader(1), 10_000).await;
    assert_eq!(seqs(&read), (1..=INDEXED_RECORDS).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_grown_segment_makes_its_index_stale_and_it_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    drop(indexed_journal(dir.path()).await);
    let second = &indexed_segments(dir.path())[1];
    let index = SegmentIndex::read(&index_path(second));
    // The index is replaced by one claiming a record too many per entry, for the segment's
    // length before a partial line was added to it (not a record: readers skip it).
    let shifted = SegmentIndex {
        entries: index.entries.iter().map(|&(s, o)| (s + 1, o)).collect(),
        ..index.clone()
    };
    std::fs::write(index_path(second), shifted.encode()).unwrap();
    append_bytes(second, b"\"partial");
    assert_lands_exactly_around(&dir.path().join("journal.jsonl"), &index, "grown").await;
}

#[tokio::test]
async fn open_deletes_indexes_whose_segment_is_gone_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    drop(indexed_journal(dir.path()).await);
    let [first, second, third] = &indexed_segments(dir.path())[..] else {
        unreachable!()
    };
    let before = file_names(dir.path());
    // As a crash between deleting an index and its segment would leave it (the other
    // order), or the published crate's retention, which knows nothing of indexes.
    std::fs::copy(
        index_path(first),
        dir.path().join("journal.jsonl.000099.idx"),
    )
    .unwrap();
    // As a crash while an index was being written leaves it.
    std::fs::write(dir.path().join("journal.jsonl.000004.idx.tmp"), b"MSIDX").unwrap();
    // Not ours: left alone.
    std::fs::write(dir.path().join("journal.jsonl.x.idx"), b"x").unwrap();

    let store = indexed_options()
        .open(dir.path().join("journal.jsonl"))
        .await
        .unwrap();
    let mut expected = before;
    expected.push("journal.jsonl.x.idx".into());
    expected.sort();
    assert_eq!(file_names(dir.path()), expected);
    for segment in [first, second, third] {
        assert!(index_path(segment).exists());
    }
    assert_eq!(store.last_seq(), INDEXED_RECORDS);
}

#[tokio::test]
async fn a_metadata_file_a_crash_left_half_created_is_reported_and_deleted_by_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let mut store = small_segments().open(&path).await.unwrap();
    store.append_batch(&recs(1..=10)).await.unwrap();
    drop(store);
    let before = file_names(dir.path());
    // A metadata file is written as `<name>.tmp`, fsynced, then renamed into place: a crash
    // before the rename leaves the `.tmp`, which never held an entry. (One for the seq a
    // reopen starts the next file at is consumed by it: crash.rs.)
    let tmp = "journal.jsonl.from-999.meta.tmp";
    std::fs::write(dir.path().join(tmp), b"MSMETA01").unwrap();

    let report = ministore::verify::verify_journal(&path).unwrap();
    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.kind, p.severity, p.file.file_name().unwrap().to_owned()))
        .collect();
    assert_eq!(
        found,
        [(
            ministore::verify::ProblemKind::UnfinishedMetadata,
            ministore::verify::Severity::Info,
            tmp.into()
        )]
    );

    let store = small_segments().open(&path).await.unwrap();
    assert_eq!(file_names(dir.path()), before);
    assert_eq!(store.last_seq(), 10);
    let read: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(read, recs(1..=10));
}

/// A journal as a crash of its writer leaves it: records `1..=n` (default options, so the
/// active file is extended with zeros ahead of them), copied while the writer is open.
/// Returns the copy's active file and the length of its records.
async fn crashed_with_zeros(dir: &Path, n: u64) -> (PathBuf, u64) {
    let live = dir.join("live");
    let path = live.join("journal.jsonl");
    let mut store = MiniStoreOptions::new()
        .preallocate(true)
        .open(&path)
        .await
        .unwrap();
    for chunk in recs(1..=n).chunks(7) {
        store.append_batch(chunk).await.unwrap();
    }
    let records = len_of_records(&path);
    let copy = dir.join("crashed");
    copy_dir(&live, &copy);
    drop(store);
    (copy.join("journal.jsonl"), records)
}

/// The length of an active file up to its first NUL byte.
fn len_of_records(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len()) as u64
}

#[tokio::test]
async fn zeros_written_ahead_of_the_records_are_cut_after_a_crash_without_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = crashed_with_zeros(dir.path(), 40).await;
    assert!(len(&path) > records, "the crash left no zeros to cut");
    // Readers of the crashed journal stop at the zeros.
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, recs(1..=40));

    let store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 40);
    assert_eq!(len(&path), records);
    assert!(broken_files(path.parent().unwrap()).is_empty());
    drop(store);
    assert_reopens_with(&path, 40, MiniStoreOptions::new()).await;
}

#[tokio::test]
async fn a_commit_whose_first_page_never_reached_the_disk_is_cut_with_the_rest_kept_aside() {
    // Overwriting zeros in place, the pages of one commit reach the disk in any order: a
    // power loss can leave a later page of it written and an earlier one still zeros.
    // Complete lines after those zeros are the rest of the unacknowledged commit.
    let dir = tempfile::tempdir().unwrap();
    let (path, records) = crashed_with_zeros(dir.path(), 40).await;
    let mut later_page = vec![0u8; 100];
    later_page.extend_from_slice(b"of a record\"\n");
    for r in recs(41..=43) {
        later_page
            .extend_from_slice(format!("{}\n", serde_json::to_string(&r).unwrap()).as_bytes());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &later_page, records))
        .unwrap();
    // Readers stop at the first NUL.
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, recs(1..=40));

    let store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), 40);
    assert_eq!(len(&path), records);
    let evidence = path.with_file_name(format!("journal.jsonl.broken-{records}"));
    assert_eq!(
        broken_files(path.parent().unwrap()),
        vec![evidence.file_name().unwrap().to_string_lossy().into_owned()]
    );
    assert!(std::fs::read(&evidence).unwrap().starts_with(&later_page));
    drop(store);
    assert_reopens_with(&path, 40, MiniStoreOptions::new()).await;
}

// Damage in the middle of a journal: reported with the files and seqs, never an endless
// read and never a silent gap.

/// The lines of `file` without the one at `index` (0 is the header).
fn drop_line(file: &Path, index: usize) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    lines.remove(index);
    std::fs::write(file, lines.concat()).unwrap();
}

/// Reads from `from` with `reader` until it fails; the records it returned first, and the
/// error. Fails the test if the reader does not fail within a few seconds.
async fn read_until_missing(mut reader: ministore::JournalReader) -> (Vec<u64>, MiniStoreError) {
    let read = async {
        let mut got = Vec::new();
        loop {
            match reader.next_batch(3).await {
                Ok(batch) if batch.is_empty() => panic!("the reader ended quietly after {got:?}"),
                Ok(batch) => got.extend(seqs(&batch)),
                Err(e) => return (got, e),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("the reader neither ended nor failed within 5 s")
}

/// Checks that every reader of the damaged journal at `path` stops with `Missing` at
/// `expected`, after exactly the records before it, and that open reports the damage.
async fn assert_missing_from(path: &Path, expected: u64, damaged: &Path) {
    let name = damaged.file_name().unwrap().to_str().unwrap().to_owned();
    let check = |err: &MiniStoreError| match err {
        MiniStoreError::Missing {
            expected: e,
            reason,
            ..
        } => {
            assert_eq!(*e, expected, "{reason}");
            assert!(reason.contains(&name), "{reason} does not name {name}");
        }
        other => panic!("expected Missing at {expected}, got {other}"),
    };
    let (got, err) = read_until_missing(MiniStore::read_from(path, 1)).await;
    assert_eq!(got, (1..expected).collect::<Vec<_>>());
    check(&err);
    // Started inside the gap: the same error, no records.
    let mut reader = MiniStore::read_from(path, expected);
    check(&reader.next_batch(10).await.unwrap_err());
    // The published API fails too, instead of returning a journal with a hole.
    assert!(MiniStore::replay::<String, _>(path).await.is_err());

    let store = small_segments().open(path).await.unwrap();
    let damage = store.damage().expect("open reports the damage");
    assert!(damage.contains(&name), "{damage}");
    let (got, err) = read_until_missing(store.reader(1)).await;
    assert_eq!(got, (1..expected).collect::<Vec<_>>());
    check(&err);
}

#[tokio::test]
async fn a_rotated_segment_missing_its_last_line_is_reported_not_read_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 30).await;
    let second = rotated_segments(&path)[1].clone();
    let lines = std::fs::read_to_string(&second).unwrap().lines().count();
    let first_seq: u64 = header_first_seq(&second);
    drop_line(&second, lines - 1);
    assert_missing_from(&path, first_seq + lines as u64 - 2, &second).await;
}

#[tokio::test]
async fn a_rotated_segment_missing_a_middle_line_is_reported_where_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 30).await;
    let second = rotated_segments(&path)[1].clone();
    let lines = std::fs::read_to_string(&second).unwrap().lines().count();
    let first_seq = header_first_seq(&second);
    drop_line(&second, 2);
    assert!(lines > 3);
    // Its metadata tells which line went: the one in its place fails the CRC32C of the
    // record that belongs there, so readers stop right where the damage is.
    let (got, err) = read_until_missing(MiniStore::read_from(&path, 1)).await;
    assert_eq!(got, (1..=first_seq).collect::<Vec<_>>());
    match err {
        MiniStoreError::Checksum { path: p, seq, .. } => {
            assert_eq!((p, seq), (second.clone(), first_seq + 1))
        }
        other => panic!("expected Checksum, got {other}"),
    }
    // Open, which counts lines, finds the segment one record short.
    let store = small_segments().open(&path).await.unwrap();
    let damage = store.damage().expect("open reports the damage");
    let name = second.file_name().unwrap().to_str().unwrap();
    assert!(damage.contains(name), "{damage}");
}

#[tokio::test]
async fn a_rotated_segment_deleted_from_the_middle_is_reported_by_readers_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = journal_with(dir.path(), 30).await;
    let segments = rotated_segments(&path);
    let (first, second) = (segments[0].clone(), segments[1].clone());
    let gap = header_first_seq(&second);
    std::fs::remove_file(&second).unwrap();
    assert_missing_from(&path, gap, &first).await;
}

#[tokio::test]
async fn an_indexed_segment_deleted_from_the_middle_is_found_at_open_from_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    drop(indexed_journal(dir.path()).await);
    let segments = indexed_segments(dir.path());
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1]).unwrap();
    let store = indexed_options().open(&path).await.unwrap();
    let damage = store.damage().expect("open reports the damage");
    let name = segments[0].file_name().unwrap().to_str().unwrap();
    assert!(damage.contains(name), "{damage}");
    // A journal whose segments chain reports none.
    let clean = tempfile::tempdir().unwrap();
    drop(indexed_journal(clean.path()).await);
    let store = indexed_options()
        .open(clean.path().join("journal.jsonl"))
        .await
        .unwrap();
    assert_eq!(store.damage(), None);
}

fn header_first_seq(segment: &Path) -> u64 {
    let text = std::fs::read_to_string(segment).unwrap();
    let header = text.lines().next().unwrap();
    header
        .rsplit("first_seq=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_header_claiming_a_seq_near_the_end_of_u64_is_refused_not_overflowed() {
    for claimed in [u64::MAX, u64::MAX - 1, (1u64 << 62) + 1] {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_with(dir.path(), 12).await;
        let rotated = rotated_segments(&path);
        let text = std::fs::read_to_string(&rotated[1]).unwrap();
        let forged = text.replacen(
            &format!("first_seq={}", header_first_seq(&rotated[1])),
            &format!("first_seq={claimed}"),
            1,
        );
        std::fs::write(&rotated[1], &forged).unwrap();
        let err = small_segments().open(&path).await.unwrap_err();
        assert!(
            matches!(err, MiniStoreError::BadHeader { .. }),
            "{claimed}: {err}"
        );
        assert!(
            err.to_string().contains("beyond what any journal reaches"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&rotated[1]).unwrap(),
            forged,
            "left untouched"
        );
        let read = MiniStore::read_from(&path, 1).next_batch(100).await;
        assert!(read.is_err(), "{claimed}: {read:?}");
        assert!(MiniStore::replay::<String, _>(&path).await.is_err());
    }
}
