//! The journal against a model: a plain `Vec` of the records appended so far.
//!
//! Random sequences of appends, batch appends (empty ones included) and reopens run on a
//! real journal with segments small enough to rotate every few records; after each step the
//! journal must agree with the model: `last_seq` is its length, `replay` is the model, and
//! reading from any sequence number `k` gives `model[k-1..]` numbered from `k`. Two readers
//! that live through the whole run (one of the writer's, one reading the files) tail the
//! journal while it grows and rotates, and must see the model in order, without gaps.

use std::path::Path;

use ministore::{JournalReader, MiniStore, MiniStoreOptions};
use ministore_tests::records::read_all;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(String),
    AppendBatch(Vec<String>),
    Reopen,
    /// Read up to this many records with each of the tailing readers.
    Read(usize),
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
        2 => (1usize..8).prop_map(Op::Read),
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
            Op::Read(max) => {
                tail(&mut durable, &mut durable_next, max, &model).await?;
                tail(&mut on_disk, &mut on_disk_next, max, &model).await?;
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
