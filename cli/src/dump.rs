//! `dump`: a journal's records as JSON lines, read through `MiniStore::read_from` (no
//! writer, no lock), each record embedded exactly as stored.

use std::io::Write;

use ministore::MiniStore;
use ministore::verify::{self, Target};

use crate::args::DumpArgs;
use crate::error::CliError;

/// Records per read, and the bytes of JSON a read may hold: memory stays flat whatever the
/// journal's size.
const BATCH_RECORDS: usize = 4096;
const BATCH_BYTES: usize = 4 << 20;

/// `ministore dump PATH [--from SEQ] [--to SEQ]`.
pub fn dump(args: &DumpArgs) -> Result<u8, CliError> {
    let to = args.to.unwrap_or(u64::MAX);
    if args.from > to {
        return Err(CliError::Usage(format!(
            "--from {} is after --to {to}: nothing to print",
            args.from
        )));
    }
    let base = match verify::resolve(&args.path)? {
        Target::Journal(base) => base,
        Target::DataDir(dir) => {
            return Err(CliError::NotAJournal {
                path: dir,
                reason: "it holds no journal.jsonl; give one journal's directory, e.g. \
                         DATA_DIR/NAME"
                    .into(),
            });
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ministore::MiniStoreError::Io {
            op: "starting the runtime for",
            path: base.clone(),
            source: e,
        })?;
    runtime.block_on(async {
        let mut reader = MiniStore::read_from(&base, args.from);
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        let mut first = true;
        // It ends: each batch holds the records after the last one (the reader returns only
        // the next seq, or an error), and an empty batch or a seq past `to` stops it.
        'read: loop {
            let batch = reader.next_batch_within(BATCH_RECORDS, BATCH_BYTES).await?;
            let Some(head) = batch.first() else { break };
            if first && head.seq > args.from {
                eprintln!(
                    "ministore: records before seq {} are not in the journal (deleted by \
                     retention); starting there",
                    head.seq
                );
            }
            first = false;
            for record in batch {
                if record.seq > to {
                    break 'read;
                }
                verify::check_record(record.json.as_bytes())
                    .map_err(|reason| invalid_record(&base, record.seq, reason))?;
                writeln!(out, r#"{{"seq":{},"record":{}}}"#, record.seq, record.json)
                    .map_err(CliError::Output)?;
            }
        }
        out.flush().map_err(CliError::Output)?;
        Ok(0)
    })
}

/// Names the file and line of record `seq`, found from the segments' headers and indexes.
fn invalid_record(base: &std::path::Path, seq: u64, reason: String) -> CliError {
    let found = verify::inspect_journal(base).ok().and_then(|report| {
        report
            .segment_of(seq)
            .map(|s| (s.path.clone(), seq - s.first_seq + 2))
    });
    let (file, line) = found.unwrap_or_else(|| (base.to_path_buf(), 0));
    CliError::InvalidRecord {
        file,
        seq,
        line,
        reason,
    }
}
