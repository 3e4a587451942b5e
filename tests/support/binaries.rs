//! The workspace's binaries, built for the tests that run them as a user would: cargo builds
//! binaries for tests only of their own package, and these tests live in `tests/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds `bin` of `package` (debug profile) and returns its path. Call it once per test
/// process, behind a `OnceLock`.
pub fn build(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Not the variables cargo set for this test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, ...):
    // build scripts that watch them (ring's does) would see them change, and every
    // build, this one and the next `cargo test`, would recompile ring, rustls, tonic and
    // the server (~20 s each).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
            )
        {
            build.env_remove(name.as_ref());
        }
    }
    let status = build
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::current_exe()
        .expect("current_exe")
        .parent() // deps/
        .and_then(Path::parent) // debug/
        .expect("target dir")
        .to_path_buf();
    target.join(bin)
}

/// The `ministore` command-line tool, built once per test process.
pub fn ministore_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build("ministore-cli", "ministore"))
}
