//! The clustered backend beside the local store and beside JetStream itself: durable
//! Append at 1 and 64 callers through ministore-server on a 3-node JetStream cluster
//! started on loopback (the tests' cluster: nats-server 2.15.1, `sync_interval: always`),
//! through ministore-server on the local store, and raw JetStream publish-with-ack of the
//! same record to a stream configured as ministore configures a journal's (R3, file
//! storage): the engine's own ceiling, which ministore should add little to.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ministore_tests::cluster::NatsCluster;

use crate::grpc_bench::{self, BoxError, Load};
use crate::table::{self, Table};

/// Callers of each row.
pub const CALLERS: [usize; 2] = [1, 64];

/// One row per entry of [`CALLERS`]: (callers, local, clustered, raw JetStream).
#[derive(Debug, Clone)]
pub struct ClusterResults {
    /// Append through ministore-server, local store / JetStream cluster, and raw publish.
    pub rows: Vec<(usize, Load, Load, Load)>,
    /// 64 callers, every append its own unary Append RPC: local, clustered.
    pub per_call: (Load, Load),
}

/// Append at each of [`CALLERS`] through the client as it comes (one AppendStream per
/// journal), then at 64 callers with one unary Append RPC per append.
async fn loads(
    addr: &str,
    prefix: &str,
    duration: Duration,
    warmup: Duration,
) -> Result<(Vec<Load>, Load), BoxError> {
    // The client as users get it (`with_server`'s sends unary RPCs).
    let client = ministore_client::Client::connect(addr).await?;
    let loads = grpc_bench::appends(&client, prefix, &CALLERS, duration, warmup).await?;
    let per_call_client = ministore_client::ClientBuilder::new(addr)
        .append_streams(false)
        .max_appends_in_flight(0)
        .connect()
        .await?;
    let prefix = format!("{prefix}-per-call");
    let mut per_call =
        grpc_bench::appends(&per_call_client, &prefix, &[64], duration, warmup).await?;
    Ok((loads, per_call.pop().expect("one load")))
}

/// Starts the cluster, measures, stops it.
pub async fn run(
    data_dir: &Path,
    duration: Duration,
    warmup: Duration,
    in_flight: usize,
) -> Result<ClusterResults, BoxError> {
    let (local, local_per_call) =
        grpc_bench::with_server(&data_dir.join("local"), in_flight, async |_client, addr| {
            loads(addr, "local", duration, warmup).await
        })
        .await?;
    let cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3)).await?;
    let config = cluster.server_config(&data_dir.join("unused"));
    let (clustered, clustered_per_call) =
        grpc_bench::with_server_config(config, in_flight, async |_client, addr| {
            loads(addr, "clustered", duration, warmup).await
        })
        .await?;
    let raw = raw_publish(&cluster.url(), duration, warmup).await?;
    drop(cluster);
    Ok(ClusterResults {
        rows: CALLERS
            .iter()
            .zip(local)
            .zip(clustered)
            .zip(raw)
            .map(|(((&callers, local), clustered), raw)| (callers, local, clustered, raw))
            .collect(),
        per_call: (local_per_call, clustered_per_call),
    })
}

/// JetStream publish-with-ack at each of [`CALLERS`], to an R3 file stream like a journal's.
async fn raw_publish(
    url: &str,
    duration: Duration,
    warmup: Duration,
) -> Result<Vec<Load>, BoxError> {
    let servers: Vec<String> = url
        .trim_start_matches("nats://")
        .split(',')
        .map(|s| format!("nats://{s}"))
        .collect();
    let client = async_nats::connect(servers).await?;
    let js = async_nats::jetstream::new(client);
    let record = Bytes::from(grpc_bench::record().get().to_owned());
    let mut loads = Vec::new();
    for callers in CALLERS {
        let subject: Arc<str> = format!("raw.{callers}").into();
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("raw_{callers}"),
            subjects: vec![subject.to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: 3,
            ..Default::default()
        })
        .await?;
        let (js, record) = (js.clone(), record.clone());
        let load = grpc_bench::drive(callers, 1, duration, warmup, move || {
            let (js, record, subject) = (js.clone(), record.clone(), subject.clone());
            async move {
                js.publish(subject.to_string(), record).await?.await?;
                Ok(())
            }
        })
        .await?;
        loads.push(load);
    }
    Ok(loads)
}

/// The section's table.
pub fn table(results: &ClusterResults) -> Table {
    let mut table = Table::new([
        "durable Append (#18)",
        "local store",
        "3-node JetStream",
        "raw JetStream publish",
        "ministore / raw",
    ]);
    let (local, clustered) = &results.per_call;
    let raw_64 = results
        .rows
        .iter()
        .find(|row| row.0 == 64)
        .map(|row| &row.3);
    let mut rows: Vec<(String, &Load, &Load, Option<&Load>)> = results
        .rows
        .iter()
        .map(|(callers, local, clustered, raw)| {
            (
                format!("Append, {callers} caller(s) (/s)"),
                local,
                clustered,
                Some(raw),
            )
        })
        .collect();
    rows.push((
        "Append, 64 callers, one unary RPC each (/s)".to_string(),
        local,
        clustered,
        raw_64,
    ));
    for (name, local, clustered, raw) in rows {
        let Some(raw) = raw else { continue };
        table.row([
            name,
            table::rate(local.calls_per_sec()),
            table::rate(clustered.calls_per_sec()),
            table::rate(raw.calls_per_sec()),
            format!("{:.2}x", clustered.calls_per_sec() / raw.calls_per_sec()),
        ]);
        table.row([
            "  p50".to_string(),
            table::duration(local.p50),
            table::duration(clustered.p50),
            table::duration(raw.p50),
            String::new(),
        ]);
    }
    table
}
