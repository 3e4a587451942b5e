//! `verify` and `inspect`: run `ministore::verify` on a path, print its report as text or
//! JSON, and turn its worst finding into the exit status.

use std::io::Write;
use std::path::Path;

use ministore::verify::{self, DataDirReport, Problem, Report, Severity, Target};
use serde::Serialize;

use crate::args::CheckArgs;
use crate::error::{CliError, EXIT_CANNOT_READ, EXIT_DAMAGED};

/// `ministore verify PATH`: every byte checked.
pub fn verify(args: &CheckArgs) -> Result<u8, CliError> {
    let checked = check(&args.path, verify::verify_journal, verify::verify_data_dir)?;
    print(args, &checked, print_verify)
}

/// `ministore inspect PATH`: segments and ranges, structure checked.
pub fn inspect(args: &CheckArgs) -> Result<u8, CliError> {
    let checked = check(
        &args.path,
        verify::inspect_journal,
        verify::inspect_data_dir,
    )?;
    print(args, &checked, print_inspect)
}

/// A data directory's report, or one journal's as a data directory of one.
fn check(
    path: &Path,
    journal: fn(&Path) -> ministore::Result<Report>,
    data_dir: fn(&Path) -> ministore::Result<DataDirReport>,
) -> Result<DataDirReport, CliError> {
    Ok(match verify::resolve(path)? {
        Target::Journal(base) => DataDirReport {
            data_dir: path.to_path_buf(),
            journals: vec![journal(&base)?],
            problems: Vec::new(),
        },
        Target::DataDir(dir) => data_dir(&dir)?,
    })
}

/// The exit status for the worst finding: damage 1, unreadable 2, anything else 0.
fn exit_code(worst: Option<Severity>) -> u8 {
    match worst {
        Some(Severity::Damage) => EXIT_DAMAGED,
        Some(Severity::Unreadable) => EXIT_CANNOT_READ,
        _ => 0,
    }
}

/// One word for a finding, the same in text and JSON.
fn verdict(worst: Option<Severity>) -> &'static str {
    match worst {
        None | Some(Severity::Info) => "clean",
        Some(Severity::Warning) => "clean, with warnings",
        Some(Severity::Unreadable) => "INCOMPLETE: a file could not be read",
        Some(Severity::Damage) => "DAMAGED",
    }
}

/// The JSON document: the reports as `ministore::verify` makes them, with the verdict.
#[derive(Serialize)]
struct Output<'a> {
    path: String,
    verdict: &'static str,
    exit_code: u8,
    journals: &'a [Report],
    problems: &'a [Problem],
}

fn print(
    args: &CheckArgs,
    checked: &DataDirReport,
    text: fn(&mut dyn Write, &DataDirReport) -> std::io::Result<()>,
) -> Result<u8, CliError> {
    let worst = checked.worst();
    let code = exit_code(worst);
    let mut out = std::io::stdout().lock();
    if args.json {
        let output = Output {
            path: args.path.to_string_lossy().into_owned(),
            verdict: verdict(worst),
            exit_code: code,
            journals: &checked.journals,
            problems: &checked.problems,
        };
        serde_json::to_writer_pretty(&mut out, &output).map_err(|e| CliError::Output(e.into()))?;
        writeln!(out).map_err(CliError::Output)?;
    } else {
        text(&mut out, checked).map_err(CliError::Output)?;
        if checked.journals.len() != 1 {
            let journals = checked.journals.len();
            let damaged = checked.journals.iter().filter(|j| j.is_damaged()).count();
            writeln!(
                out,
                "{}: {journals} journal{}, {damaged} damaged: {}",
                checked.data_dir.display(),
                plural(journals),
                verdict(worst)
            )
            .map_err(CliError::Output)?;
        }
    }
    out.flush().map_err(CliError::Output)?;
    Ok(code)
}

/// Each problem on its own line, then one line per journal.
fn print_verify(out: &mut dyn Write, checked: &DataDirReport) -> std::io::Result<()> {
    for report in &checked.journals {
        for problem in &report.problems {
            writeln!(out, "{problem}")?;
        }
        writeln!(
            out,
            "{}: {}: {}",
            report.journal.display(),
            summary(report),
            verdict(report.worst())
        )?;
    }
    for problem in &checked.problems {
        writeln!(out, "{problem}")?;
    }
    Ok(())
}

/// A block per journal: its totals, a table of its files, its problems.
fn print_inspect(out: &mut dyn Write, checked: &DataDirReport) -> std::io::Result<()> {
    for report in &checked.journals {
        writeln!(out, "journal {}", report.journal.display())?;
        writeln!(out, "  {}", summary(report))?;
        if !report.segments.is_empty() {
            writeln!(
                out,
                "  {:<24} {:>12} {:>12} {:>10} {:>12}  index",
                "file", "first seq", "last seq", "records", "bytes"
            )?;
        }
        for seg in &report.segments {
            let name = seg.path.file_name().unwrap_or(seg.path.as_os_str());
            let last = seg.last_seq().map_or("-".into(), |s| s.to_string());
            let index = match (seg.number, seg.index) {
                (None, _) => "- (active)",
                (_, verify::IndexState::Used) => "yes",
                (_, verify::IndexState::Ignored) => "ignored",
                (_, _) => "no",
            };
            writeln!(
                out,
                "  {:<24} {:>12} {:>12} {:>10} {:>12}  {index}",
                name.to_string_lossy(),
                seg.first_seq,
                last,
                seg.records,
                seg.bytes
            )?;
        }
        let shown: Vec<&Problem> = report
            .problems
            .iter()
            .filter(|p| p.severity > Severity::Info)
            .collect();
        match (report.worst(), shown.is_empty()) {
            (Some(Severity::Damage), _) => writeln!(out, "  DAMAGED:")?,
            (_, false) => writeln!(out, "  no damage found; warnings:")?,
            (_, true) => writeln!(
                out,
                "  no damage found (structure checked; `ministore verify` reads every line)"
            )?,
        }
        for problem in shown {
            writeln!(out, "    {problem}")?;
        }
    }
    for problem in &checked.problems {
        writeln!(out, "{problem}")?;
    }
    Ok(())
}

/// "3 files, records 1..=9000 (9000), 1.2 MiB"
fn summary(report: &Report) -> String {
    let files = report.segments.len();
    let range = match (report.first_seq(), report.last_seq()) {
        (Some(first), Some(last)) => format!("records {first}..={last} ({})", report.records()),
        _ => "no records".into(),
    };
    format!(
        "{files} file{}, {range}, {}",
        plural(files),
        human_bytes(report.bytes())
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `bytes` for a person: `299 B`, `1.5 KiB`, `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}
