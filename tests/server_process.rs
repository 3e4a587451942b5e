//! The real `ministore-server` binary as a process: flags, environment, signals, logs,
//! and the data-directory lock.

use ministore_client::Client;
use ministore_tests::events::Records;
use ministore_tests::server::{ServerProcess, client_without_retries, server_binary};
use tokio_stream::StreamExt;

async fn append_numbers(client: &Client, journal: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let seq = client.append(journal, &i).await.unwrap();
        assert_eq!(seq, i);
    }
}

async fn shuts_down_cleanly_on(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &[]);
    let client = Client::connect(server.url()).await.unwrap();
    append_numbers(&client, "sig", 1..=20).await;

    // A following stream is open and caught up when the signal arrives.
    let mut tail = client.raw();
    let mut stream = tail
        .stream(ministore::proto::StreamRequest {
            heartbeat_seconds: 0,
            journal: "sig".into(),
            from_seq: 20,
            follow: true,
            format: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.record().await.unwrap().unwrap().seq, 20);

    server.signal(signal);
    let err = stream.record().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains(&format!("received SIG{signal}")), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");

    // Everything acknowledged is there after a restart, and the lock was released.
    let server = ServerProcess::start(tmp.path(), &[]);
    let client = Client::connect(server.url()).await.unwrap();
    let all: Vec<(u64, u64)> = client.replay("sig", 1).await.unwrap();
    assert_eq!(all, (1..=20).map(|i| (i, i)).collect::<Vec<_>>());
    assert_eq!(client.append("sig", &21).await.unwrap(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_zero_keeping_every_record() {
    shuts_down_cleanly_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_streams_and_exits_zero_keeping_every_record() {
    shuts_down_cleanly_on("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_flight_at_sigterm_are_acknowledged_or_refused_never_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &[]);
    // The writers stop at their first refusal, not after retrying it.
    let client = client_without_retries(&server.url()).await;
    client.append("busy", &0u64).await.unwrap();
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000u64 {
                match client.append("busy", &(w * 100_000 + i)).await {
                    Ok(seq) => acked.push((seq, w * 100_000 + i)),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    // Wait until the writers are demonstrably running before the signal.
    let mut stream = client.stream::<u64>("busy", 1, true);
    for _ in 0..200 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    server.signal("TERM");
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    assert!(acked.len() >= 199);

    let server = ServerProcess::start(tmp.path(), &[]);
    let client = Client::connect(server.url()).await.unwrap();
    let stored: std::collections::HashMap<u64, u64> = client
        .replay("busy", 1)
        .await
        .unwrap()
        .into_iter()
        .collect();
    for (seq, value) in acked {
        assert_eq!(
            stored.get(&seq),
            Some(&value),
            "acknowledged seq {seq} lost"
        );
    }
}

#[test]
fn help_explains_every_flag_and_how_much_is_kept() {
    let out = std::process::Command::new(server_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--max-bytes-per-segment",
        "--max-segments",
        "--max-payload-bytes",
        "--log-format",
        "--log-level",
        "MINISTORE_LISTEN",
        "MINISTORE_DATA_DIR",
        "[default: 127.0.0.1:50051]",
        "[default: ./data]",
        "DELETED",
    ] {
        assert!(help.contains(flag), "--help lacks {flag:?}:\n{help}");
    }
    // The retention the help describes in words is the one the flags default to.
    let defaults = ministore_server::Config::with_data_dir("unused");
    let (segments, segment_bytes) = (defaults.max_segments, defaults.max_bytes_per_segment);
    for default in [
        format!("[default: {segments}]"),
        format!("[default: {segment_bytes}]"),
    ] {
        assert!(help.contains(&default), "--help lacks {default:?}:\n{help}");
    }
    let said = help
        .split("(by default ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("--help says how much is kept by default");
    let (count, size) = said.split_once(" x ").expect("N x SIZE = TOTAL");
    let (size, total) = size.split_once(" = ").expect("N x SIZE = TOTAL");
    assert_eq!(count.parse::<usize>().unwrap(), segments, "{said}");
    assert_eq!(parse_size(size), segment_bytes, "{said}");
    assert_eq!(parse_size(total), segment_bytes * segments as u64, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_logs_say_how_much_each_journal_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        tmp.path(),
        &["--max-segments", "4", "--max-bytes-per-segment", "1048576"],
    );
    Client::connect(server.url())
        .await
        .unwrap()
        .append("x", &1)
        .await
        .unwrap();
    server.signal("TERM");
    let (_, logs) = server.wait();
    assert!(
        logs.contains(
            "each journal keeps at most 4 segments of 1.0 MiB (~4.0 MiB); older records are deleted"
        ),
        "{logs}"
    );
}

#[test]
fn sigterm_right_after_the_listening_line_is_a_clean_shutdown() {
    for signal in ["TERM", "INT"] {
        let tmp = tempfile::tempdir().unwrap();
        // `start` returns as soon as the server has printed "listening on ADDR".
        let server = ServerProcess::start(tmp.path(), &[]);
        server.signal(signal);
        let (code, logs) = server.wait();
        assert_eq!(code, Some(0), "SIG{signal}: {logs}");
        assert!(logs.contains("stopped"), "SIG{signal}: {logs}");
    }
}

#[test]
fn a_second_server_on_the_same_data_directory_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = ServerProcess::start(tmp.path(), &[]);
    let err = ServerProcess::try_start(tmp.path(), &[])
        .err()
        .expect("second server must not start");
    assert!(err.contains("exit Some(1)"), "{err}");
    assert!(err.contains("in use by another ministore-server"), "{err}");
}

#[test]
fn an_unusable_listen_address_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = ServerProcess::try_start(tmp.path(), &["--listen", &addr])
        .err()
        .expect("must fail");
    assert!(
        err.contains(&format!("listening on {addr}")) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(
        err.matches("in use").count(),
        1,
        "the startup error is printed once: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_address_may_name_a_host_and_the_log_shows_the_address_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &["--listen", "localhost:0"]);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let client = Client::connect(format!("localhost:{}", server.addr.port()))
        .await
        .unwrap();
    assert_eq!(client.append("named", &1).await.unwrap(), 1);
    server.signal("TERM");
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains(&format!("addr={}", server_addr_of(&logs))),
        "{logs}"
    );
    assert!(!logs.contains("addr=Some("), "{logs}");
}

/// The address in the "serving" log line.
fn server_addr_of(logs: &str) -> String {
    let line = logs
        .lines()
        .find(|l| l.contains("serving;"))
        .expect("a serving line");
    let at = line.find("addr=").expect("addr=") + 5;
    line[at..].split_whitespace().next().unwrap().to_owned()
}

#[test]
fn short_and_long_help_describe_the_server_alike() {
    let run = |flag: &str| {
        let out = std::process::Command::new(ministore_tests::server::server_binary())
            .arg(flag)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let (short, long) = (run("-h"), run("--help"));
    // clap drops the full stop from the short form's summary.
    let first = |text: &str| {
        text.lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches('.')
            .to_owned()
    };
    assert_eq!(first(&short), first(&long));
    assert!(
        first(&short).contains("durable JSON journals over gRPC"),
        "{short}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_can_come_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::try_start_env(tmp.path(), &[], &[("MINISTORE_MAX_PAYLOAD_BYTES", "10")])
            .unwrap();
    let client = Client::connect(server.url()).await.unwrap();
    client.append("env", &"short").await.unwrap();
    let err = client
        .append("env", &"much longer than ten")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_json_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &["--log-format", "json"]);
    Client::connect(server.url())
        .await
        .unwrap()
        .append("j", &1)
        .await
        .unwrap();
    server.signal("TERM");
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
}

/// `64 MiB`, `1 GiB`: a size as the help writes it.
fn parse_size(text: &str) -> u64 {
    let (n, unit) = text.trim().split_once(' ').expect("a number and a unit");
    let scale = match unit {
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => panic!("unknown unit {other}"),
    };
    n.parse::<u64>().unwrap() * scale
}
