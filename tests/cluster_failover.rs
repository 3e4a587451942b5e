//! Failover, proven: 16 retrying producers and a follower through ministore-server on a
//! 3-node JetStream cluster, while the journal's stream leader is killed with SIGKILL, and
//! after the cluster recovered, another node. Every acknowledged record is read back
//! exactly once in order, the follower delivers them all with no gap and no duplicate,
//! and appends resume after each election.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ministore_client::{AppendOptions, Client};
use ministore_server::backend::jetstream::stream_name;
use ministore_tests::cluster::NatsCluster;
use ministore_tests::server::TestServer;
use tokio::sync::Mutex;
use tokio_stream::StreamExt;

const PRODUCERS: usize = 16;
const JOURNAL: &str = "failover";

#[derive(Default)]
struct Acked {
    /// (producer, i) -> the seq its ack gave.
    seqs: HashMap<(u64, u64), u64>,
    /// The longest any append waited for its ack, retries included.
    longest_stall: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_two_node_kills_once_each_in_order() {
    let mut cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(cluster.server_config(&tmp.path().join("unused"))).await;
    let client = Client::connect(server.url()).await.unwrap();
    client
        .append(JOURNAL, &serde_json::json!({"p": 99, "i": 0}))
        .await
        .unwrap();
    let stream = stream_name(JOURNAL);

    let acked = Arc::new(Mutex::new(Acked::default()));
    let count = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS as u64 {
        let (client, acked, count, stop) =
            (client.clone(), acked.clone(), count.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let record = serde_json::json!({"p": p, "i": i});
                let started = Instant::now();
                // Retried with the same key until acknowledged: a record is never given up.
                let seq = loop {
                    let options = AppendOptions::new().key(format!("p{p}-{i}"));
                    match client.append_with(JOURNAL, &record, options).await {
                        Ok(appended) => break appended.seq,
                        Err(e) => eprintln!("producer {p}: {e}; retrying"),
                    }
                };
                let mut acked = acked.lock().await;
                acked.longest_stall = acked.longest_stall.max(started.elapsed());
                assert!(acked.seqs.insert((p, i), seq).is_none());
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // The follower publishes how many records it has delivered, and keeps them.
    let (delivered, mut delivered_count) = tokio::sync::watch::channel(0usize);
    let follower = tokio::spawn({
        let client = client.clone();
        async move {
            let mut seen = Vec::new();
            let mut records = client.stream::<serde_json::Value>(JOURNAL, 1, true);
            while let Some(record) = records.next().await {
                seen.push(record.expect("the follower resumes across failures"));
                delivered.send_replace(seen.len());
                if delivered.receiver_count() == 0 {
                    break;
                }
            }
            seen
        }
    });

    // Appends resume: `more` acknowledgements arrive after `since`.
    let resumes = |since: u64, more: u64| {
        let count = count.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while count.load(Ordering::Relaxed) < since + more {
                assert!(Instant::now() < deadline, "appends did not resume");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    resumes(0, 300).await;

    // The cluster's calls block (they poll /jsz): off the runtime the server runs on.
    let (mut cluster, leader) = tokio::task::spawn_blocking(move || {
        let leader = cluster.wait_for_stream_leader(&stream);
        cluster.kill(leader);
        (cluster, leader)
    })
    .await
    .unwrap();
    let stream = stream_name(JOURNAL);
    let at_kill = count.load(Ordering::Relaxed);
    resumes(at_kill, 300).await;
    let mut cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(leader);
        cluster.wait_for_stream_current(&stream);
        cluster
    })
    .await
    .unwrap();
    let stream = stream_name(JOURNAL);
    // Another node this time: the new leader, after the cluster recovered.
    let cluster = tokio::task::spawn_blocking(move || {
        let second = cluster.wait_for_stream_leader(&stream);
        cluster.kill(second);
        cluster
    })
    .await
    .unwrap();
    let at_second = count.load(Ordering::Relaxed);
    resumes(at_second, 300).await;

    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().await);
    let total = acked.seqs.len() as u64 + 1;
    eprintln!(
        "failover: {total} records acknowledged by {PRODUCERS} producers; longest ack stall {:?}",
        acked.longest_stall
    );

    // Every acknowledged record, once, at the seq its ack gave; seqs dense from 1.
    // Read as a user would: UNAVAILABLE (the cluster still settling after the kill) is
    // retried.
    let deadline = Instant::now() + Duration::from_secs(60);
    let replayed: Vec<(u64, serde_json::Value)> = loop {
        match client.replay(JOURNAL, 1).await {
            Ok(records) => break records,
            Err(e) if e.code() == Some(ministore_client::Code::Unavailable) => {
                assert!(Instant::now() < deadline, "Replay still unavailable: {e}");
                eprintln!("replay: {e}; retrying");
            }
            Err(e) => panic!("replay: {e}"),
        }
    };
    let seqs: Vec<u64> = replayed.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "dense and in order"
    );
    let mut by_record = HashMap::new();
    for (seq, value) in &replayed {
        let key = (value["p"].as_u64().unwrap(), value["i"].as_u64().unwrap());
        assert!(
            by_record.insert(key, *seq).is_none(),
            "{key:?} stored twice"
        );
    }
    for (key, seq) in &acked.seqs {
        assert_eq!(
            by_record.get(key),
            Some(seq),
            "acknowledged {key:?} at {seq}"
        );
    }
    assert_eq!(
        replayed.len() as u64,
        total,
        "nothing stored but what was acknowledged"
    );

    // The follower delivered the same records, in the same order, none twice.
    tokio::time::timeout(
        Duration::from_secs(60),
        delivered_count.wait_for(|n| *n as u64 >= total),
    )
    .await
    .expect("the follower delivers every acknowledged record")
    .unwrap();
    drop(delivered_count);
    // One more record ends the follower's loop (it sees no receiver left).
    client
        .append(JOURNAL, &serde_json::json!({"p": 99, "i": 1}))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("the follower ends")
        .unwrap();
    assert_eq!(
        &seen[..replayed.len()],
        &replayed[..],
        "no gap, no duplicate, same order"
    );
    drop(cluster);
}

/// A journal first written while one of three nodes is stopped (as an operator stops it,
/// for an upgrade) is created and written at once: its stream's replicas need a quorum,
/// not every node; and the stopped node catches up when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_first_written_while_a_node_is_stopped_is_created_at_once() {
    let cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(cluster.server_config(&tmp.path().join("unused"))).await;
    let client = server.client().await;
    // The server is up (it checked every node's settings at start) before a node goes.
    client
        .append("before", &serde_json::json!({"n": 0}))
        .await
        .unwrap();

    // The cluster's calls block (they poll /jsz): off the runtime the server runs on.
    let mut cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop(2);
        cluster
    })
    .await
    .unwrap();
    let seq = client
        .append("while-stopped", &serde_json::json!({"n": 1}))
        .await
        .expect("created with two of three nodes");
    assert_eq!(seq, 1);

    let stream = stream_name("while-stopped");
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(2);
        cluster.wait_for_stream_current(&stream);
        cluster
    })
    .await
    .unwrap();
    let replayed = client
        .replay::<serde_json::Value>("while-stopped", 1)
        .await
        .unwrap();
    assert_eq!(replayed, vec![(1, serde_json::json!({"n": 1}))]);
    drop(cluster);
}

/// Health follows the cluster: a ministore-server cut off from every NATS node reports
/// NOT_SERVING (a load balancer sends its clients elsewhere), and SERVING again once it
/// has reconnected, when appends succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_no_nats_node_is_reachable() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(cluster.server_config(&tmp.path().join("unused"))).await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut statuses = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Each change of status, as the health service streams it.
    let mut next_status = async move || {
        let next = tokio::time::timeout(Duration::from_secs(60), statuses.next())
            .await
            .expect("a change of health within 60 s");
        ServingStatus::try_from(next.unwrap().unwrap().status).unwrap()
    };
    assert_eq!(next_status().await, ServingStatus::Serving);

    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        (0..3).for_each(|i| cluster.stop(i));
        cluster
    })
    .await
    .unwrap();
    // Stopping node after node, the server may reconnect to one still up in between: it
    // ends NOT_SERVING once none is.
    while next_status().await != ServingStatus::NotServing {}

    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.restart_stopped();
        cluster
    })
    .await
    .unwrap();
    while next_status().await != ServingStatus::Serving {}
    let client = server.client().await;
    let seq = client
        .append("after-the-outage", &serde_json::json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(seq, 1);
    drop(cluster);
}
