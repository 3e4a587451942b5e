//! Reading a journal back through the store's own readers.

use ministore::{JournalReader, Record};

/// Reads everything `reader` returns now, in batches of `batch` records.
pub async fn read_all(reader: &mut JournalReader, batch: usize) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let records = reader.next_batch(batch).await.expect("reading the journal");
        if records.is_empty() {
            return out;
        }
        out.extend(records);
    }
}

/// The sequence numbers of `records`.
pub fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

/// Record `i` of [`indexed_journal`]: 20 characters, a 23-byte journal line. Equal widths
/// make every index entry of one segment also a line start in any other, so an index
/// wrongly used for the wrong segment shows as wrong records rather than by chance.
pub fn fixed_width(i: u64) -> String {
    format!("r{i:019}")
}

/// Segments of 120 bytes, all kept (up to 1,000): a few records each, so that a test
/// rotates every few appends.
pub fn small_segments() -> ministore::MiniStoreOptions {
    ministore::MiniStoreOptions::new()
        .max_bytes_per_segment(120)
        .max_segments(1000)
}

/// The options of [`indexed_journal`]: segments of about 320 KB, all kept.
pub fn indexed_options() -> ministore::MiniStoreOptions {
    ministore::MiniStoreOptions::new()
        .max_bytes_per_segment(300_000)
        .max_segments(1000)
}

/// Records in [`indexed_journal`].
pub const INDEXED_RECORDS: u64 = 50_000;

/// A journal at `dir/journal.jsonl` of records `fixed_width(1..=INDEXED_RECORDS)`, in
/// segments of about 320 KB (four index entries each): three rotated, with their index
/// files, and the active one. Every segment is kept. The store is returned open.
pub async fn indexed_journal(dir: &std::path::Path) -> ministore::MiniStore {
    let mut store = indexed_options()
        .open(dir.join("journal.jsonl"))
        .await
        .expect("opening the journal");
    let records: Vec<String> = (1..=INDEXED_RECORDS).map(fixed_width).collect();
    for chunk in records.chunks(1000) {
        store.append_batch(chunk).await.expect("appending");
    }
    store
}
