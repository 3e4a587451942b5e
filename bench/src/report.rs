//! The one table: every figure measured in this run, the ratios between them, and the
//! targets of issue #6 beside the figures they judge.

use std::time::Duration;

use crate::grpc_bench::{AppendLoads, BATCH, BATCH_CALLERS, Load, ServerLoads};
use crate::open_bench::OpenResults;
use crate::scale_bench::{FollowersResults, JournalsResults, OffloadResults};
use crate::store_bench::Measurement;
use crate::stream_bench::StreamResults;
use crate::table::{self, Table};

/// Everything one run measured; a section left out with `--only` is `None`.
#[derive(Debug, Default)]
pub struct Results {
    /// Raw write+fdatasync, `MiniStore::append`, `append_batch`.
    pub store: Option<Vec<Measurement>>,
    /// The no-op server.
    pub noop: Option<AppendLoads>,
    /// The real server.
    pub server: Option<ServerLoads>,
    /// Stream, RSS, first record.
    pub stream: Option<StreamResults>,
    /// Open time.
    pub open: Option<OpenResults>,
    /// Many journals (issue #17, item 3).
    pub journals: Option<JournalsResults>,
    /// Many idle followers.
    pub followers: Option<FollowersResults>,
    /// Append while large batches are checked.
    pub offload: Option<OffloadResults>,
}

/// Marks the rows of a client that sends every append as its own RPC.
const PER_CALL: &str = ", one RPC each";

/// Stream target: records per second.
const STREAM_RATE: f64 = 300_000.0;
/// Server RSS target while streaming.
const RSS_MAX: u64 = 100 << 20;
/// First record from the middle.
const FIRST_RECORD_MAX: Duration = Duration::from_millis(10);
/// "Well under 1 s" for opening ~1 GiB, taken as half of it.
const OPEN_MAX: Duration = Duration::from_millis(500);

const HEADER: [&str; 9] = [
    "measurement",
    "calls/s",
    "records/s",
    "p50",
    "p99",
    "CPU/call",
    "measured",
    "target (issue #6)",
    "result",
];

/// One row under construction.
#[derive(Default)]
struct Row {
    name: String,
    calls: Option<f64>,
    records: Option<f64>,
    p50: Option<Duration>,
    p99: Option<Duration>,
    cpu: Option<Duration>,
    measured: String,
    target: String,
    result: String,
}

impl Row {
    fn named(name: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            ..Row::default()
        }
    }

    fn load(name: impl Into<String>, load: &Load) -> Row {
        Row {
            calls: Some(load.calls_per_sec()),
            records: Some(load.records_per_sec()),
            p50: Some(load.p50),
            p99: Some(load.p99),
            cpu: Some(load.cpu_per_call),
            ..Row::named(name)
        }
    }

    fn measured(mut self, measured: impl Into<String>) -> Row {
        self.measured = measured.into();
        self
    }

    /// Sets the target and the verdict: PASS, MISS, or `-` when the figure is missing.
    fn target(mut self, target: impl Into<String>, pass: Option<bool>) -> Row {
        self.target = target.into();
        self.result = match pass {
            Some(true) => "PASS".into(),
            Some(false) => "MISS".into(),
            None => "-".into(),
        };
        self
    }

    fn cells(&self) -> [String; 9] {
        let opt_rate = |r: Option<f64>| r.map(table::rate).unwrap_or_default();
        let opt_time = |d: Option<Duration>| d.map(table::duration).unwrap_or_default();
        [
            self.name.clone(),
            opt_rate(self.calls),
            opt_rate(self.records),
            opt_time(self.p50),
            opt_time(self.p99),
            opt_time(self.cpu),
            self.measured.clone(),
            self.target.clone(),
            self.result.clone(),
        ]
    }
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}x")
    } else {
        format!("{x:.2}x")
    }
}

fn callers(n: usize) -> String {
    if n == 1 {
        "1 caller".into()
    } else {
        format!("{n} callers")
    }
}

/// The load of `loads` at [`BATCH_CALLERS`] callers.
fn at_callers(loads: &[Load]) -> Option<&Load> {
    loads.iter().find(|l| l.callers == BATCH_CALLERS)
}

/// `row` (the server at many callers) judged against the no-op of the same client mode,
/// and a row judging its calls/s against the raw fdatasync rate.
fn many_callers_rows(
    row: Row,
    load: &Load,
    noop: Option<&Load>,
    raw: Option<&Measurement>,
) -> [Row; 2] {
    let vs_noop = noop.map(|n| load.calls_per_sec() / n.calls_per_sec());
    let vs_raw = raw.map(|raw| load.calls_per_sec() / raw.records_per_sec());
    // What the transport alone reaches, beside it: a no-op below 10x raw puts the target
    // out of reach of any server in this client mode on this machine.
    let noop_vs_raw = noop
        .zip(raw)
        .map(|(n, raw)| n.calls_per_sec() / raw.records_per_sec());
    [
        row.measured(vs_noop.map_or("n/a (no no-op run)".into(), |r| {
            format!("{} no-op", ratio(r))
        }))
        .target(">= 0.80x no-op", vs_noop.map(|r| r >= 0.8)),
        Row::named("  calls/s vs raw fdatasync rate")
            .measured(match (vs_raw, noop_vs_raw) {
                (Some(r), Some(n)) => format!("{} raw (no-op {})", ratio(r), ratio(n)),
                (Some(r), None) => format!("{} raw", ratio(r)),
                _ => "n/a".into(),
            })
            .target(">= 10x raw", vs_raw.map(|r| r >= 10.0)),
    ]
}

/// The table of `results`; `quick` marks sizes that are smaller than the targets assume.
pub fn table(results: &Results, quick: bool) -> Table {
    let mut rows = Vec::new();
    let raw = results.store.as_ref().map(|s| &s[0]);

    if let Some(store) = &results.store {
        let raw_rate = store[0].records_per_sec();
        for m in store {
            rows.push(
                Row {
                    calls: Some(m.calls_per_sec()),
                    records: Some(m.records_per_sec()),
                    p50: Some(m.p50),
                    p99: Some(m.p99),
                    ..Row::named(m.name.clone())
                }
                .measured(format!("{} raw", ratio(m.records_per_sec() / raw_rate))),
            );
        }
    }

    let noop_at = |n: usize| {
        results
            .noop
            .as_ref()
            .and_then(|loads| loads.appends.iter().find(|l| l.callers == n))
    };
    if let Some(noop) = &results.noop {
        let rows_of = noop.appends.iter().map(|load| (load, ""));
        for (load, per_call) in rows_of.chain([(&noop.per_call, PER_CALL)]) {
            let name = format!("no-op Append, {}{per_call}", callers(load.callers));
            let mut row = Row::load(name, load);
            if let Some(raw) = raw {
                row = row.measured(format!(
                    "{} raw",
                    ratio(load.calls_per_sec() / raw.records_per_sec())
                ));
            }
            rows.push(row);
        }
    }

    if let Some(server) = &results.server {
        for load in &server.appends.appends {
            let name = format!("server Append, {}", callers(load.callers));
            let noop = noop_at(load.callers);
            let vs_noop = noop.map(|n| load.calls_per_sec() / n.calls_per_sec());
            let row = Row::load(name, load).measured(match vs_noop {
                Some(r) => format!("{} no-op", ratio(r)),
                None => "n/a (no no-op run)".into(),
            });
            if load.callers == 1 {
                // p50 of one durable call against the disk's p50 plus the transport's.
                let floor = raw.zip(noop).map(|(raw, noop)| raw.p50 + noop.p50);
                let (measured, pass) = match floor {
                    Some(floor) => {
                        let r = load.p50.as_secs_f64() / floor.as_secs_f64();
                        (
                            format!("{} (raw+no-op)", ratio(r)),
                            Some(load.p50.as_secs_f64() <= floor.as_secs_f64() * 1.2),
                        )
                    }
                    None => ("n/a".into(), None),
                };
                let floor_text = floor.map_or(String::new(), |f| {
                    format!(" = {}", table::duration(f.mul_f64(1.2)))
                });
                rows.push(row);
                rows.push(
                    Row::named("  p50 vs raw p50 + no-op p50")
                        .measured(measured)
                        .target(format!("<= 1.20x{floor_text}"), pass),
                );
                continue;
            }
            if load.callers == BATCH_CALLERS {
                rows.extend(many_callers_rows(row, load, noop, raw));
                let per_call = &server.appends.per_call;
                let noop_per_call = results.noop.as_ref().map(|n| &n.per_call);
                let name = format!("server Append, {}{PER_CALL}", callers(per_call.callers));
                rows.extend(many_callers_rows(
                    Row::load(name, per_call),
                    per_call,
                    noop_per_call,
                    raw,
                ));
                continue;
            }
            rows.push(row);
        }
        let store_append = results
            .store
            .as_ref()
            .and_then(|s| s.iter().find(|m| m.name == crate::store_bench::APPEND));
        for load in &server.writer {
            let measured = match (load.callers, store_append, raw) {
                (1, Some(append), _) => format!(
                    "p50 {:+.0} µs vs MiniStore::append",
                    (load.p50.as_secs_f64() - append.p50.as_secs_f64()) * 1e6
                ),
                (_, _, Some(raw)) => {
                    format!(
                        "{} raw",
                        ratio(load.calls_per_sec() / raw.records_per_sec())
                    )
                }
                _ => String::new(),
            };
            rows.push(
                Row::load(
                    format!("  writer only, no gRPC, {}", callers(load.callers)),
                    load,
                )
                .measured(measured),
            );
        }
        // "Single-record Append" read both ways: Append RPCs of one record each, and
        // Client::append as it comes (which may share AppendBatch RPCs between callers).
        for (append, what) in [
            (Some(&server.appends.per_call), "one-RPC Append"),
            (at_callers(&server.appends.appends), "Client::append"),
        ] {
            let vs = append.map(|a| server.batch.records_per_sec() / a.records_per_sec());
            rows.push(
                Row::load(
                    format!("server AppendBatch({BATCH}), {}", callers(BATCH_CALLERS)),
                    &server.batch,
                )
                .measured(vs.map_or("n/a".into(), |r| format!("{} {what} rec/s", ratio(r))))
                .target(format!(">= 5x {what} records/s"), vs.map(|r| r >= 5.0)),
            );
        }
    }

    if let Some(stream) = &results.stream {
        let size = if quick { " (quick)" } else { "" };
        let rate = stream.client.records_per_sec();
        rows.push(
            Row {
                records: Some(rate),
                ..Row::named(format!(
                    "Stream {} rec ({}), Client::stream{size}",
                    table::rate(stream.records as f64),
                    table::mib(stream.bytes)
                ))
            }
            .measured(format!("{}/s", table::rate(rate)))
            .target(">= 300,000/s", Some(rate >= STREAM_RATE)),
        );
        rows.push(
            Row {
                records: Some(stream.raw.records_per_sec()),
                ..Row::named("  same, raw stub")
            }
            .measured(format!("{}/s", table::rate(stream.raw.records_per_sec()))),
        );
        rows.push(
            Row::named("  server RSS while streaming")
                .measured(format!(
                    "{} (+{})",
                    table::mib(stream.rss_peak),
                    table::mib(stream.rss_peak.saturating_sub(stream.rss_before))
                ))
                .target("< 100 MiB", Some(stream.rss_peak < RSS_MAX)),
        );
        rows.push(
            Row {
                p50: Some(stream.first_warm),
                ..Row::named(format!(
                    "  first record from seq {} (warm){size}",
                    table::rate(stream.from_seq as f64)
                ))
            }
            .measured(table::duration(stream.first_warm))
            .target("<= 10 ms", Some(stream.first_warm <= FIRST_RECORD_MAX)),
        );
        rows.push(
            Row {
                p50: Some(stream.first_store),
                ..Row::named("  same, store reader alone (no gRPC)")
            }
            .measured(table::duration(stream.first_store)),
        );
        if let Some(cold) = stream.first_cold {
            rows.push(
                Row::named("  first record, page cache evicted")
                    .measured(table::duration(cold))
                    .target("<= 10 ms", Some(cold <= FIRST_RECORD_MAX)),
            );
        }
    }

    if let Some(open) = &results.open {
        let size = if quick { " (quick)" } else { "" };
        rows.push(
            Row {
                p50: Some(open.warm),
                ..Row::named(format!(
                    "open {}, {} segments (warm){size}",
                    table::mib(open.bytes),
                    open.segments,
                ))
            }
            .measured(table::duration(open.warm))
            .target("< 1 s, well under (<= 500 ms)", Some(open.warm <= OPEN_MAX)),
        );
        if let Some(cold) = open.cold {
            rows.push(
                Row {
                    p50: Some(cold),
                    ..Row::named("  open, page cache evicted")
                }
                .measured(table::duration(cold))
                .target("< 1 s, well under (<= 500 ms)", Some(cold <= OPEN_MAX)),
            );
        }
        let mb_per_sec = open.bytes as f64 / 1e6 / open.verify.as_secs_f64();
        rows.push(
            Row {
                p50: Some(open.verify),
                ..Row::named("  ministore verify of it (every line and CRC32C, warm)")
            }
            .measured(format!("{mb_per_sec:.0} MB/s")),
        );
    }

    rows.extend(scale_rows(results));

    let mut table = Table::new(HEADER);
    for row in rows {
        table.row(row.cells());
    }
    table
}

/// RSS per follower target (issue #17).
const FOLLOWER_RSS_MAX: f64 = 20.0 * 1024.0;

/// Bytes as KiB with one decimal.
fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// The rows of issue #17's item 3: many journals, many followers, JSON off the runtime.
fn scale_rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(j) = &results.journals {
        let n = j.journals as f64;
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let writers = ministore_server::journals::DEFAULT_WRITER_THREADS;
        let bound = 2 * writers + cores + ministore_server::MAX_BLOCKING_THREADS + 8;
        rows.push(
            Row::named(format!(
                "server threads, 1 journal -> {} journals",
                table::rate(n)
            ))
            .measured(format!("{} -> {}", j.before.threads, j.after.threads))
            .target(
                format!("bounded (<= {bound})"),
                Some(j.after.threads <= bound),
            ),
        );
        let rss = j.after.rss.saturating_sub(j.before.rss) as f64 / n;
        rows.push(
            Row::named("  server RSS per journal")
                .measured(format!(
                    "{} ({} -> {})",
                    kib(rss),
                    table::mib(j.before.rss),
                    table::mib(j.after.rss)
                ))
                .target("reported", None),
        );
        let fds = j.after.fds.saturating_sub(j.before.fds);
        rows.push(
            Row::named("  open descriptors per journal")
                .measured(format!(
                    "{:.2} ({} -> {}; {} open at most)",
                    fds as f64 / n,
                    j.before.fds,
                    j.after.fds,
                    j.max_open
                ))
                .target(
                    // Three files per open journal; for a moment, one journal more per
                    // writer thread (a reopen closes its victim after the reply).
                    format!(
                        "<= 3 per open journal ({} = 3 x ({} + {writers}))",
                        3 * (j.max_open + writers),
                        j.max_open
                    ),
                    Some(fds <= 3 * (j.max_open + writers)),
                ),
        );
        rows.push(Row::load("server Append, 1 caller, 1 journal", &j.single));
        let vs = j.spread.p50.as_secs_f64() / j.single.p50.as_secs_f64();
        rows.push(
            Row::load(
                format!("  same, spread over {} journals", table::rate(n)),
                &j.spread,
            )
            .measured(format!("p50 {} 1 journal", ratio(vs)))
            .target("p50 <= 1.10x 1 journal", Some(vs <= 1.10)),
        );
        let vs_open = j.spread_open.p50.as_secs_f64() / j.single.p50.as_secs_f64();
        rows.push(
            Row::load(
                format!("  same, spread over {} journals (all open)", j.max_open / 2),
                &j.spread_open,
            )
            .measured(format!("p50 {} 1 journal", ratio(vs_open)))
            .target("p50 <= 1.10x 1 journal", Some(vs_open <= 1.10)),
        );
        // The machine's own share of the spread penalty, beside ours.
        rows.push(Row::load(
            "raw write+fdatasync, record + metadata, 1 file pair",
            &j.raw_single,
        ));
        let vs_raw = j.raw_spread.p50.as_secs_f64() / j.raw_single.p50.as_secs_f64();
        rows.push(
            Row::load(
                format!("  same, spread over {} file pairs", j.raw_pairs),
                &j.raw_spread,
            )
            .measured(format!("p50 {} 1 pair", ratio(vs_raw)))
            .target("the machine's own: reported", None),
        );
    }
    if let Some(f) = &results.followers {
        let per = f.after.rss.saturating_sub(f.before.rss) as f64 / f.followers as f64;
        rows.push(
            Row::named(format!(
                "{} idle followers: server RSS per follower",
                table::rate(f.followers as f64)
            ))
            .measured(format!(
                "{} ({} -> {})",
                kib(per),
                table::mib(f.before.rss),
                table::mib(f.after.rss)
            ))
            .target("< 20 KiB", Some(per < FOLLOWER_RSS_MAX)),
        );
        rows.push(
            Row::named("  open descriptors per idle follower").measured(format!(
                "{:.2} ({} -> {})",
                f.after.fds.saturating_sub(f.before.fds) as f64 / f.followers as f64,
                f.before.fds,
                f.after.fds
            )),
        );
        rows.push(
            Row::named(format!(
                "  AppendBatch({}) reaching every follower",
                f.burst
            ))
            .measured(table::duration(f.fan_out))
            .target("reported", None),
        );
    }
    if let Some(o) = &results.offload {
        rows.push(Row::load("server Append, 1 caller, alone", &o.alone));
        let vs = o.loaded.p99.as_secs_f64() / o.alone.p99.as_secs_f64();
        rows.push(
            Row::load(
                format!(
                    "  same, while {} MiB AppendBatches are checked",
                    o.batch_bytes >> 20
                ),
                &o.loaded,
            )
            .measured(format!("p99 {} alone", ratio(vs)))
            .target("p99 <= 2x alone", Some(vs <= 2.0)),
        );
    }
    rows
}
