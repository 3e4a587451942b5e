//! The journal against a model: a plain `Vec` of the records appended so far.
//!
//! Random sequences of appends, batch appends (empty ones included) and reopens (full, and
//! warm from the state kept at close) run on a real journal with segments small enough to
//! rotate every few records; after each step the journal must agree with the model:
//! `last_seq` is its length, `replay` is the model, and
//! reading from any sequence number `k` gives `model[k-1..]` numbered from `k`. Two readers
//! that live through the whole run (one of the writer's, one reading the files) tail the
//! journal while it grows and rotates, and must see the model in order, without gaps.
//!
//! Groups of requests with idempotency keys (from a small set, so keys are reused, with the
//! same records or others) and expected last seqs run too, against the model's own map of
//! keys: a retry is answered with its original seqs whether the store was reopened or the
//! segments rotated since, a reused key and a wrong expectation write nothing.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use ministore::{Append, JournalReader, JsonLine, MiniStore, MiniStoreError, MiniStoreOptions};
use ministore_tests::records::read_all;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(String),
    AppendBatch(Vec<String>),
    Reopen,
    /// Closed keeping its state, and reopened from it (`blocking_close_warm`).
    ReopenWarm,
    /// Read up to this many records with each of the tailing readers.
    Read(usize),
    /// Requests committed together with `append_requests`.
    Group(Vec<Keyed>),
}

#[derive(Debug, Clone)]
struct Keyed {
    /// One of a few keys, or none.
    key: Option<u8>,
    values: Vec<String>,
    /// Whether it expects a last seq: `Some(true)` the one it would follow if every
    /// request before it in its group were written, `Some(false)` one more than that.
    expect: Option<bool>,
}

fn keyed() -> impl Strategy<Value = Keyed> {
    (
        prop::option::weighted(0.8, 0u8..6),
        prop::collection::vec("[ab]{0,2}", 0..3),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(key, values, expect)| Keyed {
            key,
            values,
            expect,
        })
}

/// What the model expects of one keyed request, given the records and keys so far: its
/// seqs and whether it is a duplicate, or the error it gets; the model is updated.
fn model_request(
    model: &mut Vec<String>,
    keys: &mut HashMap<u8, (Range<u64>, Vec<String>)>,
    request: &Keyed,
    expected_last_seq: Option<u64>,
) -> Result<(Range<u64>, bool), String> {
    let last = model.len() as u64;
    if let Some(k) = request.key
        && let Some((seqs, values)) = keys.get(&k)
    {
        return if *values == request.values {
            Ok((seqs.clone(), true))
        } else {
            Err(format!("KeyReused at {}", seqs.start))
        };
    }
    if let Some(expected) = expected_last_seq
        && expected != last
    {
        return Err(format!("LastSeqMismatch {expected} {last}"));
    }
    let seqs = last + 1..last + 1 + request.values.len() as u64;
    if let Some(k) = request.key
        && !request.values.is_empty()
    {
        keys.insert(k, (seqs.clone(), request.values.clone()));
    }
    model.extend(request.values.iter().cloned());
    Ok((seqs, false))
}

/// Short strings with the characters JSON escapes and multi-byte UTF-8.
fn value() -> impl Strategy<Value = String> {
    "[a-z0-9 \"\\\\\n\t/é€😀]{0,24}"
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => value().prop_map(Op::Append),
        3 => prop::collection::vec(value(), 0..6).prop_map(Op::AppendBatch),
        1 => Just(Op::Reopen),
        1 => Just(Op::ReopenWarm),
        2 => (1usize..8).prop_map(Op::Read),
        3 => prop::collection::vec(keyed(), 1..4).prop_map(Op::Group),
    ]
}

/// Checks the journal at `path` against `model`, reading it as it is on disk.
async fn check_on_disk(path: &Path, model: &[String]) -> Result<(), TestCaseError> {
    let replayed: Vec<String> = MiniStore::replay(path).await.unwrap();
    prop_assert_eq!(&replayed, model);
    let n = model.len() as u64;
    // Every start for short journals; the ends and a few in between for longer ones.
    let starts: Vec<u64> = if n <= 12 {
        (1..=n + 1).collect()
    } else {
        vec![1, 2, n / 3, n / 2, n - 1, n, n + 1]
    };
    for from in starts {
        let read = read_all(&mut MiniStore::read_from(path, from), 7).await;
        let expected = &model[(from - 1) as usize..];
        prop_assert_eq!(read.len(), expected.len(), "read_from({})", from);
        for (i, (record, value)) in read.iter().zip(expected).enumerate() {
            prop_assert_eq!(record.seq, from + i as u64);
            prop_assert_eq!(&record.parse::<String>().unwrap(), value);
        }
    }
    Ok(())
}

/// Reads up to `max` records with `reader` and checks they continue the model from `next`.
async fn tail(
    reader: &mut JournalReader,
    next: &mut u64,
    max: usize,
    model: &[String],
) -> Result<(), TestCaseError> {
    let batch = reader.next_batch(max).await.unwrap();
    let available = model.len() as u64 + 1 - *next;
    prop_assert_eq!(batch.len() as u64, available.min(max as u64));
    for record in batch {
        prop_assert_eq!(record.seq, *next);
        prop_assert_eq!(
            &record.parse::<String>().unwrap(),
            &model[*next as usize - 1]
        );
        *next += 1;
    }
    Ok(())
}

async fn run(max_bytes: u64, preallocate: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    // Large enough that retention never deletes: the model keeps everything.
    let opts = MiniStoreOptions::new()
        .max_bytes_per_segment(max_bytes)
        .max_segments(100_000)
        .preallocate(preallocate);
    let mut store = opts.clone().open(&path).await.unwrap();
    let mut model: Vec<String> = Vec::new();
    let mut keys = HashMap::new();
    let (mut durable_next, mut on_disk_next) = (1, 1);
    let mut durable = store.reader(durable_next);
    let mut on_disk = MiniStore::read_from(&path, on_disk_next);

    for op in ops {
        let first = model.len() as u64 + 1;
        match op {
            Op::Append(value) => {
                store.append(&value).await.unwrap();
                model.push(value);
            }
            Op::AppendBatch(values) => {
                let seqs = store.append_batch(&values).await.unwrap();
                prop_assert_eq!(seqs, first..first + values.len() as u64);
                model.extend(values);
            }
            Op::Reopen => {
                drop(store);
                check_on_disk(&path, &model).await?;
                store = opts.clone().open(&path).await.unwrap();
                // The old writer's reader is done; a new one goes on from where it was.
                durable = store.reader(durable_next);
            }
            Op::ReopenWarm => {
                let warm = store
                    .blocking_close_warm()
                    .expect("a healthy journal closes warm");
                check_on_disk(&path, &model).await?;
                let reopened = warm.blocking_reopen().unwrap();
                prop_assert_eq!(reopened.changed, None);
                store = reopened.store;
                durable = store.reader(durable_next);
            }
            Op::Read(max) => {
                tail(&mut durable, &mut durable_next, max, &model).await?;
                tail(&mut on_disk, &mut on_disk_next, max, &model).await?;
            }
            Op::Group(group) => {
                let mut last = model.len() as u64;
                let requests: Vec<Append> = group
                    .iter()
                    .map(|r| {
                        let lines = r.values.iter().map(|v| JsonLine::from_value(v).unwrap());
                        let mut append = Append::new(lines.collect());
                        append.key = r.key.map(|k| format!("key-{k}"));
                        // Right as the store will see it: after the requests before it.
                        append.expected_last_seq = r.expect.map(|right| last + u64::from(!right));
                        last += r.values.len() as u64;
                        append
                    })
                    .collect();
                let expected: Vec<Option<u64>> =
                    requests.iter().map(|r| r.expected_last_seq).collect();
                let results = store.append_requests(requests).await.unwrap();
                for ((request, result), expected) in group.iter().zip(results).zip(expected) {
                    let got = match result {
                        Ok(a) => Ok((a.seqs, a.duplicate)),
                        Err(MiniStoreError::KeyReused { first_seq, .. }) => {
                            Err(format!("KeyReused at {first_seq}"))
                        }
                        Err(MiniStoreError::LastSeqMismatch { expected, last_seq }) => {
                            Err(format!("LastSeqMismatch {expected} {last_seq}"))
                        }
                        Err(e) => panic!("unexpected {e}"),
                    };
                    prop_assert_eq!(
                        got,
                        model_request(&mut model, &mut keys, request, expected),
                        "{:?}",
                        request
                    );
                }
            }
        }
        prop_assert_eq!(store.last_seq(), model.len() as u64);
    }

    check_on_disk(&path, &model).await?;
    // The writer's own reader agrees, from the start and from the middle.
    for from in [1, model.len() as u64 / 2 + 1] {
        let read = read_all(&mut store.reader(from), 5).await;
        let values: Vec<String> = read.iter().map(|r| r.parse().unwrap()).collect();
        prop_assert_eq!(&values[..], &model[(from - 1) as usize..]);
    }
    Ok(())
}

proptest! {
    // Few cases, so the suite stays fast; a bounded shrink, so a failure reports soon.
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_journal_agrees_with_a_vec_of_its_records(
        max_bytes in 80u64..800,
        preallocate in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(max_bytes, preallocate, ops))?;
    }
}
