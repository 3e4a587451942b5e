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
