//! The Prometheus endpoint of the real binary (`--metrics-listen`): what it counts under
//! load, what it shows of open streams, and that `promtool` accepts what it serves.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ministore::proto::{
    AppendBatchRequest, AppendRequest, InfoRequest, ReplayRequest, append_request,
};
use ministore_client::Client;
use ministore_tests::events::{self, Records};
use ministore_tests::server::ServerProcess;
use ministore_tests::tools;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any one wait here may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Sends one HTTP/1.1 request; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .expect("the metrics endpoint answers in time");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    (status, body.to_owned())
}

/// `GET /metrics`, which must succeed.
async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of `series` (name and labels exactly as exposed) in `text`; 0 when absent,
/// as a labelled counter is until it first counts.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a number"))
}

fn rpcs(text: &str, method: &str, code: &str) -> f64 {
    value(
        text,
        &format!("ministore_rpcs_total{{method=\"{method}\",code=\"{code}\"}}"),
    )
}

/// Runs `promtool check metrics` on `text`; panics with its findings unless it is clean.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = Command::new(tools::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{text}",
        tools::printed(&out)
    );
}

fn payload(text: &str) -> Option<append_request::Record> {
    Some(append_request::Record::Payload(text.as_bytes().to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_appends_reads_and_streams_and_promtool_accepts_every_scrape() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(tmp.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let client = Client::connect(server.url()).await.unwrap();
    let mut raw = client.raw();

    // A follower, open and caught up: counted from the moment the server opened it.
    assert_eq!(client.append("orders", &0).await.unwrap(), 1);
    let (mut follower, first) = events::follower(&client, "orders", 1).await;
    assert_eq!(first.seq, 1);
    let before = scrape(metrics).await;
    assert_eq!(value(&before, "ministore_streams_open"), 1.0, "{before}");
    assert_eq!(value(&before, "ministore_followers_open"), 1.0, "{before}");

    // Load: 64 concurrent appends through the client (which puts them on one
    // AppendStream), scraped while they are in flight.
    let load: Vec<_> = (0..64u64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.append("orders", &(1000 + i)).await.unwrap() })
        })
        .collect();
    let during = scrape(metrics).await;
    for append in load {
        append.await.unwrap();
    }
    let loaded = scrape(metrics).await;
    let records = |text: &str| value(text, "ministore_appended_records_total");
    let bytes = |text: &str| value(text, "ministore_appended_bytes_total");
    assert_eq!(records(&loaded) - records(&before), 64.0, "{loaded}");
    assert_eq!(bytes(&loaded) - bytes(&before), 64.0 * 4.0, "{loaded}"); // "1000".."1063"
    // Each of them, and the first append, answered by an ack on the client's stream, still
    // open (it closes after 2 s without appends).
    let acks = |text: &str| value(text, "ministore_append_stream_acks_total{code=\"OK\"}");
    assert_eq!(acks(&loaded), 65.0, "{loaded}");
    assert_eq!(
        value(&loaded, "ministore_append_streams_open"),
        1.0,
        "{loaded}"
    );

    // Exact counts: 5 Appends and one AppendBatch of 10, each its own RPC; a Replay; and
    // two refusals, each with the code its client got.
    let one = r#"{"n":1}"#;
    for _ in 0..5 {
        let request = AppendRequest {
            journal: "orders".into(),
            record: payload(one),
            ..Default::default()
        };
        raw.append(request).await.unwrap();
    }
    let batch: Vec<Vec<u8>> = (0..10).map(|i| format!("[{i}]").into_bytes()).collect();
    let batch_bytes: usize = batch.iter().map(Vec::len).sum();
    raw.append_batch(AppendBatchRequest {
        journal: "orders".into(),
        payloads: batch,
        values: vec![],
        ..Default::default()
    })
    .await
    .unwrap();
    let page = raw
        .replay(ReplayRequest {
            journal: "orders".into(),
            from_seq: 1,
            limit: 0,
            format: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 80);
    let missing = raw
        .info(InfoRequest {
            journal: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad_name = raw
        .append(AppendRequest {
            journal: "../etc".into(),
            record: payload(one),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);

    let after = scrape(metrics).await;
    assert_eq!(records(&after) - records(&loaded), 15.0, "{after}");
    assert_eq!(
        bytes(&after) - bytes(&loaded),
        (5 * one.len() + batch_bytes) as f64,
        "{after}"
    );
    let moved = |method, code| rpcs(&after, method, code) - rpcs(&loaded, method, code);
    assert_eq!(moved("Append", "OK"), 5.0, "{after}");
    assert_eq!(moved("AppendBatch", "OK"), 1.0, "{after}");
    assert_eq!(moved("Replay", "OK"), 1.0, "{after}");
    assert_eq!(moved("Info", "NOT_FOUND"), 1.0, "{after}");
    assert_eq!(moved("Append", "INVALID_ARGUMENT"), 1.0, "{after}");
    assert_eq!(
        value(
            &after,
            "ministore_rpc_duration_seconds_count{method=\"Replay\"}"
        ),
        1.0,
        "{after}"
    );
    // Every record went through a commit, which was timed.
    assert_eq!(
        value(&after, "ministore_commit_records_sum"),
        80.0,
        "{after}"
    );
    assert!(value(&after, "ministore_commit_duration_seconds_count") >= 1.0);
    assert_eq!(value(&after, "ministore_commit_failures_total"), 0.0);

    // What the journal holds, read at the scrape.
    assert_eq!(value(&after, "ministore_journals_open"), 1.0, "{after}");
    let journal = "{journal=\"orders\"}";
    let gauge = |name: &str| value(&after, &format!("{name}{journal}"));
    assert_eq!(gauge("ministore_journal_segments"), 1.0, "{after}");
    assert_eq!(gauge("ministore_writer_queue_depth"), 0.0, "{after}");
    // The segment and its metadata file (the lock file is empty).
    let on_disk: u64 = std::fs::read_dir(server.data_dir.join("orders"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(
        gauge("ministore_journal_disk_bytes"),
        on_disk as f64,
        "{after}"
    );

    // The follower saw all of it; once it goes away, it is no longer open, and its Stream
    // counts as CANCELLED (its client ended it).
    for seq in 2..=80 {
        assert_eq!(follower.record().await.unwrap().unwrap().seq, seq);
    }
    drop(follower);
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            let text = scrape(metrics).await;
            // Two drops that happen one after the other, not at once: the stream's state
            // (the gauge) and the reply's body (the RPC count).
            if value(&text, "ministore_streams_open") == 0.0
                && rpcs(&text, "Stream", "CANCELLED") == 1.0
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stream is counted closed once its client dropped it");
    assert_eq!(value(&closed, "ministore_followers_open"), 0.0, "{closed}");
    assert_eq!(rpcs(&closed, "Stream", "CANCELLED"), 1.0, "{closed}");

    for text in [&before, &during, &loaded, &after, &closed] {
        promtool_accepts(text);
    }

    // Only GET /metrics is served.
    assert_eq!(http(metrics, "GET", "/").await.0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").await.0, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_refused_before_their_handler_count_with_the_code_the_client_sees() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(&tokens, "9f86d081884c7d65 rights=read\n").unwrap();
    let data = tmp.path().join("data");
    let mut server = ServerProcess::start(
        &data,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--auth-tokens",
            tokens.to_str().unwrap(),
        ],
    );
    let metrics = server.metrics_addr();

    // The token check refuses these before the service sees them (unary Appends: a
    // refusal inside an AppendStream is an ack, not the RPC's status).
    let anonymous = ministore_client::ClientBuilder::new(server.url())
        .append_streams(false)
        .connect()
        .await
        .unwrap();
    let err = anonymous.append("orders", &1).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated), "{err:?}");
    let reader = ministore_client::ClientBuilder::new(server.url())
        .append_streams(false)
        .bearer_token("9f86d081884c7d65")
        .connect()
        .await
        .unwrap();
    let err = reader.append("orders", &1).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err:?}");

    let text = scrape(metrics).await;
    assert_eq!(rpcs(&text, "Append", "UNAUTHENTICATED"), 1.0, "{text}");
    assert_eq!(rpcs(&text, "Append", "PERMISSION_DENIED"), 1.0, "{text}");
    assert_eq!(value(&text, "ministore_appended_records_total"), 0.0);
    promtool_accepts(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_is_off_by_default_and_on_with_the_flag_or_its_environment_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(tmp.path(), &[]);
    // Served one call, so its signal handler is in place.
    let client = Client::connect(server.url()).await.unwrap();
    assert_eq!(client.append("orders", &1).await.unwrap(), 1);
    server.signal("TERM");
    // Nothing after "listening on": no metrics line, no endpoint.
    assert_eq!(server.next_stdout_line(), None);
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    assert!(!logs.contains("metrics"), "{logs}");

    let mut server = ServerProcess::try_start_env(
        tmp.path(),
        &[],
        &[("MINISTORE_METRICS_LISTEN", "127.0.0.1:0")],
    )
    .unwrap();
    let text = scrape(server.metrics_addr()).await;
    assert!(
        text.contains("\nministore_appended_records_total 0\n"),
        "{text}"
    );
    assert_eq!(value(&text, "ministore_journals_open"), 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_closed_for_room_are_counted_as_kept_and_reopened_warm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(
        tmp.path(),
        &["--metrics-listen", "127.0.0.1:0", "--max-journals", "1"],
    );
    let metrics = server.metrics_addr();
    let client = Client::connect(server.url()).await.unwrap();
    // Each append closes the other journal, keeping its state; from the third on, each
    // reopens its journal from that state (unless the other was busy when its writer made
    // room, and its own journal, idle, was closed instead: then the next one was open).
    for (journal, seq) in [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)] {
        assert_eq!(client.append(journal, &seq).await.unwrap(), seq);
    }
    // The writer closes the other journal right after replying: wait for that.
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut text = scrape(metrics).await;
    while value(&text, "ministore_journals_open") != 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = scrape(metrics).await;
    }
    let opens = |how: &str| {
        value(
            &text,
            &format!("ministore_journal_opens_total{{how=\"{how}\"}}"),
        )
    };
    assert_eq!(opens("full"), 2.0, "{text}");
    assert!(opens("warm") >= 2.0, "{text}");
    assert_eq!(opens("changed"), 0.0, "{text}");
    // b is closed with its state kept (a's was taken by its reopen).
    assert_eq!(value(&text, "ministore_journals_warm"), 1.0, "{text}");
    assert!(value(&text, "ministore_warm_journal_bytes") > 0.0, "{text}");
    assert_eq!(value(&text, "ministore_journals_open"), 1.0, "{text}");
    promtool_accepts(&text);
}

/// `--dedupe-key-bytes` bounds the idempotency keys of all journals together: a journal
/// that filled it remembers a new key by forgetting its own oldest, another journal still
/// keeps its newest 1,024, and the gauge shows what they take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_of_all_journals_stay_within_dedupe_key_bytes() {
    use ministore_tests::server::payload_request;
    const KEY_BYTES: usize = ministore::KEY_BYTES;
    const KEEPS: usize = ministore::KEYS_EACH_JOURNAL_KEEPS;
    let tmp = tempfile::tempdir().unwrap();
    let budget = (2000 * KEY_BYTES).to_string();
    let mut server = ServerProcess::start(
        tmp.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--dedupe-key-bytes",
            &budget,
        ],
    );
    let client = Client::connect(server.url()).await.unwrap();
    let keyed = |journal: &str, i: usize| AppendRequest {
        idempotency_key: format!("{journal}-{i}"),
        ..payload_request(journal, &i.to_string())
    };
    // Each journal's records on one AppendStream, keyed "<journal>-<i>": seq i + 1.
    for (journal, count) in [("a", 2500), ("b", KEEPS + 76)] {
        let requests: Vec<AppendRequest> = (0..count).map(|i| keyed(journal, i)).collect();
        let mut acks = client
            .raw()
            .append_stream(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let mut acked = 0;
        while let Some(ack) = acks.message().await.unwrap() {
            assert_eq!(
                (ack.seq, ack.error, ack.duplicate),
                (acked + 1, None, false)
            );
            acked += 1;
        }
        assert_eq!(acked, count as u64);
    }
    // a took the budget (its 1,024 and 976 more); b kept its 1,024 past it.
    let text = scrape(server.metrics_addr()).await;
    assert_eq!(
        value(&text, "ministore_dedupe_key_bytes"),
        ((2000 + KEEPS) * KEY_BYTES) as f64,
        "{text}"
    );
    let retry = |journal: &str, i: usize| {
        let mut raw = client.raw();
        let request = keyed(journal, i);
        async move { raw.append(request).await.unwrap().into_inner() }
    };
    // The newest keys of both are remembered: their retries are duplicates.
    let again = retry("a", 2499).await;
    assert_eq!((again.seq, again.duplicate), (2500, true));
    let again = retry("b", KEEPS + 75).await;
    assert_eq!((again.seq, again.duplicate), (KEEPS as u64 + 76, true));
    let again = retry("b", 76).await;
    assert_eq!((again.seq, again.duplicate), (77, true));
    // What they forgot to stay within it: a's oldest 500, b's oldest 76.
    let again = retry("a", 499).await;
    assert_eq!((again.seq, again.duplicate), (2501, false));
    let again = retry("b", 75).await;
    assert_eq!((again.seq, again.duplicate), (KEEPS as u64 + 77, false));
    promtool_accepts(&scrape(server.metrics_addr()).await);
}
