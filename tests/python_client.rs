//! A Python gRPC client against the real `ministore-server` binary, with stubs generated
//! from `proto/` the way a Python user would (`python -m grpc_tools.protoc`). The script,
//! `tests/python/client.py`, checks what it gets back itself; this test then checks that
//! the records it wrote are the ones the Rust stubs and the journal file hold.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use ministore::proto::journal_client::JournalClient;
use ministore::proto::record::Body;
use ministore::proto::{InfoRequest, ReplayRequest};
use ministore_client::AppendOptions;
use ministore_tests::docs::fenced_block;
use ministore_tests::events::EVENT_BOUND;
use ministore_tests::server::{ServerProcess, replay_texts};
use ministore_tests::tools::{self, printed};
use serde_json::{Value, json};

/// A server on a fresh data directory, and the Python stubs of `proto/` ([`generate_stubs`]).
struct PythonSetup {
    stubs: tempfile::TempDir,
    server: ServerProcess,
    _data: tempfile::TempDir,
}

/// The Python stubs of `proto/`, generated into a temporary directory the way the docs tell
/// users (`python -m grpc_tools.protoc`).
fn generate_stubs() -> tempfile::TempDir {
    tools::python_stubs_with(&tools::python()).unwrap_or_else(|e| panic!("{e}"))
}

impl PythonSetup {
    fn new() -> PythonSetup {
        let stubs = generate_stubs();
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
            // client.py imports producer.py: no __pycache__ in tests/python.
            .env("PYTHONDONTWRITEBYTECODE", "1")
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

    // And on disk, line for line.
    let file = server.data_dir.join("py-orders/journal.jsonl");
    let text = std::fs::read_to_string(&file).expect("reading the journal file");
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("//")).collect();
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

#[test]
fn the_producer_in_docs_python_md_is_the_one_the_tests_run() {
    let root = tools::workspace_root();
    let markdown =
        std::fs::read_to_string(root.join("docs/python.md")).expect("reading docs/python.md");
    let script = std::fs::read_to_string(root.join("tests/python/producer.py"))
        .expect("reading tests/python/producer.py");
    let section = markdown
        .find("\n## A producer that retries safely\n")
        .expect("docs/python.md has its producer section");
    let (retries, end) = fenced_block(&markdown, "```python", section);
    let (conditional, _) = fenced_block(&markdown, "```python", end);
    for shown in [retries, conditional] {
        assert!(
            script.contains(&shown),
            "docs/python.md shows code that tests/python/producer.py does not hold:\n{shown}"
        );
    }
}

#[test]
fn the_stream_producer_in_docs_python_md_appends_in_order_on_one_append_stream() {
    let root = tools::workspace_root();
    let markdown =
        std::fs::read_to_string(root.join("docs/python.md")).expect("reading docs/python.md");
    let script_path = root.join("tests/python/stream_producer.py");
    let script = std::fs::read_to_string(&script_path).expect("reading stream_producer.py");
    let section = markdown
        .find("\n## Many records on one stream\n")
        .expect("docs/python.md has its AppendStream section");
    // Both producers it shows: the threads API's, then asyncio's.
    let (threads, next) = fenced_block(&markdown, "```python", section);
    let (asyncio, _) = fenced_block(&markdown, "```python", next);
    for shown in [threads, asyncio] {
        assert!(
            script.contains(&shown),
            "docs/python.md shows code that tests/python/stream_producer.py does not hold:\n{shown}"
        );
    }

    let setup = PythonSetup::new();
    for (journal, mode) in [("py-stream", None), ("py-stream-aio", Some("aio"))] {
        let mut args = vec![journal, "3000"];
        args.extend(mode);
        let out = setup.run(&script_path, &args);
        let summary: Value = serde_json::from_str(out.trim()).expect("one JSON line");
        assert_eq!(summary["records"], 3000, "{mode:?}: {out}");
        assert_eq!(
            (summary["first_seq"].as_u64(), summary["last_seq"].as_u64()),
            (Some(1), Some(3000)),
            "{mode:?}"
        );
        let lines =
            std::fs::read_to_string(setup.server.data_dir.join(journal).join("journal.jsonl"))
                .expect("reading the journal file");
        let records: Vec<&str> = lines.lines().filter(|l| !l.starts_with("//")).collect();
        let wanted: Vec<String> = (0..3000).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
        assert_eq!(records, wanted, "{mode:?}");
    }
}

#[test]
fn the_follower_in_docs_python_md_sees_every_record_once_across_sigkills() {
    let root = tools::workspace_root();
    let markdown =
        std::fs::read_to_string(root.join("docs/python.md")).expect("reading docs/python.md");
    let script_path = root.join("tests/python/follower.py");
    let script = std::fs::read_to_string(&script_path).expect("reading tests/python/follower.py");
    let section = markdown
        .find("A follower that must outlive server restarts")
        .expect("docs/python.md has its resuming follower");
    let (shown, _) = fenced_block(&markdown, "```python", section);
    assert!(
        script.contains(&shown),
        "docs/python.md shows a follower that tests/python/follower.py does not hold:\n{shown}"
    );

    let stubs = generate_stubs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(&data, &[]);
    let addr = server.addr.to_string();
    const RECORDS: u64 = 30;
    let stderr = tmp.path().join("follower.stderr");
    let mut child = Command::new(tools::python())
        .arg(&script_path)
        .args([&addr, "feed", &RECORDS.to_string()])
        .env(
            "PYTHONPATH",
            std::env::join_paths([stubs.path(), &root.join("tests/python")]).unwrap(),
        )
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr).expect("creating a stderr file"))
        .spawn()
        .expect("starting follower.py");
    let _kill = KillOnDrop(child.id());
    let (lines, printed) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let next_record = |server: &ServerProcess, seen: &mut Vec<u64>, n: u64| {
        append_one(server.url(), "feed", n);
        let line = printed.recv_timeout(EVENT_BOUND).unwrap_or_else(|e| {
            panic!(
                "the follower printed nothing for record {n} ({e}):\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        let value: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(value["record"], json!({ "n": n }), "{line}");
        seen.push(value["seq"].as_u64().expect("a seq"));
    };
    // Ten records, then the server dies and comes back on the same port and data, twice:
    // the follower goes on with the next record each time.
    let mut n = 1;
    for round in 0..3 {
        for _ in 0..RECORDS / 3 {
            next_record(&server, &mut seen, n);
            n += 1;
        }
        if round < 2 {
            server.signal("KILL");
            let _ = server.wait();
            server = ServerProcess::start(&data, &["--listen", &addr]);
        }
    }
    assert_eq!(
        seen,
        (1..=RECORDS).collect::<Vec<_>>(),
        "every record once, in order"
    );
    let status = child.wait().expect("waiting for follower.py");
    assert!(status.success(), "follower.py failed ({status})");
}

/// Appends `{"n": n}` to `journal` at `url` through the Rust client, with its retries.
fn append_one(url: String, journal: &str, n: u64) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let client = ministore_client::Client::connect(url)
                .await
                .expect("connect");
            client
                .append(journal, &json!({ "n": n }))
                .await
                .expect("append");
        });
}

/// Kills a child process if the test ends before it does.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
    }
}

/// Producers of the crash test, each a `producer.py` process.
const PRODUCERS: usize = 8;
/// Producers in Rust, through one `ministore_client::Client` (its own keys and retries),
/// appending beside the Python ones: 16 in all.
const RUST_PRODUCERS: usize = 8;
/// Records each producer appends, one at a time.
const RECORDS_PER_PRODUCER: usize = 150;
/// SIGKILL-and-restart rounds while the producers run.
const KILLS: usize = 3;
/// Small segments, all kept: the journal rotates several times under the producers (the
/// keys must outlive rotations too), and every record stays to be checked.
const SMALL_SEGMENTS: [&str; 4] = ["--max-bytes-per-segment", "16384", "--max-segments", "0"];

/// One line of `producer.py`: a record acknowledged.
#[derive(Debug, serde::Deserialize)]
struct Ack {
    id: String,
    seq: u64,
    duplicate: bool,
}

/// A `producer.py` process, killed if the test ends before it does.
struct Producer {
    child: Child,
    /// Where its stderr goes (a file: nothing to drain).
    stderr: PathBuf,
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of `journal` on the server at `url`, with its JSON parsed, page by page.
fn replay_all(url: String, journal: &str) -> Vec<(u64, Value)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut stub = JournalClient::connect(url).await.expect("connect");
        replay_texts(&mut stub, journal)
            .await
            .into_iter()
            .map(|(seq, text)| (seq, serde_json::from_str(&text).expect("stored JSON")))
            .collect()
    })
}

#[test]
fn python_and_rust_producers_retrying_with_keys_store_each_record_once_through_sigkills() {
    let stubs = generate_stubs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let first = ServerProcess::start(&data, &SMALL_SEGMENTS);
    // Restarts listen where the producers' channels reconnect.
    let addr = first.addr.to_string();
    let restart = || {
        let mut args = SMALL_SEGMENTS.to_vec();
        args.extend(["--listen", &addr]);
        ServerProcess::start(&data, &args)
    };
    let mut server = Some(first);

    // Each producer's stdout is read by a thread that hands its lines over as they come,
    // then None at its end.
    let script = tools::workspace_root().join("tests/python/producer.py");
    let (lines, printed_lines) = mpsc::channel::<(usize, Option<String>)>();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let stderr = tmp.path().join(format!("producer-{p}.stderr"));
        let mut child = Command::new(tools::python())
            .arg(&script)
            .args([
                &addr,
                "orders",
                &format!("p{p}"),
                &RECORDS_PER_PRODUCER.to_string(),
            ])
            .env("PYTHONPATH", stubs.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("creating a stderr file"))
            .spawn()
            .expect("starting producer.py");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if lines.send((p, Some(line))).is_err() {
                    return;
                }
            }
            let _ = lines.send((p, None));
        });
        producers.push(Producer { child, stderr });
    }
    // The Rust producers: tasks on a runtime of their own, sharing one client, each
    // printing its acknowledgements into the same channel, then None.
    let rust_addr = server.as_ref().expect("a server runs").url();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let client = ministore_client::Client::connect(rust_addr)
                .await
                .expect("connecting the Rust producers' client");
            let tasks: Vec<_> = (PRODUCERS..PRODUCERS + RUST_PRODUCERS)
                .map(|p| {
                    let (client, lines) = (client.clone(), lines.clone());
                    tokio::spawn(async move {
                        for n in 0..RECORDS_PER_PRODUCER {
                            let id = format!("rust-{p}-{n}");
                            let record = json!({ "id": id, "producer": format!("p{p}"), "n": n });
                            let line = match client
                                .append_with("orders", &record, AppendOptions::new())
                                .await
                            {
                                Ok(a) => {
                                    json!({ "id": id, "seq": a.seq, "duplicate": a.duplicate })
                                        .to_string()
                                }
                                // Not an acknowledgement: the test reports it.
                                Err(e) => format!("error: {e}"),
                            };
                            if lines.send((p, Some(line))).is_err() {
                                return;
                            }
                        }
                        let _ = lines.send((p, None));
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
        });
    });
    // (The Rust producers' thread holds the last sender: the channel ends with them.)
    let all_producers = PRODUCERS + RUST_PRODUCERS;

    // The server dies each time another quarter of all the records has been acknowledged,
    // with every producer still going, and comes back on the same port and data.
    let total = all_producers * RECORDS_PER_PRODUCER;
    let mut acks: Vec<Vec<Ack>> = (0..all_producers).map(|_| Vec::new()).collect();
    let mut acked = 0;
    let mut kills = 0;
    let mut running = all_producers;
    while running > 0 {
        let logs = || server.as_ref().map(ServerProcess::logs).unwrap_or_default();
        // A bound on failure only: the producers acknowledge records every few ms.
        let (p, line) = printed_lines.recv_timeout(EVENT_BOUND).unwrap_or_else(|e| {
            panic!(
                "no producer printed anything for {EVENT_BOUND:?} ({e}); {acked} of {total} acknowledged\nserver log:\n{}",
                logs()
            )
        });
        let Some(line) = line else {
            let Some(producer) = producers.get_mut(p) else {
                running -= 1; // a Rust producer, done
                continue;
            };
            let status = producer.child.wait().expect("waiting for producer.py");
            assert!(
                status.success(),
                "producer {p} failed ({status}):\n{}\nserver log:\n{}",
                std::fs::read_to_string(&producer.stderr).unwrap_or_default(),
                logs()
            );
            running -= 1;
            continue;
        };
        let ack: Ack = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("producer {p} printed {line:?}, not an acknowledgement ({e})")
        });
        acks[p].push(ack);
        acked += 1;
        if kills < KILLS && acked >= (kills + 1) * total / (KILLS + 1) {
            let killed = server.take().expect("a server runs");
            killed.signal("KILL");
            let (code, logs) = killed.wait();
            assert_eq!(code, None, "the server should die of SIGKILL:\n{logs}");
            kills += 1;
            println!("SIGKILL {kills} after {acked} of {total} records were acknowledged");
            server = Some(restart());
        }
    }
    assert_eq!(kills, KILLS, "the server was killed only {kills} times");
    let server = server.expect("a server runs");

    // What the journal holds: seqs 1..=N, and no record twice.
    let stored = replay_all(server.url(), "orders");
    assert!(
        stored
            .iter()
            .map(|(seq, _)| *seq)
            .eq(1..=stored.len() as u64),
        "seqs are not 1..={}",
        stored.len()
    );
    let mut stored_at: HashMap<&str, u64> = HashMap::new();
    for (seq, record) in &stored {
        let id = record["id"]
            .as_str()
            .unwrap_or_else(|| panic!("record {seq} has no id: {record}"));
        if let Some(first) = stored_at.insert(id, *seq) {
            panic!("record {id} is stored twice: at seq {first} and at seq {seq}");
        }
    }

    // Every record each producer was told is acknowledged is stored at the seq it was told,
    // and nothing else is stored: every record once, as its producer made it.
    let mut duplicates = 0;
    for (p, acks) in acks.iter().enumerate() {
        assert_eq!(
            acks.len(),
            RECORDS_PER_PRODUCER,
            "producer {p} printed {} acknowledgements",
            acks.len()
        );
        for (n, ack) in acks.iter().enumerate() {
            let made = json!({ "id": ack.id, "producer": format!("p{p}"), "n": n });
            assert_eq!(
                stored.get(ack.seq as usize - 1).map(|(_, record)| record),
                Some(&made),
                "producer {p} was told its record {n} is at seq {} (duplicate: {})",
                ack.seq,
                ack.duplicate
            );
            duplicates += usize::from(ack.duplicate);
        }
        assert!(
            acks.windows(2).all(|pair| pair[0].seq < pair[1].seq),
            "producer {p} appended one record after the other, but its seqs are not in order"
        );
    }
    assert_eq!(
        stored.len(),
        total,
        "records stored that no producer was told of"
    );

    let segments = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut stub = JournalClient::connect(server.url()).await.expect("connect");
            let info = stub
                .info(InfoRequest {
                    journal: "orders".into(),
                })
                .await
                .expect("Info")
                .into_inner();
            info.segments
        });
    assert!(
        segments > 3,
        "the journal should have rotated: {segments} segments"
    );
    println!(
        "{PRODUCERS} Python and {RUST_PRODUCERS} Rust producers, {KILLS} SIGKILLs: {total} records acknowledged, each stored once \
         at its seq; {duplicates} acknowledged as duplicates (written before a kill, answered \
         to the retry); {segments} segments"
    );
}
