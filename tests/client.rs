//! ministore-client against a real in-process server: typed round trips, paging, a live
//! tail that survives a server restart, and errors with the right variant.

use std::time::Duration;

use ministore_client::{Client, ClientBuilder, ClientError};
use ministore_server::Config;
use ministore_tests::server::TestServer;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
    price: f64,
}

fn order(id: u64) -> Order {
    Order {
        id,
        item: format!("item {id}"),
        price: id as f64 / 4.0,
    }
}

#[tokio::test]
async fn typed_records_round_trip() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert_eq!(client.append("orders", &order(1)).await.unwrap(), 1);
    assert_eq!(
        client
            .append_batch("orders", &[order(2), order(3)])
            .await
            .unwrap(),
        2..=3
    );
    let all: Vec<(u64, Order)> = client.replay("orders", 0).await.unwrap();
    assert_eq!(all, vec![(1, order(1)), (2, order(2)), (3, order(3))]);
    let info = client.info("orders").await.unwrap();
    assert_eq!((info.first_seq, info.last_seq, info.segments), (1, 3, 1));
    let from_two: Vec<(u64, Order)> = client
        .stream("orders", 2, false)
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(from_two, vec![(2, order(2)), (3, order(3))]);
}

#[tokio::test]
async fn replay_pages_past_the_server_page_size() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let values: Vec<u64> = (1..=2345).collect();
    client.append_batch("many", &values).await.unwrap();
    let page = client.replay_page::<u64>("many", 1, 0).await.unwrap();
    assert_eq!(page.records.len(), 1000, "the server's default page");
    let all: Vec<(u64, u64)> = client.replay("many", 1).await.unwrap();
    assert_eq!(all, values.iter().map(|v| (*v, *v)).collect::<Vec<_>>());
    let tail: Vec<(u64, u64)> = client.replay("many", 2000).await.unwrap();
    assert_eq!(tail.len(), 346);
}

#[tokio::test]
async fn a_following_stream_resumes_across_a_server_restart_without_gap_or_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Config::with_data_dir(tmp.path());
    let server = TestServer::start_with(config.clone()).await;
    let addr = server.addr;
    let client = ClientBuilder::new(server.url())
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    for i in 1..=10 {
        client.append("live", &order(i)).await.unwrap();
    }
    let mut tail = client.stream::<Order>("live", 1, true);
    for i in 1..=10 {
        assert_eq!(tail.next().await.unwrap().unwrap(), (i, order(i)));
    }

    server.stop().await.unwrap();
    let server = TestServer::start_on(addr, config).await;
    let writer = server.client().await;
    for i in 11..=25 {
        assert_eq!(writer.append("live", &order(i)).await.unwrap(), i);
    }
    for i in 11..=25 {
        let (seq, got) = tokio::time::timeout(Duration::from_secs(20), tail.next())
            .await
            .expect("the stream resumes")
            .unwrap()
            .unwrap();
        assert_eq!((seq, got), (i, order(i)));
    }
}

#[tokio::test]
async fn a_refusal_keeps_its_code_and_message() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let err = client.append("../etc", &1).await.unwrap_err();
    assert!(matches!(err, ClientError::Rpc(_)), "{err:?}");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    assert!(err.to_string().contains("invalid journal name"), "{err}");
    assert!(!err.is_retryable());

    let err = client.replay::<u64>("missing", 0).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));

    let mut stream = client.stream::<u64>("missing", 0, false);
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    assert!(
        stream.next().await.is_none(),
        "a stream ends after an error"
    );
}

#[tokio::test]
async fn a_follower_of_a_journal_not_yet_written_waits_for_its_first_record() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut tail = client.stream::<u64>("soon", 0, true);
    let first = tokio::spawn(async move { tail.next().await });
    // The follower is waiting (its journal does not exist); the first append reaches it.
    assert_eq!(client.append("soon", &42u64).await.unwrap(), 1);
    let got = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the follower got nothing within 10 s")
        .unwrap();
    assert_eq!(got.unwrap().unwrap(), (1, 42));
}

#[tokio::test]
async fn a_record_of_another_type_is_a_decode_error_not_an_outage() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.append("mixed", &order(1)).await.unwrap();
    client.append("mixed", &"not an order").await.unwrap();
    let err = client.replay::<Order>("mixed", 1).await.unwrap_err();
    match &err {
        ClientError::Decode { seq, .. } => assert_eq!(*seq, 2),
        other => panic!("expected Decode, got {other:?}"),
    }
    assert_eq!(err.code(), None);
    let items: Vec<_> = client.stream::<Order>("mixed", 1, false).collect().await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].as_ref().unwrap(), &(1, order(1)));
    assert!(matches!(items[1], Err(ClientError::Decode { seq: 2, .. })));
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = ClientBuilder::new(port.to_string())
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    // One readable line: the address, and the reason down to the operating system's.
    let text = err.to_string();
    assert!(
        text.contains(&port.to_string()) && text.contains("Connection refused"),
        "{text}"
    );
    assert!(Client::connect("not a uri").await.is_err());

    // A lazy client fails its calls the same way, with a code to match on without tonic
    // (once its appends have retried for their budget, short here).
    let lazy = ClientBuilder::new(port.to_string())
        .retry_budget(Duration::from_millis(300))
        .connect_lazy()
        .unwrap();
    let err = lazy.append("j", &1).await.unwrap_err();
    assert!(matches!(err, ClientError::GaveUp { .. }), "{err:?}");
    assert_eq!(
        err.code(),
        Some(ministore_client::Code::Unavailable),
        "{err}"
    );
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot reach ministore-server at {port}"))
            && text.contains("Connection refused"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_a_pending_call_within_the_documented_bound_and_works_once_thawed() {
    use ministore_tests::server::ServerProcess;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &[]);
    // The client as the README shows it: no deadline, no options.
    let client = Client::connect(server.url()).await.unwrap();
    assert_eq!(client.append("frozen", &1).await.unwrap(), 1);

    server.signal("STOP");
    let started = std::time::Instant::now();
    let pending = client.append("frozen", &2);
    let err = tokio::time::timeout(
        ministore_client::FAILS_WITHIN + Duration::from_secs(5),
        pending,
    )
    .await
    .expect("the append to a frozen server was still pending past the documented bound")
    .unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited <= ministore_client::FAILS_WITHIN,
        "failed only after {waited:?}"
    );
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&server.addr.to_string()), "{err}");

    server.signal("CONT");
    // The frozen server may still have taken the append it had buffered: the next one is
    // record 2 or 3, and the client works again without being rebuilt.
    let seq = client.append("frozen", &3).await.unwrap();
    assert!(seq == 2 || seq == 3, "{seq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_call_timeout_bounds_an_append_on_its_journals_stream() {
    use ministore_tests::server::ServerProcess;
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &[]);
    let client = ClientBuilder::new(server.url())
        .timeout(Duration::from_secs(1))
        .retry_budget(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    assert_eq!(client.append("timed", &1).await.unwrap(), 1);

    server.signal("STOP");
    let started = std::time::Instant::now();
    let err = client.append("timed", &2).await.unwrap_err();
    let waited = started.elapsed();
    server.signal("CONT");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("within the client's timeout"),
        "{err}"
    );
}
