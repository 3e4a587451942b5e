//! [`CliError`]: every way a command fails, and the exit status it means.

use std::path::PathBuf;

use ministore::MiniStoreError;

/// Exit status: the files are damaged.
pub const EXIT_DAMAGED: u8 = 1;
/// Exit status: bad usage, or something could not be read.
pub const EXIT_CANNOT_READ: u8 = 2;
/// Exit status: the server cannot be reached or is unavailable; retrying later may work.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit status: the journal does not exist.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit status: the server refused or failed the request; the message says why.
pub const EXIT_REFUSED: u8 = 5;

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

    /// The server could not be reached, or answered with an error status.
    #[error("{addr}: {message} ({})", ministore::proto::code_name(*code))]
    Server {
        /// The server's address, as given.
        addr: String,
        /// The status code (UNAVAILABLE for a server that cannot be reached).
        code: ministore_client::Code,
        /// What the server or the transport said.
        message: String,
    },

    /// The client could not be set up: an unreadable CA file, a token that is not ASCII.
    #[error("{0}")]
    Client(String),

    /// Input that is not what the command takes (a line of stdin that is not JSON).
    #[error("{0}")]
    BadInput(String),

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
            CliError::NotAJournal { .. }
            | CliError::Usage(_)
            | CliError::Output(_)
            | CliError::Client(_)
            | CliError::BadInput(_) => EXIT_CANNOT_READ,
            CliError::Server { code, .. } => server_exit_code(*code),
        }
    }

    /// The error of a call to the server at `addr`, in one line that names the address.
    pub fn from_client(addr: &str, err: ministore_client::ClientError) -> CliError {
        use ministore_client::{ClientError, Code};
        match err {
            ClientError::Rpc(status) => {
                // The client's transport errors already name the address; say it once.
                let message = status
                    .message()
                    .strip_prefix(&format!("cannot reach ministore-server at {addr}: "))
                    .unwrap_or(status.message())
                    .to_owned();
                CliError::Server {
                    addr: addr.to_owned(),
                    code: status.code(),
                    message,
                }
            }
            ClientError::Connect { source, .. } => CliError::Server {
                addr: addr.to_owned(),
                code: Code::Unavailable,
                message: format!("cannot connect: {}", with_causes(&source)),
            },
            other => CliError::Client(format!("{addr}: {other}")),
        }
    }

    /// A reader of the output went away (`ministore dump | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// The exit status for a gRPC status code: see `ministore --help`.
fn server_exit_code(code: ministore_client::Code) -> u8 {
    use ministore_client::Code;
    match code {
        Code::DataLoss => EXIT_DAMAGED,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNAVAILABLE,
        _ => EXIT_REFUSED,
    }
}

/// `err` and every cause in its chain, in one line, each piece once.
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let piece = c.to_string();
        if !text.contains(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        cause = c.source();
    }
    text
}
