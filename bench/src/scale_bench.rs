//! Costs that must stay flat as use grows (issue #17, item 3), each against the server in
//! a child process so that its threads, RSS and descriptors are its own:
//! - `journals`: 10,000 journals with one append each; the server's threads, RSS and
//!   descriptors before and after, per journal; Append at 1 caller to one journal beside
//!   1 caller spread over all of them (most closed: each append reopens its journal);
//! - `followers`: 10,000 idle following streams; RSS per follower; the time a burst of
//!   appends takes to reach every follower;
//! - `offload`: Append p99 at 1 caller alone, and while another connection sends 16 MiB
//!   AppendBatch requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ministore::proto::{AppendBatchRequest, StreamRequest, stream_event};
use ministore_client::Client;
use serde_json::value::RawValue;

use crate::grpc_bench::{BoxError, Calls, Load, drive_calls, record};
use crate::stream_bench::ChildServer;

/// Journals of the `journals` section, and followers of the `followers` section.
pub const MANY: usize = 10_000;
/// With `--quick`.
pub const QUICK_MANY: usize = 1_000;
/// Appends in flight while creating the journals.
const CREATE_CONCURRENCY: usize = 64;
/// Following streams per connection (under the server's 128 per connection).
const STREAMS_PER_CONNECTION: usize = 100;
/// Records of the burst that fans out to every follower.
const BURST: usize = 100;
/// Turns of the `journals` section's three latency rows: each row runs this many times,
/// in turn with the others, so a phase of the VM's disk (they last seconds and move p50 by
/// 1.3x) falls on every row alike instead of on whichever ran during it.
pub const TURNS: u32 = 12;
/// No wait of this section lasts longer: the benchmark always ends.
const BOUND: Duration = Duration::from_secs(600);

/// What the `journals` section measured.
#[derive(Debug)]
pub struct JournalsResults {
    /// Journals created.
    pub journals: usize,
    /// Journals whose files the server keeps open (`--max-journals`, default).
    pub max_open: usize,
    /// Time to create them all (one append each, 64 at a time).
    pub create: Duration,
    /// Append at 1 caller, one journal (among the others, measured in turn with them).
    pub single: Load,
    /// Append at 1 caller, each call to the next of all the journals.
    pub spread: Load,
    /// Append at 1 caller, each call to the next of `max_open / 2` journals (all open).
    pub spread_open: Load,
    /// The machine's own cost of spreading: write + fdatasync of a record and a metadata
    /// entry to a pair of files, one pair ...
    pub raw_single: Load,
    /// ... and each call the next of `max_open / 2` pairs (measured in turn with the rest).
    pub raw_spread: Load,
    /// File pairs of `raw_spread`.
    pub raw_pairs: usize,
    /// Server threads, RSS (bytes) and descriptors before and after creating the journals.
    pub before: Usage,
    /// The same after.
    pub after: Usage,
}

/// What the `followers` section measured.
#[derive(Debug)]
pub struct FollowersResults {
    /// Following streams.
    pub followers: usize,
    /// The server before and after they were opened (each caught up, waiting).
    pub before: Usage,
    /// The same after.
    pub after: Usage,
    /// From the AppendBatch of [`BURST`] records to the last follower's last record.
    pub fan_out: Duration,
    /// Records of the burst.
    pub burst: usize,
}

/// What the `offload` section measured.
#[derive(Debug)]
pub struct OffloadResults {
    /// Append at 1 caller, nothing else running.
    pub alone: Load,
    /// Append at 1 caller while 16 MiB AppendBatch requests are sent.
    pub loaded: Load,
    /// 16 MiB batches completed meanwhile.
    pub batches: u64,
    /// Bytes of JSON per batch.
    pub batch_bytes: usize,
}

/// A process's threads, RSS and open descriptors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Threads.
    pub threads: usize,
    /// VmRSS, bytes.
    pub rss: u64,
    /// Open file descriptors.
    pub fds: usize,
}

impl Usage {
    fn of(child: &ChildServer) -> Usage {
        let pid = child.pid();
        let count = |dir: String| std::fs::read_dir(dir).map_or(0, |d| d.count());
        Usage {
            threads: count(format!("/proc/{pid}/task")),
            rss: child.status_bytes("VmRSS").unwrap_or(0),
            fds: count(format!("/proc/{pid}/fd")),
        }
    }
}

/// A client of `child` whose appends are unary `Append` RPCs: the client's default, one
/// `AppendStream` per journal for at most 16 journals, would compare a stream to one
/// journal with unary RPCs to the others.
async fn unary(child: &ChildServer) -> Result<Client, BoxError> {
    Ok(ministore_client::ClientBuilder::new(child.addr.clone())
        .append_streams(false)
        .connect()
        .await?)
}

/// The `journals` section.
pub async fn journals(
    dir: &std::path::Path,
    many: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<JournalsResults, BoxError> {
    let child = ChildServer::start(&dir.join("journals-data"))?;
    let client = unary(&child).await?;
    let record: Arc<RawValue> = Arc::from(record());
    let one = |journals: Arc<Vec<String>>| {
        let (client, record) = (client.clone(), record.clone());
        let next = Arc::new(AtomicUsize::new(0));
        move || {
            let (client, record, journals) = (client.clone(), record.clone(), journals.clone());
            let i = next.fetch_add(1, Ordering::Relaxed) % journals.len();
            async move {
                client.append(&journals[i], &*record).await?;
                Ok(())
            }
        }
    };
    let single_journal: Arc<Vec<String>> = Arc::new(vec!["single".into()]);
    client.append(&single_journal[0], &*record).await?;

    let before = Usage::of(&child);
    let names: Arc<Vec<String>> = Arc::new((0..many).map(|i| format!("j{i:05}")).collect());
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let creators: Vec<_> = (0..CREATE_CONCURRENCY)
        .map(|_| {
            let (client, record, names, next) =
                (client.clone(), record.clone(), names.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else {
                        return Ok::<_, BoxError>(());
                    };
                    client.append(name, &*record).await?;
                }
            })
        })
        .collect();
    for creator in creators {
        tokio::time::timeout(BOUND, creator).await???;
    }
    let create = started.elapsed();
    let after = Usage::of(&child);

    let max_open = ministore_server::Config::with_data_dir("unused").max_journals;
    let hot: Arc<Vec<String>> = Arc::new(names.iter().take(max_open / 2).cloned().collect());
    let raw_pairs = max_open / 2;
    let raw = RawPairs::create(&dir.join("journals-raw"), raw_pairs)?;
    let rows: [Box<dyn Fn() -> Call + Send + Sync>; 5] = [
        Box::new(boxed_call(one(single_journal))),
        Box::new(boxed_call(one(names.clone()))),
        Box::new(boxed_call(one(hot))),
        Box::new(raw.calls(1)),
        Box::new(raw.calls(raw_pairs)),
    ];
    let [single, spread, spread_open, raw_single, raw_spread] =
        in_turns(rows, duration, warmup).await?;
    drop(client);
    child.stop();
    Ok(JournalsResults {
        journals: many,
        max_open,
        create,
        single,
        spread,
        spread_open,
        raw_single,
        raw_spread,
        raw_pairs,
        before,
        after,
    })
}

/// A call of a row of [`in_turns`], whatever it does.
type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

fn boxed_call<F, Fut>(call: F) -> impl Fn() -> Call + Send + Sync
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    move || Box::pin(call())
}

/// Pairs of files as a journal's commit writes them (a record to its segment, an entry to
/// its metadata file, both fdatasynced), without ministore: what spreading commits over
/// many files costs this machine's disk by itself.
struct RawPairs {
    files: Arc<Vec<(std::fs::File, std::fs::File)>>,
    /// Removed with the files when dropped.
    dir: std::path::PathBuf,
}

/// A metadata entry's size (seq, CRC, length, time; no key).
const RAW_META_BYTES: usize = 32;

impl RawPairs {
    fn create(dir: &std::path::Path, pairs: usize) -> Result<RawPairs, BoxError> {
        std::fs::create_dir_all(dir)?;
        let open = |name: String| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        let files = (0..pairs)
            .map(|i| Ok((open(format!("{i}.jsonl"))?, open(format!("{i}.meta"))?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(RawPairs {
            files: Arc::new(files),
            dir: dir.to_owned(),
        })
    }

    /// Calls that each commit to the next of the first `pairs` pairs, on the calling
    /// thread (the server is another process: blocking this one's runtime slows no one).
    fn calls(&self, pairs: usize) -> impl Fn() -> Call + Send + Sync + 'static {
        use std::io::Write;
        let (files, next) = (self.files.clone(), AtomicUsize::new(0));
        let line = format!("{}\n", record().get());
        move || {
            let (segment, meta) = &files[next.fetch_add(1, Ordering::Relaxed) % pairs];
            let committed = (|| {
                (&*segment).write_all(line.as_bytes())?;
                (&*meta).write_all(&[0u8; RAW_META_BYTES])?;
                segment.sync_data()?;
                meta.sync_data()
            })();
            Box::pin(std::future::ready(committed.map_err(BoxError::from)))
        }
    }
}

impl Drop for RawPairs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One caller's load of each of `rows`, measured in [`TURNS`] turns of `duration / TURNS`
/// each, the rows in turn within each (after a warm-up of each row); each row's calls of
/// all its turns pooled.
async fn in_turns<F, Fut, const N: usize>(
    rows: [F; N],
    duration: Duration,
    warmup: Duration,
) -> Result<[Load; N], BoxError>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let rows = rows.map(Arc::new);
    for row in &rows {
        drive_calls(1, warmup, row.clone()).await?;
    }
    let mut pooled: [Calls; N] = std::array::from_fn(|_| Calls::default());
    for _ in 0..TURNS {
        for (row, calls) in rows.iter().zip(pooled.iter_mut()) {
            calls.extend(drive_calls(1, duration / TURNS, row.clone()).await?);
        }
    }
    Ok(pooled.map(|c| c.into_load(1, 1)))
}

/// The `followers` section.
pub async fn followers(dir: &std::path::Path, many: usize) -> Result<FollowersResults, BoxError> {
    let streams = (many + 100).to_string();
    let child = ChildServer::start_env(
        &dir.join("followers-data"),
        &[("MINISTORE_MAX_STREAMS", streams.as_str())],
    )?;
    let writer = Client::connect(child.addr.clone()).await?;
    let record = record();
    writer.append("fan", &*record).await?;
    let before = Usage::of(&child);

    let connections = many.div_ceil(STREAMS_PER_CONNECTION);
    let caught_up = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let last_done = Arc::new(AtomicU64::new(0));
    let (waiting_tx, mut waiting) = tokio::sync::mpsc::channel::<()>(many.max(1));
    let (finished_tx, mut finished) = tokio::sync::mpsc::channel::<Result<(), String>>(many.max(1));
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = Client::connect(child.addr.clone()).await?;
        let count = STREAMS_PER_CONNECTION.min(many - c * STREAMS_PER_CONNECTION);
        for _ in 0..count {
            let (client, waiting_tx, finished_tx) =
                (client.clone(), waiting_tx.clone(), finished_tx.clone());
            let (caught_up, done, last_done) = (caught_up.clone(), done.clone(), last_done.clone());
            tasks.push(tokio::spawn(async move {
                let result = follow(&client, &waiting_tx, &caught_up).await;
                last_done.fetch_max(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
                let _ = finished_tx.send(result).await;
            }));
        }
    }
    drop((waiting_tx, finished_tx));
    for _ in 0..many {
        tokio::time::timeout(BOUND, waiting.recv())
            .await?
            .ok_or("a follower ended before it caught up")?;
    }
    // Every follower is at the end and waiting; what the server holds for them now.
    let after = Usage::of(&child);

    let batch: Vec<&RawValue> = (0..BURST).map(|_| &*record).collect();
    let sent = epoch.elapsed();
    writer.append_batch("fan", &batch).await?;
    for _ in 0..many {
        tokio::time::timeout(BOUND, finished.recv())
            .await?
            .ok_or("a follower task vanished")??;
    }
    let fan_out = Duration::from_nanos(last_done.load(Ordering::Relaxed)).saturating_sub(sent);
    drop(writer);
    child.stop();
    Ok(FollowersResults {
        followers: many,
        before,
        after,
        fan_out,
        burst: BURST,
    })
}

/// One follower of journal "fan" from seq 2: says when it has caught up (waiting at the
/// end), then reads the burst's records, seqs 2 to BURST + 1 in order.
async fn follow(
    client: &Client,
    waiting: &tokio::sync::mpsc::Sender<()>,
    caught_up: &AtomicUsize,
) -> Result<(), String> {
    let request = StreamRequest {
        journal: "fan".into(),
        from_seq: 2,
        follow: true,
        format: 0,
        heartbeat_seconds: 0,
    };
    let mut events = client
        .raw()
        .stream(request)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut expected = 2;
    while expected <= BURST as u64 + 1 {
        let event = events
            .message()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended")?;
        match event.event {
            Some(stream_event::Event::CaughtUp(_)) if expected == 2 => {
                caught_up.fetch_add(1, Ordering::Relaxed);
                let _ = waiting.send(()).await;
            }
            Some(stream_event::Event::Record(r)) if r.seq == expected => expected += 1,
            Some(stream_event::Event::Record(r)) => {
                return Err(format!("record {} where {expected} was due", r.seq));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Bytes of each record of the large batches (JSON), and records per batch: just under
/// the server's 16 MiB message limit.
const BIG_RECORD: usize = 64 * 1024;
const BIG_RECORDS: usize = 250;

/// The `offload` section.
pub async fn offload(
    dir: &std::path::Path,
    duration: Duration,
    warmup: Duration,
) -> Result<OffloadResults, BoxError> {
    let child = ChildServer::start(&dir.join("offload-data"))?;
    let client = unary(&child).await?;
    let record: Arc<RawValue> = Arc::from(record());
    let append = {
        let (client, record) = (client.clone(), record.clone());
        move || {
            let (client, record) = (client.clone(), record.clone());
            async move {
                client.append("small", &*record).await?;
                Ok(())
            }
        }
    };
    // Another connection, as another client would: records of nested JSON, so that checking
    // them is real parsing work. Each batch expects a last seq the journal does not have,
    // so it is checked in full and then refused by the writer: what is measured is the
    // JSON work, not the disk's time to take 16 MiB.
    let big_client = Client::connect(child.addr.clone()).await?;
    let item = r#"{"k":[1,2.5,"abc",{"x":null,"y":true}]},"#;
    let mut text = String::from(r#"{"items":["#);
    while text.len() + item.len() + 4 < BIG_RECORD {
        text.push_str(item);
    }
    text.pop();
    text.push_str("]}");
    let request = AppendBatchRequest {
        journal: "big".into(),
        payloads: vec![text.clone().into_bytes(); BIG_RECORDS],
        expected_last_seq: Some(u64::MAX),
        ..AppendBatchRequest::default()
    };
    let batch_bytes = text.len() * BIG_RECORDS;
    // The sender sends while `sending` says so; `in_flight` is held for each batch, so
    // taking it after turning `sending` off waits for the last batch to be answered.
    let (sending, mut send_now) = tokio::sync::watch::channel(false);
    let in_flight = Arc::new(tokio::sync::Mutex::new(()));
    let batches = Arc::new(AtomicU64::new(0));
    let sender = {
        let (in_flight, batches) = (in_flight.clone(), batches.clone());
        tokio::spawn(async move {
            let mut raw = big_client.raw();
            // Ends when `sending` is dropped (set to `false` first).
            while send_now.wait_for(|send| *send).await.is_ok() {
                let _batch = in_flight.lock().await;
                if !*send_now.borrow() {
                    continue;
                }
                // Refused (FAILED_PRECONDITION) after it was checked: that is the point.
                let _ = raw.append_batch(request.clone()).await;
                batches.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Alone and loaded in turns, so that a phase of the VM falls on both alike.
    let append = Arc::new(append);
    drive_calls(1, warmup, append.clone()).await?;
    let (mut alone, mut loaded) = (Calls::default(), Calls::default());
    for _ in 0..TURNS {
        sending.send_replace(false);
        drop(in_flight.lock().await);
        alone.extend(drive_calls(1, duration / TURNS, append.clone()).await?);
        sending.send_replace(true);
        loaded.extend(drive_calls(1, duration / TURNS, append.clone()).await?);
    }
    // Off first: with the last value `true`, `wait_for` would go on returning at once.
    sending.send_replace(false);
    drop(sending);
    sender.await?;
    let [alone, loaded] = [alone, loaded].map(|c| c.into_load(1, 1));
    drop(client);
    child.stop();
    Ok(OffloadResults {
        alone,
        loaded,
        batches: batches.load(Ordering::Relaxed),
        batch_bytes,
    })
}
