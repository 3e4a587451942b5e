//! Ways a client or a damaged file could take the server down, each proven harmless
//! against the real binary where it is about the process: memory held for readers is
//! budgeted in bytes, damaged segments answer DATA_LOSS instead of hanging readers and
//! shutdown, every accepted record reads back in every format, and a data directory
//! removed under the server stops acknowledgements instead of losing them.

use std::path::Path;
use std::time::Duration;

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{
    AppendBatchRequest, AppendRequest, InfoRequest, Record, RecordFormat, ReplayRequest,
    StreamRequest, append_request, record,
};
use ministore_server::Config;
use ministore_tests::events::Records;
use ministore_tests::files::rotated_segments;
use ministore_tests::server::{ServerProcess, TestServer, client_without_retries};
use tonic::Code;
use tonic::transport::Channel;

/// What gRPC clients accept by default (grpcurl, Python, Go, Java): 4 MiB per message.
const CLIENT_LIMIT: usize = 4 * 1024 * 1024;

/// A stub with the common clients' default message limit, on a connection of its own.
async fn common_client(url: &str) -> JournalClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    JournalClient::new(channel)
        .max_decoding_message_size(CLIENT_LIMIT)
        .max_encoding_message_size(64 << 20)
}

fn replay(journal: &str, from_seq: u64, value: bool) -> ReplayRequest {
    ReplayRequest {
        journal: journal.into(),
        from_seq,
        limit: 0,
        format: format(value),
    }
}

fn stream(journal: &str, from_seq: u64, value: bool, follow: bool) -> StreamRequest {
    StreamRequest {
        heartbeat_seconds: 0,
        journal: journal.into(),
        from_seq,
        follow,
        format: format(value),
    }
}

fn format(value: bool) -> i32 {
    match value {
        true => RecordFormat::Value as i32,
        false => RecordFormat::Payload as i32,
    }
}

async fn append_batches(stub: &mut JournalClient<Channel>, journal: &str, records: &[String]) {
    for chunk in records.chunks(8) {
        stub.append_batch(AppendBatchRequest {
            journal: journal.into(),
            payloads: chunk.iter().map(|r| r.clone().into_bytes()).collect(),
            values: vec![],
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// Every page of a Replay of `journal` from its start: (seq, payload or None for a value).
async fn replay_all(
    stub: &mut JournalClient<Channel>,
    journal: &str,
    value: bool,
) -> Vec<(u64, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = stub
            .replay(replay(journal, from, value))
            .await
            .unwrap_or_else(|e| panic!("Replay of {journal} from {from}: {e}"))
            .into_inner();
        if page.records.is_empty() {
            return out;
        }
        from = page.next_seq;
        out.extend(page.records.into_iter().map(body));
    }
}

fn body(record: Record) -> (u64, Option<Vec<u8>>) {
    match record.body {
        Some(record::Body::Payload(p)) => (record.seq, Some(p)),
        Some(record::Body::Value(_)) => (record.seq, None),
        None => panic!("record {} without a body", record.seq),
    }
}

/// A figure of /proc/PID/status, in bytes ("VmRSS", "VmHWM").
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_streams_and_concurrent_large_replays_stay_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 64 * MIB;
    let server = ServerProcess::start(tmp.path(), &["--max-read-bytes", &budget.to_string()]);
    let pid = server.child.id();
    let mut stub = common_client(&server.url()).await;
    // 1 MiB records (the largest accepted), and 256 KiB arrays of small numbers: the
    // largest record sent as a value, about 7 MiB of memory each in that form.
    let big: Vec<String> = (0..24)
        .map(|i| format!("\"{i}{}\"", "x".repeat(1024 * 1024 - 16)))
        .collect();
    let numbers: Vec<String> = (0..24)
        .map(|i| format!("[{i}{}]", ",1".repeat(128 * 1024 - 8)))
        .collect();
    append_batches(&mut stub, "big", &big).await;
    append_batches(&mut stub, "numbers", &numbers).await;
    // Measure from here: the peak of the appends above is not the readers' doing.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = proc_status(pid, "VmRSS");

    // Readers that take one record, then stop reading: each on its own connection.
    let mut unread = Vec::new();
    for (journal, value) in [
        ("big", false),
        ("big", true),
        ("numbers", true),
        ("numbers", false),
    ] {
        for _ in 0..2 {
            let mut reader = common_client(&server.url()).await;
            let mut records = reader
                .stream(stream(journal, 1, value, true))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(records.record().await.unwrap().unwrap().seq, 1);
            unread.push((reader, records));
        }
    }
    println!(
        "RSS with unread streams: {} MiB",
        proc_status(pid, "VmHWM") / MIB
    );
    // Meanwhile, 16 concurrent Replays of everything, in both formats: every page fits
    // the common clients' 4 MiB, and every record arrives, in order.
    let mut replays = tokio::task::JoinSet::new();
    for i in 0..16 {
        let url = server.url();
        replays.spawn(async move {
            let mut stub = common_client(&url).await;
            let (journal, value) = [
                ("big", false),
                ("big", true),
                ("numbers", true),
                ("numbers", false),
            ][i % 4];
            (journal, value, replay_all(&mut stub, journal, value).await)
        });
    }
    while let Some(done) = replays.join_next().await {
        let (journal, value, records) = done.unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(
            seqs,
            (1..=24).collect::<Vec<_>>(),
            "{journal} value={value}"
        );
        // 1 MiB records are sent as exact payload even as values: a value would be larger
        // than a client takes. The numbers fit as values.
        for (seq, payload) in records {
            match (journal, value) {
                ("big", _) => {
                    assert_eq!(payload.as_deref(), Some(big[seq as usize - 1].as_bytes()))
                }
                (_, true) => assert_eq!(payload, None, "numbers record {seq} as a value"),
                (_, false) => assert_eq!(
                    payload.as_deref(),
                    Some(numbers[seq as usize - 1].as_bytes())
                ),
            }
        }
    }
    let peak = proc_status(pid, "VmHWM");
    let grew = peak.saturating_sub(before);
    // The bound the README states: the read budget, plus a fixed 128 MiB (records being
    // converted, buffers in flight, what the allocator keeps), plus per open stream at most
    // 12 times its largest record (here 1 MiB). Before the budget, two unread streams of
    // these records grew the server by 492 MiB, and six Replays peaked at 1.74 GB.
    let bound = budget + 128 * MIB + 8 * 12 * MIB;
    println!(
        "RSS before {} MiB, peak {} MiB: grew {} MiB (bound {} MiB)",
        before / MIB,
        peak / MIB,
        grew / MIB,
        bound / MIB
    );
    assert!(
        grew <= bound,
        "the server grew by {} MiB, more than {} MiB",
        grew / MIB,
        bound / MIB
    );

    // The unread streams still work once read.
    for (_, mut records) in unread {
        assert_eq!(records.record().await.unwrap().unwrap().seq, 2);
    }
}

/// Waits at most `limit` for the server to exit; its exit code and logs.
fn exits_within(server: ServerProcess, limit: Duration) -> (Option<i32>, String) {
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(server.wait());
    });
    exited
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the server did not exit within {limit:?}"))
}

/// A journal of records 1..=60 in rotated segments of about 120 bytes, written by the real
/// server, which is stopped; the middle segment removed. The path of the segment before the
/// removed one, and the first seq that is missing.
async fn journal_missing_a_middle_segment(data_dir: &Path) -> (String, u64) {
    let server = ServerProcess::start(data_dir, &["--max-bytes-per-segment", "120"]);
    let client = ministore_client::Client::connect(server.url())
        .await
        .unwrap();
    for i in 1..=60u64 {
        assert_eq!(
            client
                .append("hurt", &format!("record {i:04}"))
                .await
                .unwrap(),
            i
        );
    }
    server.signal("TERM");
    assert_eq!(exits_within(server, Duration::from_secs(10)).0, Some(0));
    let segments = rotated_segments(&data_dir.join("hurt/journal.jsonl"));
    assert!(segments.len() > 4, "{segments:?}");
    let middle = &segments[segments.len() / 2];
    let first_missing: u64 = std::fs::read_to_string(middle)
        .unwrap()
        .lines()
        .next()
        .and_then(|h| h.rsplit("first_seq=").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    std::fs::remove_file(middle).unwrap();
    let before = &segments[segments.len() / 2 - 1];
    (
        before.file_name().unwrap().to_string_lossy().into_owned(),
        first_missing,
    )
}

/// The status `call` ends with, which must come within a second.
async fn within_a_second(
    what: &str,
    call: impl std::future::Future<Output = tonic::Status>,
) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within a second"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_missing_from_the_middle_is_data_loss_at_once_and_sigterm_still_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let (before, missing) = journal_missing_a_middle_segment(tmp.path()).await;
    let server = ServerProcess::start(
        tmp.path(),
        &[
            "--max-bytes-per-segment",
            "120",
            "--shutdown-grace-seconds",
            "2",
        ],
    );
    let mut stub = common_client(&server.url()).await;

    // Info says where the damage is; appends go on after it.
    let info = stub
        .info(InfoRequest {
            journal: "hurt".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(info.damage.contains(&before), "{info:?}");
    assert!(info.damage.contains("but the next file"), "{info:?}");
    let seq = stub
        .append(AppendRequest {
            journal: "hurt".into(),
            record: Some(append_request::Record::Payload(b"61".to_vec())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .seq;
    assert_eq!(seq, 61);

    // Replay from the start, from inside the gap, and Streams: DATA_LOSS naming the file
    // and the seq, within a second, every time they are asked.
    for from in [1, missing, missing + 1] {
        for _ in 0..3 {
            let status = within_a_second("Replay", async {
                let mut from = from;
                loop {
                    match stub.replay(replay("hurt", from, false)).await {
                        Ok(page) => from = page.into_inner().next_seq,
                        Err(status) => return status,
                    }
                }
            })
            .await;
            assert_eq!(status.code(), Code::DataLoss, "{status:?}");
            let expected = from.max(missing);
            assert!(
                status
                    .message()
                    .contains(&format!("record {expected} is missing")),
                "{status:?}"
            );
            assert!(status.message().contains(&before), "{status:?}");
        }
        for follow in [false, true] {
            let status = within_a_second("Stream", async {
                let mut records = match stub.stream(stream("hurt", from, false, follow)).await {
                    Ok(records) => records.into_inner(),
                    Err(status) => return status,
                };
                loop {
                    match records.record().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("the stream ended without an error"),
                        Err(status) => return status,
                    }
                }
            })
            .await;
            assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        }
    }

    // A follower waiting past the damage keeps working, and SIGTERM ends everything in time.
    let mut follower = stub
        .stream(stream("hurt", 62, false, true))
        .await
        .unwrap()
        .into_inner();
    server.signal("TERM");
    let ended = tokio::time::timeout(Duration::from_secs(5), follower.record()).await;
    assert!(
        matches!(ended, Ok(Err(ref s)) if s.code() == Code::Unavailable),
        "{ended:?}"
    );
    let (code, logs) = exits_within(server, Duration::from_secs(5));
    assert_eq!(code, Some(0), "{logs}");
}

#[tokio::test]
async fn every_accepted_record_reads_back_in_both_formats_within_client_limits() {
    let server = TestServer::start().await;
    let mut stub = common_client(&server.url()).await;
    let deep_array = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let deep_object = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    let records = [
        deep_array(127), // the deepest accepted: sent as payload in the value format
        deep_object(32), // the deepest sent as a value
        deep_object(33), // one deeper: payload
        "12345678901234567890123".to_owned(), // no double holds it exactly: still a value
    ];
    for r in &records {
        stub.append(AppendRequest {
            journal: "shapes".into(),
            record: Some(append_request::Record::Payload(r.clone().into_bytes())),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let as_values = replay_all(&mut stub, "shapes", true).await;
    let expected: Vec<(u64, Option<Vec<u8>>)> = vec![
        (1, Some(records[0].clone().into_bytes())),
        (2, None),
        (3, Some(records[2].clone().into_bytes())),
        (4, None),
    ];
    assert_eq!(as_values, expected);
    let mut streamed = Vec::new();
    let mut values = stub
        .stream(stream("shapes", 1, true, false))
        .await
        .unwrap()
        .into_inner();
    while let Some(record) = values.record().await.unwrap() {
        streamed.push(body(record));
    }
    assert_eq!(streamed, expected, "Stream sends what Replay sends");
    let as_payloads = replay_all(&mut stub, "shapes", false).await;
    let payloads: Vec<Vec<u8>> = as_payloads.into_iter().map(|r| r.1.unwrap()).collect();
    assert_eq!(payloads, records.map(String::into_bytes));

    // The default page of 1000 records of 2 KB, as values, fits the 4 MiB of common clients
    // (it was 11 MB): pages are cut by their size in the form sent.
    let record = format!(
        "{{\"k\":[{}]}}",
        (0..600)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(record.len() > 1500);
    let records: Vec<String> = (0..1000).map(|_| record.clone()).collect();
    append_batches(&mut stub, "pages", &records).await;
    let page = stub
        .replay(replay("pages", 1, true))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !page.records.is_empty() && page.records.len() < 1000,
        "{}",
        page.records.len()
    );
    assert_eq!(replay_all(&mut stub, "pages", true).await.len(), 1000);

    // 1 MiB records in the value format: exact payloads, not OUT_OF_RANGE.
    let big: Vec<String> = (0..3)
        .map(|i| format!("[{i}{}]", ",1".repeat(512 * 1024 - 4)))
        .collect();
    append_batches(&mut stub, "big", &big).await;
    let read = replay_all(&mut stub, "big", true).await;
    assert_eq!(
        read,
        (1..=3)
            .map(|s| (s, Some(big[s as usize - 1].clone().into_bytes())))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_data_directory_removed_under_the_server_stops_acknowledgements() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let server = TestServer::start_with(Config::with_data_dir(&data_dir)).await;
    let client = client_without_retries(&server.url()).await;
    for i in 1..=4u64 {
        assert_eq!(client.append("j", &i).await.unwrap(), i);
    }
    std::fs::remove_dir_all(&data_dir).unwrap();

    // Not acknowledged into a file that no longer exists, and not served as an empty
    // journal: UNAVAILABLE, saying what happened, for every RPC.
    let err = client.append("j", &5).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("was removed or replaced"), "{err}");
    let err = client.replay::<u64>("j", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    let err = client.append("other", &1).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");

    // Another server may take the directory anew; this one keeps refusing, instead of
    // writing beside it.
    let second = TestServer::start_with(Config::with_data_dir(&data_dir)).await;
    assert_eq!(second.client().await.append("j", &1).await.unwrap(), 1);
    let err = client.append("j", &6).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert_eq!(second.client().await.info("j").await.unwrap().last_seq, 1);
}
