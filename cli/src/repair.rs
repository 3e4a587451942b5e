//! `ministore repair PATH`: repairs what can be repaired without losing a committed record,
//! after copying each file it changes aside; never deletes evidence.
//!
//! What it repairs is what `open` repairs (an unfinished write at the end of the active
//! file, a header cut short, a rotation that did not finish, metadata entries of an
//! interrupted commit), plus indexes that point at the wrong records (moved aside: readers
//! then scan the segment). What it cannot repair without losing records (a record whose
//! bytes changed, records missing between segments, a damaged sealed segment) it reports,
//! as `verify` does, and leaves as it is.

use std::path::{Path, PathBuf};

use ministore::verify::{self, ProblemKind, Report, Severity, Target};
use ministore::{MiniStore, MiniStoreError};

use crate::args::CheckArgs;
use crate::error::{CliError, EXIT_DAMAGED};

/// The server's lock file in a data directory: held while a server uses it.
const DATA_DIR_LOCK: &str = ".ministore.lock";

/// `ministore repair PATH`: every journal under PATH (a data directory or one journal).
pub fn repair(args: &CheckArgs) -> Result<u8, CliError> {
    let (data_dir, journals) = match verify::resolve(&args.path)? {
        Target::Journal(base) => {
            let dir = base.parent().and_then(Path::parent).map(Path::to_path_buf);
            (dir, vec![base])
        }
        Target::DataDir(dir) => {
            let journals = verify::inspect_data_dir(&dir)?
                .journals
                .into_iter()
                .map(|r| r.journal)
                .collect();
            (Some(dir), journals)
        }
    };
    // A running server owns its journals: repairing under it would race its writers.
    let _held = data_dir.as_deref().map(hold_data_dir).transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Client(format!("cannot start a runtime: {e}")))?;
    let mut worst = None;
    for base in journals {
        let after = runtime.block_on(repair_journal(&base))?;
        worst = worst.max(after.worst());
    }
    Ok(if worst >= Some(Severity::Damage) {
        EXIT_DAMAGED
    } else {
        0
    })
}

/// Holds the data directory's server lock for the repair, so no server starts meanwhile;
/// refuses if a server holds it.
fn hold_data_dir(dir: &Path) -> Result<Option<std::fs::File>, CliError> {
    let path = dir.join(DATA_DIR_LOCK);
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    else {
        return Ok(None); // no server ever ran here
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::Usage(format!(
            "a ministore-server is using {} (it holds {}): stop it, then repair",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io("locking", &path, e)),
    }
}

/// Repairs one journal and prints what it did and what is left; the report after.
async fn repair_journal(base: &Path) -> Result<Report, CliError> {
    let before = verify::verify_journal(base)?;
    let repairable = |kind| {
        matches!(
            kind,
            ProblemKind::UnfinishedWrite
                | ProblemKind::TornHeader
                | ProblemKind::NoActiveFile
                | ProblemKind::WrongIndex
        )
    };
    if !before.problems.iter().any(|p| repairable(p.kind)) {
        println!("{}: nothing to repair", base.display());
        return report_after(base);
    }
    // Evidence first: a copy of every file a repair may change.
    for file in files_to_keep(base, &before)? {
        let aside = aside_name(&file);
        std::fs::copy(&file, &aside).map_err(|e| io("copying", &file, e))?;
        println!("{}: copied to {}", file.display(), aside.display());
    }
    // An index pointing at the wrong records goes aside: readers then scan its segment.
    for problem in before
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::WrongIndex)
    {
        let aside = aside_name(&problem.file);
        std::fs::rename(&problem.file, &aside).map_err(|e| io("moving aside", &problem.file, e))?;
        println!(
            "{}: moved to {} (readers scan the segment)",
            problem.file.display(),
            aside.display()
        );
    }
    // What a crash leaves, open repairs (keeping more than a partial line as .broken-).
    let store = MiniStore::open(base).await?;
    println!(
        "{}: repaired; records up to seq {}",
        base.display(),
        store.last_seq()
    );
    drop(store);
    report_after(base)
}

/// The files of the journal that open may change: the active file and its metadata.
fn files_to_keep(base: &Path, report: &Report) -> Result<Vec<PathBuf>, CliError> {
    let mut files: Vec<PathBuf> = Vec::new();
    if base.exists() {
        files.push(base.to_path_buf());
    }
    let dir = base.parent().unwrap_or(Path::new("."));
    let name = base
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let metas = std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))?;
    let active_first = report.segments.last().map_or(1, |s| s.first_seq);
    for entry in metas.flatten() {
        let file = entry.file_name();
        let Some(seq) = file
            .to_str()
            .and_then(|f| {
                f.strip_prefix(name)?
                    .strip_prefix(".from-")?
                    .strip_suffix(".meta")
            })
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if seq >= active_first {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// The store's I/O error for `op` on `path`.
fn io(op: &'static str, path: &Path, source: std::io::Error) -> CliError {
    MiniStoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
    .into()
}

/// `<file>.before-repair-<unix seconds>`.
fn aside_name(file: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".before-repair-{secs}"));
    PathBuf::from(name)
}

/// Verifies again and prints what is left.
fn report_after(base: &Path) -> Result<Report, CliError> {
    let after = verify::verify_journal(base)?;
    for problem in after
        .problems
        .iter()
        .filter(|p| p.severity >= Severity::Warning)
    {
        println!("{problem}");
    }
    let verdict = match after.worst() {
        Some(Severity::Damage) => {
            "DAMAGED: what is left cannot be repaired without losing records; restore them from a backup"
        }
        Some(Severity::Unreadable) => "some files could not be read",
        _ => "clean",
    };
    println!("{}: {verdict}", base.display());
    Ok(after)
}
