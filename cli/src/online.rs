//! The online commands: `append`, `tail`, `ls` and `info`, through `ministore-client` to
//! the server at `--addr`. Each error comes back as one [`CliError`] naming the address.

use std::io::{BufRead, Write};
use std::time::Duration;

use ministore_client::proto::InfoRequest;
use ministore_client::{Client, ClientBuilder, JournalSummary};
use serde_json::value::RawValue;
use tokio_stream::StreamExt;

use crate::args::{AppendArgs, InfoArgs, LsArgs, ServerArgs, TailArgs};
use crate::error::CliError;

/// Lines of stdin sent as one AppendBatch at most, and their bytes (a longer line goes
/// alone): well under gRPC's 4 MiB message limit and the server's default record limit.
const BATCH_LINES: usize = 1000;
const BATCH_BYTES: usize = 1 << 20;
/// Lines read ahead of the server's answers: bounds memory when stdin is faster.
const READ_AHEAD: usize = 4 * BATCH_LINES;

/// Runs `command` on a single-threaded runtime: one command, one connection.
fn run<F: std::future::Future<Output = Result<u8, CliError>>>(
    command: impl FnOnce() -> F,
) -> Result<u8, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Client(format!("cannot start the runtime: {e}")))?
        .block_on(command())
}

/// A client connected to the server `args` name, with their token and TLS settings.
async fn connect(args: &ServerArgs) -> Result<Client, CliError> {
    let mut builder = ClientBuilder::new(&args.addr).connect_timeout(Duration::from_secs(5));
    let local = |e| CliError::from_client(&args.addr, e);
    if let Some(ca) = &args.ca_cert {
        builder = builder.tls_ca_file(ca).map_err(local)?;
    }
    if let Some(domain) = &args.tls_domain {
        builder = builder.tls_domain(domain);
    }
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path)
                .map_err(|e| CliError::Client(format!("cannot read {}: {e}", path.display())))
        };
        builder = builder.tls_identity(read(cert)?, read(key)?);
    }
    if let Some(token) = &args.token {
        builder = builder.bearer_token(token);
    }
    builder.connect().await.map_err(local)
}

/// `ministore append JOURNAL [JSON|-]`.
pub fn append(args: &AppendArgs) -> Result<u8, CliError> {
    let addr = &args.server.addr;
    let err = |e| CliError::from_client(addr, e);
    match args.record.as_deref() {
        None | Some("-") => run(|| append_stdin(args)),
        Some(json) => {
            let record: &RawValue = serde_json::from_str(json).map_err(|e| {
                CliError::BadInput(format!("the record is not one JSON value: {e}"))
            })?;
            run(|| async {
                let client = connect(&args.server).await?;
                let seq = client.append(&args.journal, record).await.map_err(err)?;
                println!("{seq}");
                Ok(0)
            })
        }
    }
}

/// One line of stdin: its number (from 1) and text.
type Line = (usize, String);

/// Appends stdin's lines in order, each batch what was waiting when the last one returned.
async fn append_stdin(args: &AppendArgs) -> Result<u8, CliError> {
    let addr = &args.server.addr;
    let client = connect(&args.server).await?;
    let (lines, mut waiting) = tokio::sync::mpsc::channel::<std::io::Result<Line>>(READ_AHEAD);
    // std's stdin blocks: a thread of its own feeds the lines in, ending with stdin.
    std::thread::spawn(move || {
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let failed = line.is_err();
            if lines.blocking_send(line.map(|l| (i + 1, l))).is_err() || failed {
                return;
            }
        }
    });
    let mut out = std::io::stdout().lock();
    let mut stop: Option<CliError> = None;
    // Ends with stdin: every turn takes at least one line from the channel.
    while let Some(first) = waiting.recv().await {
        let mut batch: Vec<Line> = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item
                .map_err(|e| CliError::BadInput(format!("reading stdin: {e}")))
                .and_then(|line| checked(line, batch.len()))
            {
                Ok(None) => {}
                Ok(Some((n, line))) => {
                    bytes += line.len();
                    batch.push((n, line));
                }
                Err(e) => {
                    stop = Some(e);
                    break;
                }
            }
            if batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
                next = waiting.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let records: Vec<&RawValue> = batch
                .iter()
                .map(|(_, line)| serde_json::from_str(line).expect("checked"))
                .collect();
            let seqs = client
                .append_batch(&args.journal, &records)
                .await
                .map_err(|e| match CliError::from_client(addr, e) {
                    CliError::Server {
                        addr,
                        code,
                        message,
                    } => CliError::Server {
                        addr,
                        code,
                        message: format!(
                            "stdin lines {}..={}: {message}; nothing of them was appended",
                            batch[0].0,
                            batch[batch.len() - 1].0
                        ),
                    },
                    other => other,
                })?;
            for seq in seqs {
                writeln!(out, "{seq}").map_err(CliError::Output)?;
            }
            out.flush().map_err(CliError::Output)?;
        }
        if let Some(e) = stop {
            return Err(e);
        }
    }
    Ok(0)
}

/// A line to append (`None` for a blank one), or why it cannot be one. `pending` lines of
/// the batch it would join come before it.
fn checked((n, line): Line, pending: usize) -> Result<Option<Line>, CliError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<&RawValue>(&line) {
        Ok(_) => Ok(Some((n, line))),
        Err(e) => Err(CliError::BadInput(format!(
            "stdin line {n} is not one JSON value ({e}); it and the lines after it were not \
             appended{}",
            if pending > 0 || n > 1 {
                ", the lines before it were"
            } else {
                ""
            }
        ))),
    }
}

/// `ministore tail [-f] [--from SEQ] JOURNAL`.
pub fn tail(args: &TailArgs) -> Result<u8, CliError> {
    run(|| async {
        let client = connect(&args.server).await?;
        let mut records = client.stream::<Box<RawValue>>(&args.journal, args.from, args.follow);
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
        loop {
            // Flush only when no record is ready: a burst is written in large writes, and a
            // follower shows each record as soon as nothing else is waiting behind it.
            let next = match tokio::time::timeout(Duration::ZERO, records.next()).await {
                Ok(next) => next,
                Err(_) => {
                    out.flush().map_err(CliError::Output)?;
                    records.next().await
                }
            };
            match next {
                None => break,
                Some(Ok((_, record))) => {
                    writeln!(out, "{}", record.get()).map_err(CliError::Output)?;
                }
                Some(Err(e)) => {
                    out.flush().map_err(CliError::Output)?;
                    return Err(CliError::from_client(&args.server.addr, e));
                }
            }
        }
        out.flush().map_err(CliError::Output)?;
        Ok(0)
    })
}

/// `ministore ls [--json]`.
pub fn ls(args: &LsArgs) -> Result<u8, CliError> {
    run(|| async {
        let client = connect(&args.server).await?;
        let journals = client
            .list_all_journals()
            .await
            .map_err(|e| CliError::from_client(&args.server.addr, e))?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        match args.json {
            true => {
                for journal in &journals {
                    writeln!(out, "{}", summary_json(journal)).map_err(CliError::Output)?;
                }
            }
            false => print_table(&mut out, &journals).map_err(CliError::Output)?,
        }
        out.flush().map_err(CliError::Output)?;
        Ok(0)
    })
}

/// Records retained between `first_seq` and `last_seq` (none when `first_seq` is past it).
fn records(first_seq: u64, last_seq: u64) -> u64 {
    (last_seq + 1).saturating_sub(first_seq)
}

fn summary_json(journal: &JournalSummary) -> serde_json::Value {
    let mut value = serde_json::json!({
        "name": journal.name,
        "first_seq": journal.first_seq,
        "last_seq": journal.last_seq,
        "records": records(journal.first_seq, journal.last_seq),
        "segments": journal.segments,
        "size_bytes": journal.size_bytes,
    });
    if !journal.error.is_empty() {
        value["error"] = journal.error.clone().into();
    }
    value
}

/// The journals as a table, columns sized to their contents; a journal whose files could
/// not be read shows its error instead of its numbers.
fn print_table(out: &mut impl Write, journals: &[JournalSummary]) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = journals
        .iter()
        .map(|j| match j.error.is_empty() {
            true => [
                j.name.clone(),
                j.first_seq.to_string(),
                j.last_seq.to_string(),
                records(j.first_seq, j.last_seq).to_string(),
                j.segments.to_string(),
                crate::report::human_bytes(j.size_bytes),
            ],
            false => [
                j.name.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                crate::report::human_bytes(j.size_bytes),
            ],
        })
        .collect();
    let header = ["NAME", "FIRST", "LAST", "RECORDS", "SEGMENTS", "SIZE"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for (row, journal) in
        std::iter::once((&header, None)).chain(rows.iter().zip(journals.iter().map(Some)))
    {
        // The name left-aligned, the numbers right-aligned, as `ls -l` does.
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (cell, width) in row.iter().zip(widths).skip(1) {
            line.push_str(&format!("  {cell:>width$}"));
        }
        if let Some(journal) = journal.filter(|j| !j.error.is_empty()) {
            line.push_str(&format!("  error: {}", journal.error));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `ministore info JOURNAL [--json]`.
pub fn info(args: &InfoArgs) -> Result<u8, CliError> {
    run(|| async {
        let client = connect(&args.server).await?;
        // The raw stub: the typed `info` leaves out `damage`, which a person wants to see.
        let info = client
            .raw()
            .info(InfoRequest {
                journal: args.journal.clone(),
            })
            .await
            .map_err(|status| CliError::from_client(&args.server.addr, status.into()))?
            .into_inner();
        let count = records(info.first_seq, info.last_seq);
        let text = match args.json {
            true => format!(
                "{}\n",
                serde_json::json!({
                    "name": args.journal,
                    "first_seq": info.first_seq,
                    "last_seq": info.last_seq,
                    "records": count,
                    "segments": info.segments,
                    "damage": info.damage,
                })
            ),
            false => {
                let damage = match info.damage.as_str() {
                    "" => "none",
                    damage => damage,
                };
                format!(
                    "journal:   {}\nfirst seq: {}\nlast seq:  {}\nrecords:   {count}\nsegments:  {}\ndamage:    {damage}\n",
                    args.journal, info.first_seq, info.last_seq, info.segments
                )
            }
        };
        std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(CliError::Output)?;
        Ok(0)
    })
}
