//! `ministore`: the command-line tool. Parses the arguments, runs one command, turns its
//! outcome into an exit status; the commands live in their own files (`online.rs` for
//! those that talk to a server).

mod args;
mod dump;
mod error;
mod online;
mod repair;
mod report;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify(args) => report::verify(&args),
        Command::Inspect(args) => report::inspect(&args),
        Command::Dump(args) => dump::dump(&args),
        Command::Repair(args) => repair::repair(&args),
        Command::Append(args) => online::append(&args),
        Command::Tail(args) => online::tail(&args),
        Command::Ls(args) => online::ls(&args),
        Command::Info(args) => online::info(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ministore: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
