//! [`CliError`]: every way a command fails, and the exit status it means.

use std::path::PathBuf;

use ministore::MiniStoreError;

/// Exit status: the files are damaged.
pub const EXIT_DAMAGED: u8 = 1;
/// Exit status: bad usage, or something could not be read.
pub const EXIT_CANNOT_READ: u8 = 2;

/// Every way a command fails.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store refused or failed: a damaged file (exit 1) or an I/O error (exit 2).
    #[error(transparent)]
    Store(#[from] MiniStoreError),

    /// A stored record that is not one JSON value: damage.
    #[error(
        "{file}: seq {seq} (line {line}) is {reason}: the journal is damaged here; `ministore \
         verify` reports every problem"
    )]
    InvalidRecord {
        /// The segment holding it.
        file: PathBuf,
        /// Its sequence number.
        seq: u64,
        /// Its line in `file`.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },

    /// PATH does not name one journal where one is needed.
    #[error("{path} is not a journal: {reason}")]
    NotAJournal {
        /// The path given.
        path: PathBuf,
        /// What it is instead, and what to give.
        reason: String,
    },

    /// Arguments that cannot both hold.
    #[error("{0}")]
    Usage(String),

    /// Writing the output failed.
    #[error("writing to stdout: {0}")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Store(e) if e.io_kind().is_some() => EXIT_CANNOT_READ,
            CliError::Store(_) | CliError::InvalidRecord { .. } => EXIT_DAMAGED,
            CliError::NotAJournal { .. } | CliError::Usage(_) | CliError::Output(_) => {
                EXIT_CANNOT_READ
            }
        }
    }

    /// A reader of the output went away (`ministore dump | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
