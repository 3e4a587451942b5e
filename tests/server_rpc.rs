//! Every RPC of `ministore.v1.Journal` and every error it documents, through the generated
//! stubs against a real server on 127.0.0.1:0.

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{
    AppendBatchRequest, AppendRequest, InfoRequest, Record, RecordFormat, ReplayRequest,
    StreamRequest, append_request, record,
};
use ministore_server::Config;
use ministore_tests::events::Records;
use ministore_tests::server::{TestServer, append_payload, payload_request};
use prost_types::value::Kind;
use tonic::Code;
use tonic::transport::Channel;

type Stub = JournalClient<Channel>;

fn replay_req(journal: &str, from_seq: u64, limit: u32) -> ReplayRequest {
    ReplayRequest {
        journal: journal.into(),
        from_seq,
        limit,
        format: 0,
    }
}

fn payload_of(record: &Record) -> &str {
    match &record.body {
        Some(record::Body::Payload(p)) => std::str::from_utf8(p).unwrap(),
        other => panic!("expected a payload, got {other:?}"),
    }
}

async fn replay_all(stub: &mut Stub, journal: &str) -> Vec<(u64, String)> {
    let reply = stub
        .replay(replay_req(journal, 0, 0))
        .await
        .unwrap()
        .into_inner();
    reply
        .records
        .iter()
        .map(|r| (r.seq, payload_of(r).to_owned()))
        .collect()
}

fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn object_value(fields: &[(&str, prost_types::Value)]) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::StructValue(prost_types::Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })),
    }
}

#[tokio::test]
async fn append_returns_contiguous_seqs_and_replay_returns_the_stored_json() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    assert_eq!(
        append_payload(&mut stub, "orders", r#"{"id":1}"#)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        append_payload(&mut stub, "orders", r#"{"id":2}"#)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        append_payload(&mut stub, "other", r#"[]"#).await.unwrap(),
        1
    );
    assert_eq!(
        replay_all(&mut stub, "orders").await,
        vec![(1, r#"{"id":1}"#.into()), (2, r#"{"id":2}"#.into())]
    );
    // The file on disk is the store's format, one record per line and nothing after the
    // last one, while the journal is open too.
    let file = std::fs::read_to_string(server.data_dir.join("orders/journal.jsonl")).unwrap();
    assert!(file.ends_with("{\"id\":1}\n{\"id\":2}\n"), "{file}");
}

#[tokio::test]
async fn a_retried_key_is_answered_not_written_and_expectations_are_checked() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let keyed = |json: &str, key: &str, expected: Option<u64>| AppendRequest {
        idempotency_key: key.into(),
        expected_last_seq: expected,
        ..payload_request("p", json)
    };
    let first = stub
        .append(keyed("1", "k1", Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.seq, first.duplicate), (1, false));
    // The retry of a written request succeeds with its seq, its expectation now stale.
    let retry = stub
        .append(keyed("1", "k1", Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.seq, retry.duplicate), (1, true));

    let reused = stub.append(keyed("2", "k1", None)).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().contains("seq 1"), "{}", reused.message());

    let stale = stub.append(keyed("2", "k2", Some(0))).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert!(stale.message().contains("it is 1"), "{}", stale.message());
    let trailer = stale.metadata().get("ministore-last-seq").unwrap();
    assert_eq!(trailer.to_str().unwrap(), "1");

    let batch = AppendBatchRequest {
        journal: "p".into(),
        payloads: vec![b"2".to_vec(), b"3".to_vec()],
        idempotency_key: "b1".into(),
        expected_last_seq: Some(1),
        ..Default::default()
    };
    let written = stub.append_batch(batch.clone()).await.unwrap().into_inner();
    assert_eq!(
        (written.first_seq, written.last_seq, written.duplicate),
        (2, 3, false)
    );
    let again = stub.append_batch(batch).await.unwrap().into_inner();
    assert_eq!(
        (again.first_seq, again.last_seq, again.duplicate),
        (2, 3, true)
    );

    let long = stub
        .append(keyed("4", &"k".repeat(129), None))
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(long.message().contains("128 bytes"), "{}", long.message());
    let stored: Vec<String> = replay_all(&mut stub, "p")
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(stored, ["1", "2", "3"]);
}

#[tokio::test]
async fn replayed_records_carry_commit_times_that_never_go_back() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let before = std::time::SystemTime::now();
    for i in 0..5 {
        append_payload(&mut stub, "t", &i.to_string())
            .await
            .unwrap();
    }
    let page = stub
        .replay(replay_req("t", 1, 0))
        .await
        .unwrap()
        .into_inner();
    let times: Vec<std::time::SystemTime> = page
        .records
        .iter()
        .map(|r| r.commit_time.unwrap().try_into().unwrap())
        .collect();
    assert_eq!(times.len(), 5);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[0] >= before - std::time::Duration::from_secs(1));
    // Info gives the first and the last record's.
    let info = stub
        .info(InfoRequest {
            journal: "t".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.first_commit_time, page.records[0].commit_time);
    assert_eq!(info.last_commit_time, page.records[4].commit_time);
    assert_eq!(
        info.checksums_from_seq, 1,
        "every record carries its checksum"
    );
}

#[tokio::test]
async fn empty_journal_name_means_default() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    assert_eq!(append_payload(&mut stub, "", "true").await.unwrap(), 1);
    assert_eq!(
        replay_all(&mut stub, "default").await,
        vec![(1, "true".into())]
    );
    assert!(server.data_dir.join("default/journal.jsonl").is_file());
}

#[tokio::test]
async fn whitespace_and_newlines_in_a_payload_are_stored_as_one_line() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let pretty = "{\n  \"user\": \"alice\",\n  \"note\": \"two  spaces\",\n  \"n\": 1.50\n}\n";
    append_payload(&mut stub, "j", pretty).await.unwrap();
    let stored = r#"{"user":"alice","note":"two  spaces","n":1.50}"#;
    assert_eq!(replay_all(&mut stub, "j").await, vec![(1, stored.into())]);
}

#[tokio::test]
async fn a_value_is_stored_as_json_and_can_be_read_back_as_a_value() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let value = object_value(&[
        ("user", string_value("alice")),
        (
            "n",
            prost_types::Value {
                kind: Some(Kind::NumberValue(3.0)),
            },
        ),
    ]);
    let seq = stub
        .append(AppendRequest {
            journal: "v".into(),
            record: Some(append_request::Record::Value(value.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .seq;
    assert_eq!(seq, 1);
    assert_eq!(
        replay_all(&mut stub, "v").await,
        vec![(1, r#"{"n":3,"user":"alice"}"#.into())]
    );
    let as_values = stub
        .replay(ReplayRequest {
            format: RecordFormat::Value as i32,
            ..replay_req("v", 1, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(as_values.records[0].body, Some(record::Body::Value(value)));
}

#[tokio::test]
async fn append_batch_is_atomic_and_returns_its_range() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    append_payload(&mut stub, "b", "0").await.unwrap();
    let reply = stub
        .append_batch(AppendBatchRequest {
            journal: "b".into(),
            payloads: vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()],
            values: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.first_seq, reply.last_seq), (2, 4));

    // One bad record refuses the whole batch, naming it; nothing is appended.
    let err = stub
        .append_batch(AppendBatchRequest {
            journal: "b".into(),
            payloads: vec![b"5".to_vec(), b"{oops".to_vec()],
            values: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("record 1 of the batch"),
        "{}",
        err.message()
    );
    assert_eq!(replay_all(&mut stub, "b").await.len(), 4);

    let both = stub
        .append_batch(AppendBatchRequest {
            journal: "b".into(),
            payloads: vec![b"1".to_vec()],
            values: vec![string_value("x")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    let empty = stub
        .append_batch(AppendBatchRequest {
            journal: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn invalid_payloads_are_invalid_argument_with_the_parse_error() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    for (payload, expect) in [
        (&b"{\"a\": }"[..], "line 1 column 7"),
        (b"", "EOF while parsing"),
        (b"1 2", "trailing characters"),
        (b"\"\xff\xfe\"", "invalid unicode"),
        (b"\xff", "expected value"),
    ] {
        let err = stub
            .append(AppendRequest {
                journal: "bad".into(),
                record: Some(append_request::Record::Payload(payload.to_vec())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{payload:?}");
        assert!(
            err.message().contains("not valid JSON") && err.message().contains(expect),
            "{payload:?}: {}",
            err.message()
        );
    }
    let missing = stub
        .append(AppendRequest {
            journal: "bad".into(),
            record: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("set `payload`"));
    // Refused appends created nothing, and the next good one is seq 1.
    assert_eq!(append_payload(&mut stub, "bad", "{}").await.unwrap(), 1);
}

#[tokio::test]
async fn oversize_payloads_are_resource_exhausted_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.max_payload_bytes = 1000;
    let server = TestServer::start_with(config).await;
    let mut stub = server.stub().await;
    append_payload(&mut stub, "big", "1").await.unwrap();
    let big = format!("\"{}\"", "x".repeat(1000));
    let err = append_payload(&mut stub, "big", &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-payload-bytes"),
        "{}",
        err.message()
    );
    let fits = format!("\"{}\"", "x".repeat(998));
    assert_eq!(append_payload(&mut stub, "big", &fits).await.unwrap(), 2);
}

#[tokio::test]
async fn hostile_journal_names_are_refused_before_touching_the_disk() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let long = "a".repeat(65);
    for name in [
        "..",
        "../x",
        "/etc",
        "a/b",
        "a\\b",
        "a\0b",
        ".hidden",
        "caf\u{e9}",
        "\u{2215}x",
        " ",
        long.as_str(),
    ] {
        let err = append_payload(&mut stub, name, "1").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
        assert!(
            err.message().contains("invalid journal name"),
            "{}",
            err.message()
        );
        let err = stub.replay(replay_req(name, 0, 0)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
    }
    let entries: Vec<_> = std::fs::read_dir(&server.data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries, vec![".ministore.lock".to_string()]);
}

#[tokio::test]
async fn reading_an_unknown_journal_is_not_found_and_creates_nothing() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let err = stub.replay(replay_req("nope", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("created by its first Append"));
    let err = stub
        .stream(StreamRequest {
            heartbeat_seconds: 0,
            journal: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = stub
        .info(InfoRequest {
            journal: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(!server.data_dir.join("nope").exists());
}

#[tokio::test]
async fn replay_pages_are_bounded_and_next_seq_continues() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let payloads: Vec<Vec<u8>> = (1..=2500).map(|i| i.to_string().into_bytes()).collect();
    stub.append_batch(AppendBatchRequest {
        journal: "p".into(),
        payloads,
        values: vec![],
        ..Default::default()
    })
    .await
    .unwrap();

    // limit 0 is the default page of 1000.
    let page = stub
        .replay(replay_req("p", 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 1000);
    assert_eq!((page.next_seq, page.last_seq), (1001, 2500));

    // Paging with next_seq visits every record once, in order.
    let mut seen = Vec::new();
    let mut next = 1;
    loop {
        let page = stub
            .replay(replay_req("p", next, 700))
            .await
            .unwrap()
            .into_inner();
        if page.records.is_empty() {
            break;
        }
        assert!(page.records.len() <= 700);
        seen.extend(page.records.iter().map(|r| r.seq));
        next = page.next_seq;
    }
    assert_eq!(seen, (1..=2500).collect::<Vec<_>>());
    assert_eq!(next, 2501);

    let err = stub.replay(replay_req("p", 1, 10_001)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("10000"), "{}", err.message());
    let max = stub
        .replay(replay_req("p", 1, 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(max.records.len(), 2500);
}

#[tokio::test]
async fn from_seq_past_the_end_is_out_of_range_and_one_past_is_an_empty_page() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    for i in 0..3 {
        append_payload(&mut stub, "e", &i.to_string())
            .await
            .unwrap();
    }
    let page = stub
        .replay(replay_req("e", 4, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(page.records.is_empty());
    assert_eq!((page.next_seq, page.last_seq), (4, 3));
    let err = stub.replay(replay_req("e", 5, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("at most 4"), "{}", err.message());
    let err = stub
        .stream(StreamRequest {
            heartbeat_seconds: 0,
            journal: "e".into(),
            from_seq: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
}

#[tokio::test]
async fn from_seq_before_the_oldest_retained_starts_at_the_oldest() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.max_bytes_per_segment = 200;
    config.max_segments = 2;
    let server = TestServer::start_with(config).await;
    let mut stub = server.stub().await;
    for i in 1..=100 {
        append_payload(&mut stub, "r", &format!("{{\"i\":{i}}}"))
            .await
            .unwrap();
    }
    let info = stub
        .info(InfoRequest {
            journal: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.first_seq > 1,
        "retention should have deleted old segments"
    );
    assert_eq!(info.last_seq, 100);
    assert_eq!(info.segments, 2);
    let page = stub
        .replay(replay_req("r", 1, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records[0].seq, info.first_seq);
    assert_eq!(page.records.last().unwrap().seq, 100);
    assert_eq!(
        payload_of(&page.records[0]),
        format!("{{\"i\":{}}}", info.first_seq)
    );
}

#[tokio::test]
async fn stream_without_follow_returns_everything_then_ends() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    for i in 1..=600 {
        append_payload(&mut stub, "s", &i.to_string())
            .await
            .unwrap();
    }
    let mut stream = stub
        .stream(StreamRequest {
            heartbeat_seconds: 0,
            journal: "s".into(),
            from_seq: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(record) = stream.record().await.unwrap() {
        assert_eq!(payload_of(&record), record.seq.to_string());
        seqs.push(record.seq);
    }
    assert_eq!(seqs, (100..=600).collect::<Vec<_>>());
}

#[tokio::test]
async fn stream_with_follow_delivers_records_appended_after_it_started() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    append_payload(&mut stub, "f", "\"before\"").await.unwrap();
    let mut stream = stub
        .stream(StreamRequest {
            heartbeat_seconds: 0,
            journal: "f".into(),
            from_seq: 1,
            follow: true,
            format: RecordFormat::Value as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.record().await.unwrap().unwrap();
    assert_eq!(
        (first.seq, first.body),
        (1, Some(record::Body::Value(string_value("before"))))
    );
    // The stream is open and caught up; these are appended after it started.
    let mut writer = server.stub().await;
    for i in 0..50 {
        append_payload(&mut writer, "f", &format!("\"after {i}\""))
            .await
            .unwrap();
    }
    for i in 0..50u64 {
        let record = stream.record().await.unwrap().unwrap();
        assert_eq!(record.seq, 2 + i);
        assert_eq!(
            record.body,
            Some(record::Body::Value(string_value(&format!("after {i}"))))
        );
    }
}

#[tokio::test]
async fn a_following_stream_ends_with_unavailable_at_shutdown() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    append_payload(&mut stub, "x", "1").await.unwrap();
    let mut stream = stub
        .stream(StreamRequest {
            heartbeat_seconds: 0,
            journal: "x".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.record().await.unwrap().unwrap().seq, 1);
    let stopping = tokio::spawn(server.stop());
    let err = stream.record().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("shutting down"), "{}", err.message());
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn concurrent_appends_get_unique_contiguous_seqs() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut stub = server.stub().await;
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let seq = append_payload(&mut stub, "c", &format!("{{\"t\":{t},\"i\":{i}}}"))
                    .await
                    .unwrap();
                seqs.push((seq, format!("{{\"t\":{t},\"i\":{i}}}")));
            }
            seqs
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked.sort();
    assert_eq!(
        acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=800).collect::<Vec<_>>()
    );
    // Each acknowledged seq holds exactly the record it was acknowledged for.
    let mut stub = server.stub().await;
    assert_eq!(replay_all(&mut stub, "c").await, acked);
}

#[tokio::test]
async fn a_restart_keeps_every_record_and_continues_the_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::with_data_dir(tmp.path());
    let server = TestServer::start_with(config.clone()).await;
    let mut stub = server.stub().await;
    for i in 1..=10 {
        append_payload(&mut stub, "keep", &i.to_string())
            .await
            .unwrap();
    }
    drop(stub);
    server.stop().await.unwrap();

    let server = TestServer::start_with(config).await;
    let mut stub = server.stub().await;
    assert_eq!(append_payload(&mut stub, "keep", "11").await.unwrap(), 11);
    let all = replay_all(&mut stub, "keep").await;
    assert_eq!(
        all,
        (1..=11).map(|i| (i, i.to_string())).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_journal_written_by_the_store_library_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lib/journal.jsonl");
    let mut store = ministore::MiniStore::open(&path).await.unwrap();
    store.append_batch(&["a", "b"]).await.unwrap();
    drop(store);
    let server = TestServer::start_with(Config::with_data_dir(tmp.path())).await;
    let mut stub = server.stub().await;
    assert_eq!(
        replay_all(&mut stub, "lib").await,
        vec![(1, "\"a\"".into()), (2, "\"b\"".into())]
    );
    assert_eq!(append_payload(&mut stub, "lib", "\"c\"").await.unwrap(), 3);
}

#[tokio::test]
async fn a_corrupt_segment_is_data_loss_and_other_journals_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    let body = "// MINISTORE JOURNAL v0.1.4 first_seq=1\n{\"a\":1}\nnot json\n{\"a\":3}\n";
    std::fs::write(dir.join("journal.jsonl"), body).unwrap();
    let server = TestServer::start_with(Config::with_data_dir(tmp.path())).await;
    let mut stub = server.stub().await;
    let err = append_payload(&mut stub, "broken", "1").await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert!(
        err.message().contains("journal.jsonl:3"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("move the damaged file"),
        "{}",
        err.message()
    );
    let err = stub.replay(replay_req("broken", 0, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    // Untouched, and the server still serves the rest.
    assert_eq!(
        std::fs::read_to_string(dir.join("journal.jsonl")).unwrap(),
        body
    );
    assert_eq!(append_payload(&mut stub, "fine", "1").await.unwrap(), 1);
}

#[tokio::test]
async fn a_foreign_file_in_a_journal_directory_is_failed_precondition() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("notes")).unwrap();
    std::fs::write(tmp.path().join("notes/journal.jsonl"), "my notes\n").unwrap();
    let server = TestServer::start_with(Config::with_data_dir(tmp.path())).await;
    let mut stub = server.stub().await;
    let err = append_payload(&mut stub, "notes", "1").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("is not a ministore journal"),
        "{}",
        err.message()
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("notes/journal.jsonl")).unwrap(),
        "my notes\n"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let server = TestServer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ministore_server::serve(
        Config::with_data_dir(&server.data_dir),
        listener,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("in use by another ministore-server"),
        "{err}"
    );
}
