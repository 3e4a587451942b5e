//! The console sessions of the docs, run as a person types them.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::tools;

/// The body of the first fenced block of `markdown` opened with exactly `fence`, at or
/// after byte `from`; and where that block ends.
pub fn fenced_block(markdown: &str, fence: &str, from: usize) -> (String, usize) {
    let open = format!("\n{fence}\n");
    let start = markdown[from..]
        .find(&open)
        .map(|i| from + i + open.len())
        .unwrap_or_else(|| panic!("no {fence} block"));
    let len = markdown[start..].find("```").expect("the block's end");
    (markdown[start..start + len].to_owned(), start + len)
}

/// One `$ command` of a console block in the docs, and the output shown after it.
pub struct DocStep {
    /// The command, its `\`-continued lines joined.
    pub command: String,
    /// The lines shown after it, each ending in a newline.
    pub output: String,
}

/// The `$` commands of the ```console blocks of `markdown`, each with the lines shown
/// after it (up to the next command or the block's end). A command line ending in `\`
/// goes on on the next line, as in a shell.
pub fn console_steps(markdown: &str) -> Vec<DocStep> {
    let mut steps: Vec<DocStep> = Vec::new();
    let mut in_console = false;
    let mut continued = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_console = line == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(DocStep {
                command: command.to_owned(),
                output: String::new(),
            });
            continued = command.ends_with('\\');
            continue;
        }
        let step = steps
            .last_mut()
            .expect("a console block starts with a `$` command");
        if continued {
            step.command.pop();
            step.command.truncate(step.command.trim_end().len());
            step.command.push(' ');
            step.command.push_str(line.trim_start());
            continued = line.ends_with('\\');
        } else {
            step.output.push_str(line);
            step.output.push('\n');
        }
    }
    steps
}

/// Runs `command` with `sh` in `dir`, with the test tools' `grpcurl` first on `PATH`, and
/// returns what a terminal would show: stdout and stderr interleaved.
pub fn run_as_typed(command: &str, dir: &Path) -> String {
    let venv_bin = tools::grpcurl()
        .parent()
        .map(Path::to_path_buf)
        .expect("bin/");
    let path = std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{command} 2>&1"))
        .current_dir(dir)
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .expect("running sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
