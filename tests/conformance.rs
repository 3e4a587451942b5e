//! One conformance suite, two backends: the service's behaviour on the wire (seqs, errors,
//! idempotency keys, expectations, batches, paging, follow, Info, ListJournals) is checked
//! against the local store and against a 3-node NATS JetStream cluster that this test
//! binary starts on loopback (one cluster shared by its tests; each test its own journals).

use std::sync::atomic::{AtomicUsize, Ordering};

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{
    AppendBatchRequest, AppendRequest, InfoRequest, ListJournalsRequest, Record, ReplayRequest,
    StreamRequest, record, stream_event,
};
use ministore_server::Config;
use ministore_tests::cluster;
use ministore_tests::server::{TestServer, append_payload, payload_request, replay_texts};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

type Stub = JournalClient<Channel>;

/// A server over one backend, and journal names no other test uses.
struct Target {
    server: TestServer,
    prefix: String,
    _tmp: tempfile::TempDir,
}

impl Target {
    async fn local() -> Target {
        let tmp = tempfile::tempdir().unwrap();
        let server = TestServer::start_with(Config::with_data_dir(tmp.path().join("data"))).await;
        Target::new(server, tmp)
    }

    async fn jetstream() -> Target {
        let cluster = cluster::shared();
        let tmp = tempfile::tempdir().unwrap();
        let config = cluster.server_config(&tmp.path().join("unused"));
        Target::new(TestServer::start_with(config).await, tmp)
    }

    fn new(server: TestServer, tmp: tempfile::TempDir) -> Target {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Target {
            server,
            prefix,
            _tmp: tmp,
        }
    }

    fn journal(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    async fn stub(&self) -> Stub {
        self.server.stub().await
    }
}

fn batch_req(journal: &str, jsons: &[&str]) -> AppendBatchRequest {
    AppendBatchRequest {
        journal: journal.into(),
        payloads: jsons.iter().map(|j| j.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn payload_of(record: &Record) -> String {
    match &record.body {
        Some(record::Body::Payload(p)) => String::from_utf8(p.clone()).unwrap(),
        other => panic!("expected a payload, got {other:?}"),
    }
}

async fn appends_get_dense_seqs_and_replay_returns_the_stored_json(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("basic");
    for (i, json) in [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
        .iter()
        .enumerate()
    {
        assert_eq!(
            append_payload(&mut stub, &journal, json).await.unwrap(),
            i as u64 + 1
        );
    }
    let records = replay_texts(&mut stub, &journal).await;
    assert_eq!(
        records,
        vec![
            (1, r#"{"n":1}"#.to_owned()),
            (2, r#"{"n":2}"#.to_owned()),
            (3, r#"{"n":3}"#.to_owned())
        ]
    );
    let page = stub
        .replay(ReplayRequest {
            journal: journal.clone(),
            from_seq: 2,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (page.records.len(), page.next_seq, page.last_seq),
        (1, 3, 3)
    );
    assert!(page.records[0].commit_time.is_some());
}

async fn a_retried_key_is_answered_with_its_seq_and_expectations_are_checked(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("keys");
    let keyed = |json: &str, key: &str, expected: Option<u64>| AppendRequest {
        idempotency_key: key.into(),
        expected_last_seq: expected,
        ..payload_request(&journal, json)
    };
    let first = stub
        .append(keyed("1", "k1", Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.seq, first.duplicate), (1, false));
    let again = stub
        .append(keyed("1", "k1", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.seq, again.duplicate), (1, true));
    // A retried key is answered before its expectation is checked: the retry of an
    // append that expected 0 is still answered after the journal moved on.
    assert_eq!(append_payload(&mut stub, &journal, "2").await.unwrap(), 2);
    let retry = stub
        .append(keyed("1", "k1", Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retry.seq, retry.duplicate), (1, true));

    let reused = stub
        .append(keyed("\"other\"", "k1", None))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");

    let stale = stub.append(keyed("3", "k3", Some(1))).await.unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    assert_eq!(
        stale
            .metadata()
            .get("ministore-last-seq")
            .unwrap()
            .to_str()
            .unwrap(),
        "2"
    );
    let ok = stub
        .append(keyed("3", "k3", Some(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ok.seq, ok.duplicate), (3, false));
    assert_eq!(replay_texts(&mut stub, &journal).await.len(), 3);
}

async fn a_batch_is_atomic_and_a_retried_batch_gets_its_original_seqs(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("batches");
    assert_eq!(
        append_payload(&mut stub, &journal, r#""first""#)
            .await
            .unwrap(),
        1
    );
    let keyed = AppendBatchRequest {
        idempotency_key: "batch-1".into(),
        ..batch_req(&journal, &["1", "2", "3"])
    };
    let first = stub.append_batch(keyed.clone()).await.unwrap().into_inner();
    assert_eq!(
        (first.first_seq, first.last_seq, first.duplicate),
        (2, 4, false)
    );
    let again = stub.append_batch(keyed).await.unwrap().into_inner();
    assert_eq!(
        (again.first_seq, again.last_seq, again.duplicate),
        (2, 4, true)
    );

    let stale = AppendBatchRequest {
        expected_last_seq: Some(1),
        ..batch_req(&journal, &["5", "6"])
    };
    let err = stub.append_batch(stale).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let fresh = AppendBatchRequest {
        expected_last_seq: Some(4),
        ..batch_req(&journal, &["5", "6"])
    };
    let ok = stub.append_batch(fresh).await.unwrap().into_inner();
    assert_eq!((ok.first_seq, ok.last_seq), (5, 6));

    // A batch with one bad record writes none of them.
    let err = stub
        .append_batch(batch_req(&journal, &["7", "{not json"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let seqs: Vec<u64> = replay_texts(&mut stub, &journal)
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
}

async fn bad_requests_get_the_same_codes(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("errors");
    let err = append_payload(&mut stub, &journal, "{not json")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = append_payload(&mut stub, "../escape", "1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let big = format!("\"{}\"", "x".repeat(1024 * 1024 + 1));
    let err = append_payload(&mut stub, &journal, &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    let unknown = target.journal("never-written");
    let replay = |from_seq| ReplayRequest {
        journal: unknown.clone(),
        from_seq,
        ..Default::default()
    };
    assert_eq!(
        stub.replay(replay(0)).await.unwrap_err().code(),
        Code::NotFound
    );
    let info = InfoRequest {
        journal: unknown.clone(),
    };
    assert_eq!(stub.info(info).await.unwrap_err().code(), Code::NotFound);

    assert_eq!(append_payload(&mut stub, &journal, "1").await.unwrap(), 1);
    let past = ReplayRequest {
        journal: journal.clone(),
        from_seq: 3,
        ..Default::default()
    };
    assert_eq!(
        stub.replay(past).await.unwrap_err().code(),
        Code::OutOfRange
    );
    let one_past = ReplayRequest {
        journal: journal.clone(),
        from_seq: 2,
        ..Default::default()
    };
    let page = stub.replay(one_past).await.unwrap().into_inner();
    assert!(page.records.is_empty());
    assert_eq!((page.next_seq, page.last_seq), (2, 1));
}

async fn replay_pages_continue_at_next_seq(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("pages");
    let jsons: Vec<String> = (1..=25).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = jsons.iter().map(String::as_str).collect();
    stub.append_batch(batch_req(&journal, &refs)).await.unwrap();
    let mut seqs = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = stub
            .replay(ReplayRequest {
                journal: journal.clone(),
                from_seq,
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.records.len() <= 10);
        if page.records.is_empty() {
            break;
        }
        seqs.extend(page.records.iter().map(|r| r.seq));
        from_seq = page.next_seq;
    }
    assert_eq!(seqs, (1..=25).collect::<Vec<u64>>());
}

async fn a_stream_without_follow_ends_and_a_follower_sees_live_records(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("follow");
    for i in 1..=3 {
        append_payload(&mut stub, &journal, &i.to_string())
            .await
            .unwrap();
    }
    let request = |follow| StreamRequest {
        journal: journal.clone(),
        from_seq: 2,
        follow,
        ..Default::default()
    };
    let all: Vec<_> = stub
        .stream(request(false))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    let seqs: Vec<u64> = all
        .iter()
        .map(|e| match e.as_ref().unwrap().event.as_ref().unwrap() {
            stream_event::Event::Record(r) => r.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![2, 3]);

    let mut events = stub.stream(request(true)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    let mut writer = target.stub().await;
    while let Some(event) = events.next().await {
        match event.unwrap().event.unwrap() {
            stream_event::Event::Record(r) => {
                seen.push(r.seq);
                if r.seq == 5 {
                    break;
                }
            }
            stream_event::Event::CaughtUp(c) => {
                assert_eq!(c.last_seq, seen.last().copied().unwrap_or(0).max(3));
                // Appended after the follower caught up: delivered live.
                append_payload(&mut writer, &journal, "4").await.unwrap();
                append_payload(&mut writer, &journal, "5").await.unwrap();
            }
            stream_event::Event::Heartbeat(_) => {}
        }
    }
    assert_eq!(seen, vec![2, 3, 4, 5]);
}

async fn a_follower_of_a_journal_not_yet_written_sees_its_first_record(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("later");
    let mut events = stub
        .stream(StreamRequest {
            journal: journal.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match events.next().await.unwrap().unwrap().event.unwrap() {
        stream_event::Event::CaughtUp(c) => assert_eq!(c.last_seq, 0),
        other => panic!("{other:?}"),
    }
    let mut writer = target.stub().await;
    append_payload(&mut writer, &journal, r#""hello""#)
        .await
        .unwrap();
    loop {
        match events.next().await.unwrap().unwrap().event.unwrap() {
            stream_event::Event::Record(r) => {
                assert_eq!((r.seq, payload_of(&r)), (1, r#""hello""#.to_owned()));
                break;
            }
            _ => continue,
        }
    }
}

async fn info_and_list_describe_the_journal(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("described");
    stub.append_batch(batch_req(&journal, &["1", "2", "3"]))
        .await
        .unwrap();
    let info = stub
        .info(InfoRequest {
            journal: journal.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.first_seq, info.last_seq), (1, 3));
    let (first, last) = (
        info.first_commit_time.unwrap(),
        info.last_commit_time.unwrap(),
    );
    assert!((first.seconds, first.nanos) <= (last.seconds, last.nanos));

    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = stub
            .list_journals(ListJournalsRequest {
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        for summary in &page.journals {
            if summary.name == journal {
                assert_eq!((summary.first_seq, summary.last_seq), (1, 3));
                assert!(summary.size_bytes > 0);
            }
            names.push(summary.name.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(names.contains(&journal), "{names:?}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
}

async fn concurrent_appends_get_unique_dense_seqs(target: Target) {
    let journal = target.journal("concurrent");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut stub = target.stub().await;
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                seqs.push(
                    append_payload(&mut stub, &journal, &format!("[{t},{i}]"))
                        .await
                        .unwrap(),
                );
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=80).collect::<Vec<u64>>());
    let mut stub = target.stub().await;
    assert_eq!(replay_texts(&mut stub, &journal).await.len(), 80);
}

async fn an_append_stream_is_acked_in_order_with_keys_and_expectations(target: Target) {
    let mut stub = target.stub().await;
    let journal = target.journal("append-stream");
    let keyed = |json: &str, key: &str| AppendRequest {
        idempotency_key: key.into(),
        ..payload_request(&journal, json)
    };
    let mut sent: Vec<AppendRequest> = (1..=50)
        .map(|i| payload_request(&journal, &i.to_string()))
        .collect();
    sent.push(keyed("51", "k"));
    sent.push(keyed("51", "k"));
    sent.push(AppendRequest {
        expected_last_seq: Some(7),
        ..payload_request(&journal, "52")
    });
    sent.push(payload_request(&journal, "{oops"));
    sent.push(payload_request(&journal, "52"));
    let mut acks = stub
        .append_stream(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        got.push(ack);
    }
    assert_eq!(got.len(), 55);
    for (i, ack) in got.iter().enumerate().take(50) {
        assert_eq!(
            (ack.index, ack.seq, &ack.error),
            (i as u64, i as u64 + 1, &None)
        );
    }
    assert_eq!((got[50].seq, got[50].duplicate), (51, false));
    assert_eq!((got[51].seq, got[51].duplicate), (51, true));
    let stale = got[52].error.as_ref().expect("a stale expectation fails");
    assert_eq!((stale.code, stale.last_seq), (Code::Aborted as i32, 51));
    assert_eq!(
        got[53].error.as_ref().unwrap().code,
        Code::InvalidArgument as i32
    );
    assert_eq!((got[54].seq, &got[54].error), (52, &None));
    assert_eq!(replay_texts(&mut stub, &journal).await.len(), 52);
}

/// A journal's first records, sent on AppendStreams to journals created at that moment,
/// are acked in the order sent from the first one: nothing sent early is stored after
/// what was sent later while the new journal settles.
async fn new_journals_ack_an_append_stream_in_order_from_the_first_record(target: Target) {
    let mut streams = Vec::new();
    for j in 0..12 {
        let mut stub = target.stub().await;
        let journal = target.journal(&format!("fresh-{j}"));
        streams.push(tokio::spawn(async move {
            let sent: Vec<AppendRequest> = (1..=40)
                .map(|i| payload_request(&journal, &i.to_string()))
                .collect();
            let mut acks = stub
                .append_stream(tokio_stream::iter(sent))
                .await
                .unwrap()
                .into_inner();
            let mut seqs = Vec::new();
            while let Some(ack) = acks.message().await.unwrap() {
                assert_eq!(ack.error, None, "{journal}");
                seqs.push(ack.seq);
            }
            let stored = replay_texts(&mut stub, &journal).await;
            (journal, seqs, stored)
        }));
    }
    let expected: Vec<(u64, String)> = (1..=40).map(|i| (i, i.to_string())).collect();
    for stream in streams {
        let (journal, seqs, stored) = stream.await.unwrap();
        assert_eq!(seqs, (1..=40).collect::<Vec<u64>>(), "{journal}");
        assert_eq!(stored, expected, "{journal}");
    }
}

/// Each behaviour above, once per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Target::local().await).await
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Target::jetstream().await).await
                }
            )*
        }
    };
}

conformance!(
    appends_get_dense_seqs_and_replay_returns_the_stored_json,
    a_retried_key_is_answered_with_its_seq_and_expectations_are_checked,
    a_batch_is_atomic_and_a_retried_batch_gets_its_original_seqs,
    bad_requests_get_the_same_codes,
    replay_pages_continue_at_next_seq,
    a_stream_without_follow_ends_and_a_follower_sees_live_records,
    a_follower_of_a_journal_not_yet_written_sees_its_first_record,
    info_and_list_describe_the_journal,
    concurrent_appends_get_unique_dense_seqs,
    an_append_stream_is_acked_in_order_with_keys_and_expectations,
    new_journals_ack_an_append_stream_in_order_from_the_first_record,
);

/// Several stateless ministore-servers can serve the same journals: a follower on one sees,
/// live, what is appended through the other, even to a journal that did not exist when it
/// started following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_front_of_one_cluster_serve_the_same_journal() {
    let (one, two) = (Target::jetstream().await, Target::jetstream().await);
    let journal = one.journal("shared");
    let mut follower = two.stub().await;
    let mut events = follower
        .stream(StreamRequest {
            journal: journal.clone(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut writer = one.stub().await;
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        match event.unwrap().event.unwrap() {
            stream_event::Event::CaughtUp(c) if c.last_seq == 0 => {
                for i in 1..=3 {
                    let seq =
                        append_payload(&mut writer, &journal, &format!("{{\"via\":1,\"i\":{i}}}"))
                            .await
                            .unwrap();
                    assert_eq!(seq, i);
                }
            }
            stream_event::Event::Record(r) => {
                seen.push((r.seq, payload_of(&r)));
                if seen.len() == 3 {
                    break;
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        (1..=3)
            .map(|i| (i, format!("{{\"via\":1,\"i\":{i}}}")))
            .collect::<Vec<_>>()
    );
    // And the second server appends after them, on the same seqs.
    let mut second_writer = two.stub().await;
    assert_eq!(
        append_payload(&mut second_writer, &journal, "4")
            .await
            .unwrap(),
        4
    );
}

/// A NATS stream another application made under a journal's name (on its own subjects),
/// or one that takes a journal's subject under another name, is refused with
/// FAILED_PRECONDITION naming it and saying what to do, for appends and reads alike, and
/// left as it was; new journals beside it, appended to at the same moment, are created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_stream_under_a_journals_name_is_refused_and_left_as_it_was() {
    use async_nats::jetstream::stream;
    use ministore_server::backend::jetstream::{stream_name, subject};
    let target = Target::jetstream().await;
    let cluster = cluster::shared();
    let url = cluster.url();
    let first = url.trim_start_matches("nats://").split(',').next().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(first).await.unwrap());
    let named = target.journal("named-by-another-app");
    let their_subject = format!("another-app.{}", target.prefix);
    js.create_stream(stream::Config {
        name: stream_name(&named),
        subjects: vec![their_subject.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let routed = target.journal("routed-to-another-app");
    let their_stream = format!("another_app_{}", stream_name(&routed));
    js.create_stream(stream::Config {
        name: their_stream.clone(),
        subjects: vec![subject(&routed)],
        ..Default::default()
    })
    .await
    .unwrap();

    let mut stubs = [
        target.stub().await,
        target.stub().await,
        target.stub().await,
    ];
    let [one, two, three] = &mut stubs;
    let fresh = target.journal("fresh");
    let (named_append, routed_append, fresh_append) = tokio::join!(
        append_payload(one, &named, "1"),
        append_payload(two, &routed, "1"),
        append_payload(three, &fresh, "1"),
    );
    let refused = named_append.expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    for part in [
        stream_name(&named).as_str(),
        their_subject.as_str(),
        "Remove or fix that stream, or use another journal name",
    ] {
        assert!(refused.message().contains(part), "{part}: {refused:?}");
    }
    let refused = routed_append.expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    for part in [
        "another stream takes its subject",
        "Remove that stream or change its subjects, or use another journal name",
    ] {
        assert!(refused.message().contains(part), "{part}: {refused:?}");
    }
    assert_eq!(fresh_append.unwrap(), 1);

    let read = one
        .replay(ReplayRequest {
            journal: named.clone(),
            from_seq: 1,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(read.code(), Code::FailedPrecondition, "{read:?}");

    let mut theirs = js.get_stream(stream_name(&named)).await.unwrap();
    let info = theirs.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![their_subject]);
    assert_eq!(info.state.messages, 0);
    let mut theirs = js.get_stream(&their_stream).await.unwrap();
    assert_eq!(theirs.info().await.unwrap().state.messages, 0);
}

/// A cluster that acknowledges before fsync would break the durability promise: with
/// `--nats-monitor`, a server in front of one refuses to start, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_sync_always_is_refused_at_start() {
    let cluster = cluster::shared();
    // A monitoring endpoint that reports JetStream's default, sync every 2 minutes.
    let monitor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitor_url = format!("http://{}", monitor.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = monitor.accept().await {
            let mut request = [0; 1024];
            let _ = socket.read(&mut request).await;
            let body = r#"{"jetstream":{"config":{"sync_interval":120000000000}}}"#;
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("unused"));
    config.backend = cluster.url();
    config.nats_monitor = vec![monitor_url.clone()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = ministore_server::serve(config, listener, std::future::pending()).await;
    let err = served.expect_err("refused to start").to_string();
    assert!(err.contains(&monitor_url), "{err}");
    assert!(err.contains("sync_interval: always"), "{err}");
}

/// A NATS node whose monitoring port does not answer at start (down, as in a rolling
/// restart) does not keep the server from starting and serving while the others answer
/// that they fsync; when no monitoring URL answers, nothing was checked, and it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_that_does_not_answer_is_checked_later_unless_none_answers() {
    let cluster = cluster::shared();
    // A loopback port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let tmp = tempfile::tempdir().unwrap();
    let mut config = cluster.server_config(&tmp.path().join("unused"));
    config.nats_monitor.push(down.clone());
    let target = Target::new(TestServer::start_with(config.clone()).await, tmp);
    let journal = target.journal("one-monitor-down");
    let mut stub = target.stub().await;
    assert_eq!(append_payload(&mut stub, &journal, "1").await.unwrap(), 1);

    config.nats_monitor = vec![down.clone()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = ministore_server::serve(config, listener, std::future::pending()).await;
    let err = served.expect_err("refused to start").to_string();
    assert!(err.contains("no monitoring URL answered"), "{err}");
    assert!(err.contains(&down), "{err}");
}
