//! `AppendStream`, as a producer sees it: acks in order, each request's own error without
//! ending the stream, a bounded read-ahead when the producer does not read its acks,
//! cancellation, and a server stopping with records in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{AppendAck, AppendRequest, InfoRequest, STREAM_WINDOW, append_request};
use ministore_server::Config;
use ministore_server::append_stream::{MAX_UNACKED, MAX_UNACKED_BYTES};
use ministore_tests::server::{ServerProcess, TestServer, payload_request, replay_texts};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

type Stub = JournalClient<Channel>;

fn keyed(journal: &str, json: &str, key: &str) -> AppendRequest {
    AppendRequest {
        idempotency_key: key.into(),
        ..payload_request(journal, json)
    }
}

/// Every record of `journal` as (seq, JSON text).
async fn records(stub: &mut Stub, journal: &str) -> Vec<(u64, String)> {
    replay_texts(stub, journal).await
}

async fn last_seq(stub: &mut Stub, journal: &str) -> u64 {
    stub.info(InfoRequest {
        journal: journal.into(),
    })
    .await
    .map(|r| r.into_inner().last_seq)
    .unwrap_or(0)
}

/// Reads every ack of a stream, and how it ended.
async fn all_acks(
    mut acks: tonic::Streaming<AppendAck>,
) -> (Vec<AppendAck>, Result<(), tonic::Status>) {
    let mut got = Vec::new();
    loop {
        match acks.message().await {
            Ok(Some(ack)) => got.push(ack),
            Ok(None) => return (got, Ok(())),
            Err(status) => return (got, Err(status)),
        }
    }
}

#[tokio::test]
async fn acks_come_in_request_order_with_increasing_seqs_across_two_journals() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    // Two journals interleaved on one stream: acks follow the requests, and each journal's
    // seqs follow the order its requests were sent.
    let sent: Vec<AppendRequest> = (0..3000)
        .map(|i| payload_request(["a", "b"][i % 2], &format!(r#"{{"i":{i}}}"#)))
        .collect();
    let acks = stub
        .append_stream(tokio_stream::iter(sent.clone()))
        .await
        .unwrap()
        .into_inner();
    let (acks, end) = all_acks(acks).await;
    end.expect("a half-closed stream ends with OK once every request is acknowledged");
    assert_eq!(acks.len(), sent.len());
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.index, i as u64);
        assert_eq!(ack.error, None, "request {i}");
        assert_eq!(ack.seq, (i / 2 + 1) as u64, "request {i}");
    }
    for journal in ["a", "b"] {
        let on_disk = records(&mut stub, journal).await;
        let wanted: Vec<(u64, String)> = sent
            .iter()
            .filter(|r| r.journal == journal)
            .enumerate()
            .map(|(n, r)| {
                let Some(append_request::Record::Payload(p)) = &r.record else {
                    unreachable!()
                };
                (n as u64 + 1, String::from_utf8(p.clone()).unwrap())
            })
            .collect();
        assert_eq!(on_disk, wanted, "journal {journal}");
    }
}

#[tokio::test]
async fn a_failed_request_gets_its_error_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    let expecting = |seq| AppendRequest {
        expected_last_seq: Some(seq),
        ..payload_request("j", r#"{"conditional":true}"#)
    };
    let sent = vec![
        keyed("j", r#"{"n":1}"#, "k1"),     // 0: seq 1
        payload_request("j", "{oops"),      // 1: INVALID_ARGUMENT
        payload_request("bad/name", "{}"),  // 2: INVALID_ARGUMENT
        expecting(5),                       // 3: ABORTED, the journal is at 1
        keyed("j", r#"{"n":2}"#, "k1"),     // 4: ALREADY_EXISTS: k1 was seq 1
        keyed("j", r#"{"n":1}"#, "k1"),     // 5: a duplicate of seq 1
        expecting(1),                       // 6: seq 2
        payload_request("j", r#"{"n":3}"#), // 7: seq 3
    ];
    let acks = stub
        .append_stream(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner();
    let (acks, end) = all_acks(acks).await;
    end.expect("request errors do not end the stream");
    let codes: Vec<(u64, i32, u64, bool)> = acks
        .iter()
        .map(|a| {
            let code = a.error.as_ref().map_or(0, |e| e.code);
            (a.index, code, a.seq, a.duplicate)
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (0, 0, 1, false),
            (1, Code::InvalidArgument as i32, 0, false),
            (2, Code::InvalidArgument as i32, 0, false),
            (3, Code::Aborted as i32, 0, false),
            (4, Code::AlreadyExists as i32, 0, false),
            (5, 0, 1, true),
            (6, 0, 2, false),
            (7, 0, 3, false),
        ]
    );
    let error = |i: usize| acks[i].error.clone().unwrap();
    assert!(
        error(1).message.contains("not valid JSON"),
        "{:?}",
        error(1)
    );
    assert!(
        error(2).message.contains("invalid journal name"),
        "{:?}",
        error(2)
    );
    assert_eq!(error(3).last_seq, 1, "ABORTED says where the journal is");
    assert!(error(4).message.contains("seq 1"), "{:?}", error(4));
    assert_eq!(
        records(&mut stub, "j").await,
        vec![
            (1, r#"{"n":1}"#.to_owned()),
            (2, r#"{"conditional":true}"#.to_owned()),
            (3, r#"{"n":3}"#.to_owned()),
        ]
    );
}

/// A producer that sends as fast as it can and never reads its acks: the server reads a
/// bounded number of requests, then the producer waits. Once it reads its acks, it goes
/// on, and every record sent is acknowledged once, in order.
#[tokio::test]
async fn a_producer_that_does_not_read_its_acks_is_held_to_a_bounded_read_ahead() {
    let server = TestServer::start().await;
    let mut stub = server.stub().await;
    // A client with a small HTTP/2 window, so that unread acks stop the server's sending
    // soon (the bound holds whatever the window; a small one keeps the test's numbers small).
    let channel = Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut producer = JournalClient::new(channel);
    let record = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4000));
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = pulled.clone();
    let requests = tokio_stream::iter(0..u64::MAX).map(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        payload_request("flow", &record)
    });
    let mut acks = producer.append_stream(requests).await.unwrap().into_inner();

    // Wait until the journal stops growing: the server has stopped reading.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut seen, mut stable_since) = (0, Instant::now());
    while stable_since.elapsed() < Duration::from_millis(500) {
        assert!(
            Instant::now() < deadline,
            "the journal never stopped growing"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = last_seq(&mut stub, "flow").await;
        if now != seen {
            (seen, stable_since) = (now, Instant::now());
        }
    }
    // What the server read is what it committed: its unacked window, plus the acks it has
    // made that the client has not taken: its own buffer (64), and those encoded on their
    // way (the 1 KiB window's worth and tonic's; 21 in all when this was written).
    let by_bytes = MAX_UNACKED_BYTES / 4000 + 1;
    let bound = MAX_UNACKED.min(by_bytes) as u64 + 64 + 256;
    assert!(seen > 0 && seen <= bound, "committed {seen}, bound {bound}");
    // And the producer was made to wait: it handed over only what fits in the windows
    // between it and the server besides.
    let pulled_now = pulled.load(Ordering::Relaxed);
    assert!(
        pulled_now < seen + 1000,
        "pulled {pulled_now} requests for {seen} committed"
    );

    // Reading the acks lets it go on: every ack in order, the stream still open.
    let mut next = 0;
    while next < seen + 500 {
        let ack = acks.message().await.unwrap().expect("the stream goes on");
        assert_eq!((ack.index, ack.seq, ack.error), (next, next + 1, None));
        next += 1;
    }
}

/// One gRPC message as it goes on the wire: uncompressed, its length, its bytes.
fn grpc_message(request: &AppendRequest) -> bytes::Bytes {
    let body = prost::Message::encode_to_vec(request);
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend((body.len() as u32).to_be_bytes());
    framed.extend(body);
    framed.into()
}

/// Python's grpcio sends each small request in an HTTP/2 DATA frame of its own. The h2
/// crate counts small frames waiting unread against a budget of half the connection
/// window, and closes the connection (GOAWAY ENHANCE_YOUR_CALM, "too_many_data_frames")
/// when it runs out: with hyper's default windows, a producer a few thousand small records
/// ahead of a server that had stopped reading (its read-ahead bound) lost its connection.
/// A producer that sends a whole stream window of the smallest requests, one frame each,
/// before it reads an ack must instead just wait for flow control and get every ack.
#[tokio::test]
async fn a_producer_sending_a_frame_per_small_request_far_ahead_of_its_acks_keeps_its_connection() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Roomy receive windows on this side, so that what is tested is the server's handling.
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{}/ministore.v1.Journal/AppendStream",
        server.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let message = grpc_message(&payload_request("tiny", "1"));
    let count = STREAM_WINDOW as usize / message.len();
    // Each request in a frame of its own, sent as soon as the server's window allows; the
    // stream window holds them all, so they are all sent before any ack is read.
    let sending = tokio::spawn(async move {
        for i in 1..=count {
            send.reserve_capacity(message.len());
            while send.capacity() < message.len() {
                std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .expect("the stream stays open")
                    .expect("the stream stays open");
            }
            send.send_data(message.clone(), i == count).unwrap();
        }
        send
    });
    let send = sending.await.unwrap();

    let response = response.await.expect("the server answers the stream");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buffered = bytes::BytesMut::new();
    let mut acks = 0u64;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("stream failed after {acks} acks: {e}"));
        let _ = body.flow_control().release_capacity(chunk.len());
        buffered.extend_from_slice(&chunk);
        while buffered.len() >= 5 {
            let len = u32::from_be_bytes(buffered[1..5].try_into().unwrap()) as usize;
            if buffered.len() < 5 + len {
                break;
            }
            let frame = buffered.split_to(5 + len);
            let ack: AppendAck = prost::Message::decode(&frame[5..]).unwrap();
            assert_eq!((ack.index, ack.error), (acks, None));
            acks += 1;
        }
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(acks, count as u64, "every request acknowledged once");
    drop((send, body, client));
    connection
        .await
        .unwrap()
        .expect("the connection was never closed by the server");
}

#[tokio::test]
async fn a_cancelled_stream_keeps_every_acknowledged_record_and_frees_its_place() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("data"));
    config.max_streams = 1;
    let server = TestServer::start_with(config).await;
    let mut stub = server.stub().await;
    let (tx, rx) = mpsc::channel(16);
    let mut acks = stub
        .append_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut acked = 0;
    for i in 0..100 {
        tx.send(keyed("c", &format!(r#"{{"i":{i}}}"#), &format!("k{i}")))
            .await
            .unwrap();
        if i < 50 {
            let ack = acks.message().await.unwrap().unwrap();
            assert_eq!(ack.seq, i + 1);
            acked += 1;
        }
    }
    // The producer goes away with 50 requests unanswered.
    drop(acks);
    drop(tx);

    // Its place in --max-streams (1) is given back: a new stream gets in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut acks, tx) = loop {
        let (tx, rx) = mpsc::channel(100);
        match stub.append_stream(ReceiverStream::new(rx)).await {
            Ok(acks) => break (acks.into_inner(), tx),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "the cancelled stream kept its place"
                );
                tokio::task::yield_now().await;
            }
            Err(status) => panic!("{status}"),
        }
    };
    // Retrying every request with its key stores each once: the acknowledged ones, and
    // those the cancelled stream may or may not have committed.
    for i in 0..100 {
        tx.send(keyed("c", &format!(r#"{{"i":{i}}}"#), &format!("k{i}")))
            .await
            .unwrap();
    }
    drop(tx);
    let mut retried = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        assert_eq!(ack.error, None);
        retried.push(ack);
    }
    assert_eq!(retried.len(), 100);
    assert!(retried[..acked].iter().all(|a| a.duplicate), "{retried:?}");
    let on_disk = records(&mut stub, "c").await;
    let wanted: Vec<(u64, String)> = (0..100)
        .map(|i| (i + 1, format!(r#"{{"i":{i}}}"#)))
        .collect();
    assert_eq!(on_disk, wanted);
}

/// The real binary, stopped by SIGTERM while producers stream records: each producer's
/// stream ends with UNAVAILABLE (or, when the process is gone before the producer has read
/// it, a broken connection), and after a restart every acknowledged record is there at its
/// seq, and each producer's records are the first N it sent, in order, each once: nothing
/// acknowledged is lost, nothing is written out of order or twice.
#[tokio::test]
async fn a_server_stopping_with_records_in_flight_keeps_every_ack_and_writes_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let stub = JournalClient::connect(server.url()).await.unwrap();

    let mut producers = Vec::new();
    let started = Arc::new(tokio::sync::Barrier::new(5));
    for p in 0..4u64 {
        let mut stub = stub.clone();
        let started = started.clone();
        producers.push(tokio::spawn(async move {
            let requests = tokio_stream::iter(0..u64::MAX)
                .map(move |i| payload_request("s", &format!(r#"{{"p":{p},"i":{i}}}"#)));
            let mut acks = stub.append_stream(requests).await.unwrap().into_inner();
            let (mut acked, mut waited) = (Vec::new(), false);
            loop {
                match acks.message().await {
                    Ok(Some(ack)) => {
                        if acked.len() >= 100 && !waited {
                            started.wait().await;
                            waited = true;
                        }
                        match ack.error {
                            None => {
                                acked.push((ack.seq, format!(r#"{{"p":{p},"i":{}}}"#, ack.index)))
                            }
                            Some(e) => assert_eq!(e.code, Code::Unavailable as i32, "{e:?}"),
                        }
                    }
                    Ok(None) => panic!("the stream ended with OK while the producer sent"),
                    Err(status) => {
                        // Once the server has exited, a producer still sending can find
                        // its connection broken before it reads the final status.
                        assert!(
                            matches!(status.code(), Code::Unavailable | Code::Unknown),
                            "{status}"
                        );
                        return acked;
                    }
                }
            }
        }));
    }
    // Every producer has 100 acks: stop the server under them.
    started.wait().await;
    server.signal("TERM");
    let mut acked = Vec::new();
    for producer in producers {
        acked.extend(producer.await.unwrap());
    }
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    acked.sort();

    let server = ServerProcess::start(&data, &[]);
    let mut stub = JournalClient::connect(server.url()).await.unwrap();
    let on_disk = records(&mut stub, "s").await;
    for ack in &acked {
        assert!(on_disk.contains(ack), "acknowledged {ack:?} is not on disk");
    }
    for p in 0..4u64 {
        let sent: Vec<serde_json::Value> = on_disk
            .iter()
            .map(|(_, text)| serde_json::from_str::<serde_json::Value>(text).unwrap())
            .filter(|record| record["p"] == p)
            .collect();
        let indexes: Vec<u64> = sent.iter().map(|r| r["i"].as_u64().unwrap()).collect();
        let first_n: Vec<u64> = (0..indexes.len() as u64).collect();
        assert_eq!(indexes, first_n, "producer {p}'s records on disk");
        assert!(indexes.len() >= 100, "producer {p} had 100 acks");
    }
}
