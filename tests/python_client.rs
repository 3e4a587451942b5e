//! A Python gRPC client against the real `ministore-server` binary, with stubs generated
//! from `proto/` the way a Python user would (`python -m grpc_tools.protoc`). The script,
//! `tests/python/client.py`, checks what it gets back itself; this test then checks that
//! the records it wrote are the ones the Rust stubs and the journal file hold.

use std::path::Path;
use std::process::Command;

use ministore::proto::ReplayRequest;
use ministore::proto::journal_client::JournalClient;
use ministore::proto::record::Body;
use ministore_tests::docs::fenced_block;
use ministore_tests::server::ServerProcess;
use ministore_tests::tools::{self, printed};
use serde_json::Value;

/// A server on a fresh data directory, and the Python stubs of `proto/` generated into a
/// temporary directory the way the docs tell users (`python -m grpc_tools.protoc`).
struct PythonSetup {
    stubs: tempfile::TempDir,
    server: ServerProcess,
    _data: tempfile::TempDir,
}

impl PythonSetup {
    fn new() -> PythonSetup {
        let stubs = tempfile::tempdir().expect("tempdir");
        let root = tools::workspace_root();
        let protoc = Command::new(tools::python())
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(root.join("proto"))
            .arg("--python_out")
            .arg(stubs.path())
            .arg("--grpc_python_out")
            .arg(stubs.path())
            .arg(root.join("proto/ministore/v1/journal.proto"))
            .output()
            .expect("running python -m grpc_tools.protoc");
        assert!(
            protoc.status.success(),
            "generating the Python stubs failed: {}",
            printed(&protoc)
        );
        for file in ["journal_pb2.py", "journal_pb2_grpc.py"] {
            let path = stubs.path().join("ministore/v1").join(file);
            assert!(path.is_file(), "protoc did not write {}", path.display());
        }
        let data = tempfile::tempdir().expect("tempdir");
        let server = ServerProcess::start(&data.path().join("data"), &[]);
        PythonSetup {
            stubs,
            server,
            _data: data,
        }
    }

    /// Runs `python script ADDR args...` with the stubs importable; what it printed on
    /// stdout, once it has exited 0.
    fn run(&self, script: &Path, args: &[&str]) -> String {
        let out = Command::new(tools::python())
            .arg(script)
            .arg(self.server.addr.to_string())
            .args(args)
            .env("PYTHONPATH", self.stubs.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}\nserver log:\n{}",
            script.display(),
            printed(&out),
            self.server.logs()
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }
}

#[test]
fn python_client_appends_replays_follows_and_gets_error_codes() {
    let setup = PythonSetup::new();
    let stdout = setup.run(
        &tools::workspace_root().join("tests/python/client.py"),
        &["py-orders"],
    );
    let server = &setup.server;

    // What the script says it wrote: seqs from 1, each with its stored JSON text.
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| {
            panic!("client.py's last line is not its JSON summary ({e}):\n{stdout}")
        });
    assert_eq!(summary["journal"], "py-orders");
    let expected: Vec<(u64, String)> = summary["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let seq = r["seq"].as_u64().expect("seq");
            (seq, r["json"].as_str().expect("json").to_owned())
        })
        .collect();
    assert!(expected.len() >= 10, "the script reports only {expected:?}");
    assert!(
        expected
            .iter()
            .map(|(seq, _)| *seq)
            .eq(1..=expected.len() as u64),
        "seqs are not 1..=N: {expected:?}"
    );

    // The same records through the Rust stubs: Python and Rust see one journal.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let replayed: Vec<(u64, String)> = runtime.block_on(async {
        let mut stub = JournalClient::connect(server.url()).await.expect("connect");
        let page = stub
            .replay(ReplayRequest {
                journal: "py-orders".into(),
                ..Default::default()
            })
            .await
            .expect("Replay")
            .into_inner();
        assert_eq!(page.last_seq, expected.len() as u64);
        page.records
            .into_iter()
            .map(|r| match r.body {
                Some(Body::Payload(json)) => (r.seq, String::from_utf8(json).expect("UTF-8")),
                other => panic!("record {} came back as {other:?}", r.seq),
            })
            .collect()
    });
    assert_eq!(replayed, expected);

    // And on disk, line for line (the journal is open: its file ends in the zeros its
    // writer writes ahead of the records).
    let file = server.data_dir.join("py-orders/journal.jsonl");
    let text = std::fs::read_to_string(&file).expect("reading the journal file");
    let lines: Vec<&str> = text
        .trim_end_matches('\0')
        .lines()
        .filter(|l| !l.starts_with("//"))
        .collect();
    let texts: Vec<&str> = expected.iter().map(|(_, json)| json.as_str()).collect();
    assert_eq!(lines, texts, "{}", file.display());
}

#[test]
fn the_minimal_client_in_docs_python_md_prints_what_it_shows() {
    let doc = tools::workspace_root().join("docs/python.md");
    let markdown = std::fs::read_to_string(&doc).expect("reading docs/python.md");
    let (client, end) = fenced_block(&markdown, "```python", 0);
    let (session, _) = fenced_block(&markdown, "```console", end);
    let shown = session
        .strip_prefix("$ PYTHONPATH=gen python client.py\n")
        .unwrap_or_else(|| panic!("the console block after the client runs it: {session}"));

    let setup = PythonSetup::new();
    let script = setup.stubs.path().join("client.py");
    std::fs::write(&script, client).expect("writing client.py");
    let output = setup.run(&script, &[]);
    assert_eq!(
        output, shown,
        "docs/python.md shows other output than its client prints"
    );
}
