//! Following streams say where they are: a follower may start before its journal exists,
//! says `caught_up` once per catch-up, sends heartbeats while idle with the journal's last
//! seq, and learns where to resume when retention overtakes it.

use std::time::Duration;

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{
    CaughtUp, Heartbeat, InfoRequest, ReplayRequest, StreamEvent, StreamRequest, stream_event,
};
use ministore_server::Config;
use ministore_tests::server::TestServer;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

fn follow(journal: &str, from_seq: u64, heartbeat_seconds: u32) -> StreamRequest {
    StreamRequest {
        journal: journal.into(),
        from_seq,
        follow: true,
        format: 0,
        heartbeat_seconds,
    }
}

/// What a stream event is, in a form easy to compare.
#[derive(Debug, PartialEq)]
enum Seen {
    Record(u64),
    CaughtUp(u64),
    Heartbeat(u64),
}

/// The next event, which must come within 10 s.
async fn next(events: &mut Streaming<StreamEvent>) -> Seen {
    let event = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("no event within 10 s")
        .expect("the stream failed")
        .expect("the stream ended");
    match event.event.expect("an event") {
        stream_event::Event::Record(r) => Seen::Record(r.seq),
        stream_event::Event::CaughtUp(CaughtUp { last_seq }) => Seen::CaughtUp(last_seq),
        stream_event::Event::Heartbeat(Heartbeat { last_seq }) => Seen::Heartbeat(last_seq),
    }
}

async fn not_found(stub: &mut JournalClient<Channel>, journal: &str) {
    let mut once = follow(journal, 0, 0);
    once.follow = false;
    assert_eq!(stub.stream(once).await.unwrap_err().code(), Code::NotFound);
    let replay = ReplayRequest {
        journal: journal.into(),
        ..Default::default()
    };
    assert_eq!(
        stub.replay(replay).await.unwrap_err().code(),
        Code::NotFound
    );
    let info = InfoRequest {
        journal: journal.into(),
    };
    assert_eq!(stub.info(info).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_follower_started_before_its_journal_exists_receives_its_first_record() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let mut events = stub
        .stream(follow("later", 0, 0))
        .await
        .unwrap()
        .into_inner();
    // Nothing to deliver: caught up with a journal of no records.
    assert_eq!(next(&mut events).await, Seen::CaughtUp(0));
    // Other journals opening do not disturb it; reading the journal without following is
    // still NOT_FOUND, and creates nothing.
    let client = server.client().await;
    assert_eq!(client.append("other", &1).await.unwrap(), 1);
    not_found(&mut stub, "later").await;

    assert_eq!(client.append("later", &"first").await.unwrap(), 1);
    assert_eq!(next(&mut events).await, Seen::Record(1));
    assert_eq!(client.append("later", &"second").await.unwrap(), 2);
    assert_eq!(next(&mut events).await, Seen::Record(2));
    // A follower that asks for a position past the start of a missing journal is refused.
    let err = stub.stream(follow("missing", 5, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn caught_up_comes_once_per_catch_up_and_heartbeats_carry_the_last_seq() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for i in 1..=3u64 {
        client.append("j", &i).await.unwrap();
    }
    let mut stub = server.stub().await;
    let mut events = stub.stream(follow("j", 1, 1)).await.unwrap().into_inner();
    for seq in 1..=3 {
        assert_eq!(next(&mut events).await, Seen::Record(seq));
    }
    assert_eq!(next(&mut events).await, Seen::CaughtUp(3));
    // Live records, delivered as they come: no new catch-up for them.
    client.append("j", &4u64).await.unwrap();
    assert_eq!(next(&mut events).await, Seen::Record(4));
    // Idle: heartbeats (every second here), with where the journal is.
    assert_eq!(next(&mut events).await, Seen::Heartbeat(4));
    assert_eq!(next(&mut events).await, Seen::Heartbeat(4));

    // A burst larger than one read falls behind, then catches up once.
    let burst: Vec<String> = (0..3000).map(|i| format!("{i:0>100}")).collect();
    let range = client.append_batch("j", &burst).await.unwrap();
    let mut seen = Vec::new();
    loop {
        match next(&mut events).await {
            Seen::Heartbeat(_) => continue,
            Seen::CaughtUp(last) => {
                assert_eq!(last, *range.end());
                break;
            }
            other => seen.push(other),
        }
    }
    let expected: Vec<Seen> = range.clone().map(Seen::Record).collect();
    assert_eq!(
        seen, expected,
        "every record of the burst, in order, then caught up once"
    );
    assert_eq!(next(&mut events).await, Seen::Heartbeat(*range.end()));
}

#[tokio::test]
async fn a_follower_overtaken_by_retention_is_out_of_range_with_where_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.max_bytes_per_segment = 64 * 1024;
    config.max_segments = 2;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    client.append("r", &"x".repeat(1000)).await.unwrap();
    let mut stub = server.stub().await;
    let mut events = stub.stream(follow("r", 1, 0)).await.unwrap().into_inner();
    assert_eq!(next(&mut events).await, Seen::Record(1));
    assert_eq!(next(&mut events).await, Seen::CaughtUp(1));
    // 6 MiB appended while the follower does not read: more than HTTP/2 lets the server
    // send ahead of it, and far more than retention keeps (2 x 64 KiB).
    let record = "y".repeat(1000);
    for _ in 0..60 {
        client
            .append_batch("r", &vec![record.clone(); 100])
            .await
            .unwrap();
    }
    let first_retained = client.info("r").await.unwrap().first_seq;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the follower ended without an error"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the follower neither read on nor failed within 10 s"),
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let trailer = status
        .metadata()
        .get("ministore-first-seq")
        .expect("the trailer ministore-first-seq");
    // The oldest retained seq when the follower was overtaken (retention may have moved on
    // since, while the appends went on).
    let resume_at: u64 = trailer.to_str().unwrap().parse().unwrap();
    assert!(
        resume_at > 2 && resume_at <= first_retained,
        "{resume_at} vs {first_retained}"
    );
    assert!(
        status.message().contains("deleted by retention"),
        "{status:?}"
    );
    // Resuming there works.
    let mut resumed = stub
        .stream(follow("r", first_retained, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut resumed).await, Seen::Record(first_retained));
}

/// The Rust client's typed events: each record with its commit time, and where the stream
/// is, in order.
#[tokio::test]
async fn the_rust_clients_events_carry_records_with_their_times_and_catch_ups() {
    use ministore_client::Event;
    use tokio_stream::StreamExt;

    let server = TestServer::start().await;
    let client = server.client().await;
    client.append("ev", &"a").await.unwrap();
    client.append("ev", &"b").await.unwrap();
    let mut events = client.events::<String>("ev", 1, true);
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("no event within 10 s")
            .expect("the stream ended")
            .expect("the stream failed")
    };
    let mut times = Vec::new();
    for (want_seq, want) in [(1, "a"), (2, "b")] {
        match next().await {
            Event::Record {
                seq,
                record,
                commit_time,
            } => {
                assert_eq!((seq, record.as_str()), (want_seq, want));
                times.push(commit_time.expect("a commit time"));
            }
            other => panic!("expected record {want_seq}, got {other:?}"),
        }
    }
    assert!(times[0] <= times[1]);
    assert_eq!(next().await, Event::CaughtUp { last_seq: 2 });
    // Live from here: a new record comes as it is committed (no new catch-up: the stream
    // never fell behind).
    client.append("ev", &"c").await.unwrap();
    assert!(matches!(next().await, Event::Record { seq: 3, .. }));
}
