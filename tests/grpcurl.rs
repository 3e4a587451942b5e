//! grpcurl against the real `ministore-server` binary: what a person at a terminal sees.
//!
//! grpcurl (1.8.6, installed by the tests into `.tools/venv`) knows nothing of ministore but
//! what the server's reflection tells it, so these tests also prove that reflection serves
//! the whole contract. Where grpcurl prints JSON the tests parse it; errors are checked as
//! grpcurl prints them, and by its exit code (64 + the gRPC code).

use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ministore_tests::docs::{console_steps, run_as_typed};
use ministore_tests::server::ServerProcess;
use ministore_tests::tools::{self, printed};
use serde_json::{Value, json};

/// The address the docs use: the server's default `--listen`.
const DOCS_ADDR: &str = "127.0.0.1:50051";

/// A server on a fresh data directory (removed with the `TempDir`).
fn start_server() -> (tempfile::TempDir, ServerProcess) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(&tmp.path().join("data"), &[]);
    (tmp, server)
}

/// `grpcurl -plaintext [flags] ADDR [args]`, as a person types it.
fn grpcurl(server: &ServerProcess, flags: &[&str], args: &[&str]) -> Output {
    Command::new(tools::grpcurl())
        .arg("-plaintext")
        .args(flags)
        .arg(server.addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running grpcurl")
}

/// The stdout of a grpcurl run that must succeed.
fn stdout_of(server: &ServerProcess, out: Output) -> String {
    assert!(
        out.status.success(),
        "grpcurl failed: {}\nserver log:\n{}",
        printed(&out),
        server.logs()
    );
    String::from_utf8(out.stdout).expect("grpcurl prints UTF-8")
}

/// Calls `method` with the JSON request `data`; every response message, parsed (grpcurl
/// prints one JSON document per message).
fn call_stream(server: &ServerProcess, method: &str, data: &str) -> Vec<Value> {
    let text = stdout_of(server, grpcurl(server, &["-d", data], &[method]));
    let mut values: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("grpcurl printed something that is not JSON ({e}):\n{text}"));
    values.iter_mut().for_each(check_and_strip_commit_times);
    values
}

/// Checks that every record carries its commit time as an RFC 3339 UTC timestamp (as
/// protobuf's JSON mapping prints a Timestamp), and removes it, so that the tests can
/// compare the rest exactly.
fn check_and_strip_commit_times(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let is_record = fields.contains_key("seq")
                && (fields.contains_key("payload") || fields.contains_key("value"));
            if is_record {
                let time = fields
                    .remove("commitTime")
                    .unwrap_or_else(|| panic!("a record without its commit time: {fields:?}"));
                let time = time.as_str().expect("a Timestamp prints as a string");
                assert!(
                    time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                    "{time} is not an RFC 3339 UTC time"
                );
            }
            // Info's times of the first and last record, when the journal has records.
            if fields.contains_key("lastSeq") && fields.contains_key("segments") {
                // Every record of a journal written here carries its checksum.
                let from = fields.remove("checksumsFromSeq");
                assert_eq!(from.as_ref(), fields.get("firstSeq"), "{fields:?}");
                for key in ["firstCommitTime", "lastCommitTime"] {
                    let time = fields.remove(key);
                    let time = time.as_ref().and_then(Value::as_str);
                    assert!(
                        time.is_some_and(|t| t.ends_with('Z')) || fields["lastSeq"] == json!("0"),
                        "Info without its {key}: {fields:?}"
                    );
                }
            }
            fields.values_mut().for_each(check_and_strip_commit_times);
        }
        Value::Array(items) => items.iter_mut().for_each(check_and_strip_commit_times),
        _ => {}
    }
}

/// `text` with every `"commitTime": "..."` value (and Info's first and last) replaced by `…`: times differ from run to
/// run, so the docs' session is compared without them (their presence still counts).
fn without_times(text: &str) -> String {
    // Matches `commitTime`, `firstCommitTime` and `lastCommitTime`.
    const FIELD: &str = "ommitTime\": \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(FIELD) {
        let value = &rest[at + FIELD.len()..];
        let end = value.find('"').unwrap_or(value.len());
        out.push_str(&rest[..at + FIELD.len()]);
        out.push('…');
        rest = &value[end..];
    }
    out.push_str(rest);
    out
}

/// Calls a unary `method`; its one response, parsed.
fn call(server: &ServerProcess, method: &str, data: &str) -> Value {
    let mut responses = call_stream(server, method, data);
    assert_eq!(responses.len(), 1, "{method} answered {responses:?}");
    responses.remove(0)
}

/// Calls `method`, which must fail; grpcurl's exit code and what it printed on stderr.
fn call_failing(server: &ServerProcess, method: &str, data: &str) -> (i32, String) {
    let out = grpcurl(server, &["-d", data], &[method]);
    assert!(
        !out.status.success(),
        "{method} succeeded: {}",
        printed(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "{method} printed a response: {}",
        printed(&out)
    );
    let code = out.status.code().expect("grpcurl exited, not killed");
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Appends `value` to `journal` and returns its sequence number.
fn append_value(server: &ServerProcess, journal: &str, value: Value) -> u64 {
    let request = json!({ "journal": journal, "value": value }).to_string();
    let response = call(server, "ministore.v1.Journal/Append", &request);
    response["seq"]
        .as_str()
        .and_then(|seq| seq.parse().ok())
        .unwrap_or_else(|| panic!("Append answered {response}"))
}

/// The record lines of `journal`'s active file, as on disk (segment headers left out).
fn lines_on_disk(server: &ServerProcess, journal: &str) -> Vec<String> {
    let path = server.data_dir.join(journal).join("journal.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .filter(|line| !line.starts_with("//"))
        .map(str::to_owned)
        .collect()
}

/// Standard base64, as protobuf's JSON mapping writes `bytes` (and as `base64` prints).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[test]
fn list_shows_the_journal_and_health_services() {
    let (_tmp, server) = start_server();
    let out = stdout_of(&server, grpcurl(&server, &[], &["list"]));
    let services: Vec<&str> = out.lines().collect();
    for service in ["ministore.v1.Journal", "grpc.health.v1.Health"] {
        assert!(
            services.contains(&service),
            "{service} missing from {services:?}"
        );
    }
}

#[test]
fn describe_shows_every_rpc_with_the_comments_of_the_proto() {
    let (_tmp, server) = start_server();
    let journal = stdout_of(
        &server,
        grpcurl(&server, &[], &["describe", "ministore.v1.Journal"]),
    );
    assert!(
        journal.starts_with("ministore.v1.Journal is a service:\n"),
        "{journal}"
    );
    for rpc in [
        "rpc Append ( .ministore.v1.AppendRequest ) returns ( .ministore.v1.AppendResponse );",
        "rpc AppendBatch ( .ministore.v1.AppendBatchRequest ) returns ( .ministore.v1.AppendBatchResponse );",
        "rpc Replay ( .ministore.v1.ReplayRequest ) returns ( .ministore.v1.ReplayResponse );",
        "rpc Stream ( .ministore.v1.StreamRequest ) returns ( stream .ministore.v1.StreamEvent );",
        "rpc Info ( .ministore.v1.InfoRequest ) returns ( .ministore.v1.InfoResponse );",
        "rpc ListJournals ( .ministore.v1.ListJournalsRequest ) returns ( .ministore.v1.ListJournalsResponse );",
    ] {
        assert!(journal.contains(rpc), "{rpc:?} missing from:\n{journal}");
    }
    // Every comment of the service in the wire contract reaches the person at the terminal.
    let proto =
        std::fs::read_to_string(tools::workspace_root().join("proto/ministore/v1/journal.proto"))
            .expect("reading journal.proto");
    let service = &proto[proto.find("service Journal {").expect("the service")..];
    let service = &service[..service.find("\n}").expect("its end")];
    let comments: Vec<&str> = service
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("//"))
        .collect();
    assert!(comments.len() >= 5, "{comments:?}");
    for comment in comments {
        assert!(
            journal.contains(comment),
            "{comment:?} missing from:\n{journal}"
        );
    }

    let request = stdout_of(
        &server,
        grpcurl(&server, &[], &["describe", "ministore.v1.AppendRequest"]),
    );
    assert!(
        request.starts_with("ministore.v1.AppendRequest is a message:\n"),
        "{request}"
    );
    for field in [
        "string journal = 1;",
        "oneof record {",
        "bytes payload = 2;",
        ".google.protobuf.Value value = 3;",
        "// UTF-8 JSON text. Insignificant whitespace is removed before storing.",
        "string idempotency_key = 4;",
        "optional uint64 expected_last_seq = 5;",
    ] {
        assert!(
            request.contains(field),
            "{field:?} missing from:\n{request}"
        );
    }
}

#[test]
fn append_with_a_value_returns_seq_1_and_stores_compact_json() {
    let (_tmp, server) = start_server();
    let response = call(
        &server,
        "ministore.v1.Journal/Append",
        r#"{"journal":"demo","value":{"user":"alice"}}"#,
    );
    assert_eq!(response, json!({ "seq": "1" }));
    assert_eq!(lines_on_disk(&server, "demo"), [r#"{"user":"alice"}"#]);
}

#[test]
fn append_with_a_base64_payload_stores_its_json_text_compacted() {
    let (_tmp, server) = start_server();
    // The string the docs give for `printf '{"user":"bob"}' | base64`.
    assert_eq!(base64(br#"{"user":"bob"}"#), "eyJ1c2VyIjoiYm9iIn0=");
    let typed = r#"{ "user": "bob", "tags": ["a", "b"] }"#;
    let request = json!({ "journal": "demo", "payload": base64(typed.as_bytes()) }).to_string();
    let response = call(&server, "ministore.v1.Journal/Append", &request);
    assert_eq!(response, json!({ "seq": "1" }));
    let stored = r#"{"user":"bob","tags":["a","b"]}"#;
    assert_eq!(lines_on_disk(&server, "demo"), [stored]);

    let page = call(
        &server,
        "ministore.v1.Journal/Replay",
        r#"{"journal":"demo"}"#,
    );
    assert_eq!(
        page["records"],
        json!([{ "seq": "1", "payload": base64(stored.as_bytes()) }])
    );
}

#[test]
fn append_batch_answers_the_range_of_its_records() {
    let (_tmp, server) = start_server();
    assert_eq!(append_value(&server, "demo", json!({ "user": "alice" })), 1);
    let values = call(
        &server,
        "ministore.v1.Journal/AppendBatch",
        r#"{"journal":"demo","values":[{"user":"carol","n":3},{"user":"dave","n":4}]}"#,
    );
    assert_eq!(values, json!({ "firstSeq": "2", "lastSeq": "3" }));
    let request = json!({
        "journal": "demo",
        "payloads": [base64(b"[1, 2]"), base64(b"\"three\""), base64(b"null")],
    })
    .to_string();
    let payloads = call(&server, "ministore.v1.Journal/AppendBatch", &request);
    assert_eq!(payloads, json!({ "firstSeq": "4", "lastSeq": "6" }));
    assert_eq!(
        lines_on_disk(&server, "demo"),
        [
            r#"{"user":"alice"}"#,
            r#"{"n":3,"user":"carol"}"#,
            r#"{"n":4,"user":"dave"}"#,
            "[1,2]",
            r#""three""#,
            "null",
        ]
    );
}

#[test]
fn replay_prints_payloads_as_base64_or_records_as_plain_json() {
    let (_tmp, server) = start_server();
    let users = ["alice", "bob", "carol"];
    for user in users {
        append_value(&server, "demo", json!({ "user": user, "n": 7 }));
    }

    let plain = call(
        &server,
        "ministore.v1.Journal/Replay",
        r#"{"journal":"demo"}"#,
    );
    let payloads: Vec<Value> = users
        .iter()
        .zip(1..)
        .map(|(user, seq)| {
            let text = format!(r#"{{"n":7,"user":"{user}"}}"#);
            json!({ "seq": seq.to_string(), "payload": base64(text.as_bytes()) })
        })
        .collect();
    assert_eq!(
        plain,
        json!({ "records": payloads, "nextSeq": "4", "lastSeq": "3" })
    );

    let values = call(
        &server,
        "ministore.v1.Journal/Replay",
        r#"{"journal":"demo","format":"RECORD_FORMAT_VALUE"}"#,
    );
    let records: Vec<Value> = users
        .iter()
        .zip(1..)
        .map(|(user, seq)| json!({ "seq": seq.to_string(), "value": { "user": user, "n": 7 } }))
        .collect();
    assert_eq!(
        values,
        json!({ "records": records, "nextSeq": "4", "lastSeq": "3" })
    );

    // Paging: a limit, then from_seq = nextSeq until nextSeq > lastSeq.
    let first = call(
        &server,
        "ministore.v1.Journal/Replay",
        r#"{"journal":"demo","limit":2,"format":"RECORD_FORMAT_VALUE"}"#,
    );
    assert_eq!(first["records"], json!(records[..2]));
    assert_eq!(
        (&first["nextSeq"], &first["lastSeq"]),
        (&json!("3"), &json!("3"))
    );
    let rest = call(
        &server,
        "ministore.v1.Journal/Replay",
        r#"{"journal":"demo","from_seq":3,"limit":2,"format":"RECORD_FORMAT_VALUE"}"#,
    );
    assert_eq!(rest["records"], json!(records[2..]));
    assert_eq!(rest["nextSeq"], "4");
}

#[test]
fn stream_without_follow_prints_each_record_as_plain_json_and_ends() {
    let (_tmp, server) = start_server();
    for n in 1..=3 {
        append_value(&server, "demo", json!({ "n": n }));
    }
    append_value(&server, "other", json!("not in demo"));
    let records = call_stream(
        &server,
        "ministore.v1.Journal/Stream",
        r#"{"journal":"demo","format":"RECORD_FORMAT_VALUE"}"#,
    );
    assert_eq!(
        records,
        [
            json!({ "record": { "seq": "1", "value": { "n": 1 } } }),
            json!({ "record": { "seq": "2", "value": { "n": 2 } } }),
            json!({ "record": { "seq": "3", "value": { "n": 3 } } }),
        ]
    );
    let from_two = call_stream(
        &server,
        "ministore.v1.Journal/Stream",
        r#"{"journal":"demo","from_seq":2}"#,
    );
    assert_eq!(
        from_two,
        [
            json!({ "record": { "seq": "2", "payload": base64(br#"{"n":2}"#) } }),
            json!({ "record": { "seq": "3", "payload": base64(br#"{"n":3}"#) } }),
        ]
    );
}

#[test]
fn stream_with_follow_prints_records_appended_after_it_opened() {
    let (_tmp, server) = start_server();
    append_value(&server, "demo", json!({ "n": 1 }));
    let mut follower = Command::new(tools::grpcurl())
        .args(["-plaintext", "-d"])
        .arg(r#"{"journal":"demo","follow":true,"format":"RECORD_FORMAT_VALUE"}"#)
        .arg(server.addr.to_string())
        .arg("ministore.v1.Journal/Stream")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting grpcurl");
    // grpcurl prints each message as it arrives; a thread parses them as they complete.
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, printed) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for value in
            serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>()
        {
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    // Only a bound on a failure, never a wait for success: each record arrives well within it.
    let next = |what: &str| match printed.recv_timeout(Duration::from_secs(30)) {
        Ok(value) => {
            let mut value = value.expect("grpcurl printed JSON");
            check_and_strip_commit_times(&mut value);
            value
        }
        Err(e) => panic!("no record {what} ({e}); server log:\n{}", server.logs()),
    };
    // Receiving the record that was there before proves the stream is open, so the next
    // append happens after it started.
    assert_eq!(
        next("from before the stream"),
        json!({ "record": { "seq": "1", "value": { "n": 1 } } })
    );
    // Then where it is: everything durable delivered.
    assert_eq!(next("caught up"), json!({ "caughtUp": { "lastSeq": "1" } }));
    append_value(&server, "demo", json!({ "n": 2 }));
    assert_eq!(
        next("appended while following"),
        json!({ "record": { "seq": "2", "value": { "n": 2 } } })
    );
    append_value(&server, "demo", json!({ "n": 3 }));
    assert_eq!(
        next("appended while following"),
        json!({ "record": { "seq": "3", "value": { "n": 3 } } })
    );

    assert!(
        follower.try_wait().expect("try_wait").is_none(),
        "a following stream ended by itself"
    );
    follower.kill().expect("stopping grpcurl");
    follower.wait().expect("waiting for grpcurl");
    reader.join().expect("the reader thread");
}

#[test]
fn info_shows_the_retained_range() {
    let (_tmp, server) = start_server();
    for n in 1..=2 {
        append_value(&server, "demo", json!(n));
    }
    let info = call(
        &server,
        "ministore.v1.Journal/Info",
        r#"{"journal":"demo"}"#,
    );
    assert_eq!(
        info,
        json!({ "firstSeq": "1", "lastSeq": "2", "segments": 1 })
    );
}

#[test]
fn health_check_reports_serving() {
    let (_tmp, server) = start_server();
    for request in ["{}", r#"{"service":"ministore.v1.Journal"}"#] {
        let health = call(&server, "grpc.health.v1.Health/Check", request);
        assert_eq!(health, json!({ "status": "SERVING" }), "for {request}");
    }
}

#[test]
fn invalid_json_payload_is_invalid_argument_and_writes_nothing() {
    let (_tmp, server) = start_server();
    append_value(&server, "demo", json!({ "user": "alice" }));
    let request = json!({ "journal": "demo", "payload": base64(b"{oops") }).to_string();
    let (code, stderr) = call_failing(&server, "ministore.v1.Journal/Append", &request);
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(stderr.contains("payload is not valid JSON"), "{stderr}");
    assert_eq!(
        code,
        64 + 3,
        "grpcurl exits with 64 + INVALID_ARGUMENT: {stderr}"
    );
    let info = call(
        &server,
        "ministore.v1.Journal/Info",
        r#"{"journal":"demo"}"#,
    );
    assert_eq!(info["lastSeq"], "1");
    assert_eq!(lines_on_disk(&server, "demo"), [r#"{"user":"alice"}"#]);
}

#[test]
fn a_journal_name_that_is_a_path_is_invalid_argument() {
    let (tmp, server) = start_server();
    let (code, stderr) = call_failing(
        &server,
        "ministore.v1.Journal/Append",
        r#"{"journal":"../x","value":1}"#,
    );
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains(r#"invalid journal name "../x""#),
        "{stderr}"
    );
    assert_eq!(code, 64 + 3, "{stderr}");
    assert!(
        !tmp.path().join("x").exists(),
        "a journal was created outside the data directory"
    );
}

#[test]
fn replay_of_an_unknown_journal_is_not_found() {
    let (_tmp, server) = start_server();
    let (code, stderr) = call_failing(
        &server,
        "ministore.v1.Journal/Replay",
        r#"{"journal":"nope"}"#,
    );
    assert!(stderr.contains("Code: NotFound"), "{stderr}");
    assert!(stderr.contains("created by its first Append"), "{stderr}");
    assert_eq!(code, 64 + 5, "{stderr}");
}

#[test]
fn a_request_retried_with_its_idempotency_key_gets_its_first_answer_and_is_written_once() {
    let (tmp, server) = start_server();
    let append = r#"{"journal":"demo","value":{"user":"erin"},"idempotency_key":"order-42"}"#;
    let batch = r#"{"journal":"demo","values":[{"n":1},{"n":2}],"idempotency_key":"batch-7"}"#;
    assert_eq!(
        call(&server, "ministore.v1.Journal/Append", append),
        json!({ "seq": "1" })
    );
    assert_eq!(
        call(&server, "ministore.v1.Journal/AppendBatch", batch),
        json!({ "firstSeq": "2", "lastSeq": "3" })
    );
    // The retries: the first answers, marked as duplicates; nothing written again.
    assert_eq!(
        call(&server, "ministore.v1.Journal/Append", append),
        json!({ "seq": "1", "duplicate": true })
    );
    assert_eq!(
        call(&server, "ministore.v1.Journal/AppendBatch", batch),
        json!({ "firstSeq": "2", "lastSeq": "3", "duplicate": true })
    );

    // A key reused for another record is refused, naming the seq it was used for.
    let (code, stderr) = call_failing(
        &server,
        "ministore.v1.Journal/Append",
        r#"{"journal":"demo","value":{"user":"frank"},"idempotency_key":"order-42"}"#,
    );
    assert!(stderr.contains("Code: AlreadyExists"), "{stderr}");
    assert!(
        stderr.contains(r#"idempotency key "order-42" was already used for different records, committed at seq 1"#),
        "{stderr}"
    );
    assert_eq!(
        code,
        64 + 6,
        "grpcurl exits with 64 + ALREADY_EXISTS: {stderr}"
    );

    // A key is at most 128 bytes.
    let keyed =
        |key: &str| json!({ "journal": "demo", "value": 4, "idempotency_key": key }).to_string();
    let (code, stderr) = call_failing(
        &server,
        "ministore.v1.Journal/Append",
        &keyed(&"k".repeat(129)),
    );
    assert!(stderr.contains("Code: InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains("an idempotency key is at most 128 bytes"),
        "{stderr}"
    );
    assert_eq!(code, 64 + 3, "{stderr}");
    assert_eq!(
        call(
            &server,
            "ministore.v1.Journal/Append",
            &keyed(&"k".repeat(128))
        ),
        json!({ "seq": "4" })
    );
    let written = [r#"{"user":"erin"}"#, r#"{"n":1}"#, r#"{"n":2}"#, "4"];
    assert_eq!(lines_on_disk(&server, "demo"), written);

    // The keys outlive the server: a new one on the same data directory answers the same.
    server.signal("TERM");
    let (exit, logs) = server.wait();
    assert_eq!(exit, Some(0), "{logs}");
    let server = ServerProcess::start(&tmp.path().join("data"), &[]);
    assert_eq!(
        call(&server, "ministore.v1.Journal/Append", append),
        json!({ "seq": "1", "duplicate": true })
    );
    assert_eq!(
        call(&server, "ministore.v1.Journal/AppendBatch", batch),
        json!({ "firstSeq": "2", "lastSeq": "3", "duplicate": true })
    );
    assert_eq!(lines_on_disk(&server, "demo"), written);
}

#[test]
fn an_append_expecting_another_last_seq_is_aborted_and_says_the_last_seq_in_a_trailer() {
    let (_tmp, server) = start_server();
    let expecting = |last: u64, user: &str| {
        json!({ "journal": "demo", "value": { "user": user }, "expected_last_seq": last })
            .to_string()
    };
    // 0: only into a journal without records (here, one that does not exist yet).
    assert_eq!(
        call(
            &server,
            "ministore.v1.Journal/Append",
            &expecting(0, "erin")
        ),
        json!({ "seq": "1" })
    );
    let (code, stderr) = call_failing(
        &server,
        "ministore.v1.Journal/Append",
        &expecting(0, "frank"),
    );
    assert!(stderr.contains("Code: Aborted"), "{stderr}");
    assert!(
        stderr
            .contains("expected the journal's last seq to be 0, but it is 1; nothing was written"),
        "{stderr}"
    );
    assert_eq!(code, 64 + 10, "grpcurl exits with 64 + ABORTED: {stderr}");

    // `-v` prints the response trailers, the journal's last seq among them.
    let verbose = grpcurl(
        &server,
        &["-v", "-d", &expecting(0, "frank")],
        &["ministore.v1.Journal/Append"],
    );
    assert_eq!(
        verbose.status.code(),
        Some(64 + 10),
        "{}",
        printed(&verbose)
    );
    let text = String::from_utf8_lossy(&verbose.stdout);
    let trailers = &text[text
        .find("Response trailers received:\n")
        .unwrap_or_else(|| panic!("no trailers in:\n{text}"))..];
    assert!(
        trailers.lines().any(|line| line == "ministore-last-seq: 1"),
        "{text}"
    );

    // With the last seq it names, the append goes through.
    assert_eq!(
        call(
            &server,
            "ministore.v1.Journal/Append",
            &expecting(1, "frank")
        ),
        json!({ "seq": "2" })
    );
    // A retry of a keyed conditional append that was written gets its seq, not ABORTED,
    // though the journal's last seq is no longer what it expected.
    let keyed =
        r#"{"journal":"demo","value":{"user":"gina"},"idempotency_key":"k","expected_last_seq":2}"#;
    assert_eq!(
        call(&server, "ministore.v1.Journal/Append", keyed),
        json!({ "seq": "3" })
    );
    assert_eq!(
        call(&server, "ministore.v1.Journal/Append", keyed),
        json!({ "seq": "3", "duplicate": true })
    );
    assert_eq!(
        lines_on_disk(&server, "demo"),
        [
            r#"{"user":"erin"}"#,
            r#"{"user":"frank"}"#,
            r#"{"user":"gina"}"#,
        ]
    );
}

#[test]
fn the_session_in_docs_grpcurl_md_prints_what_it_shows() {
    let doc: PathBuf = tools::workspace_root().join("docs/grpcurl.md");
    let markdown = std::fs::read_to_string(&doc).expect("reading docs/grpcurl.md");
    let steps = console_steps(&markdown);
    assert!(
        steps.len() >= 10,
        "docs/grpcurl.md shows only {} commands",
        steps.len()
    );

    let (tmp, server) = start_server();
    for step in steps {
        assert!(step.command.contains(DOCS_ADDR) || !step.command.starts_with("grpcurl"));
        let command = step.command.replace(DOCS_ADDR, &server.addr.to_string());
        let shown = run_as_typed(&command, tmp.path());
        assert_eq!(
            without_times(shown.trim_end()),
            without_times(step.output.trim_end()),
            "`{}` printed something other than docs/grpcurl.md shows",
            step.command
        );
    }
}
