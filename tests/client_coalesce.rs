//! `Client::append` under concurrency: appends beyond `max_appends_in_flight` share one
//! AppendBatch, and each caller still gets exactly its own answer; a shared batch keeps
//! every caller's key and expectation, and is retried as the identical batch. A scripted
//! server shows which RPCs the client sent, with their keys; the real server shows the
//! sequence numbers are the records'.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use ministore::proto::journal_server::{Journal, JournalServer};
use ministore::proto::{
    AppendAck, AppendBatchRequest, AppendBatchResponse, AppendRequest, AppendResponse, InfoRequest,
    InfoResponse, ReplayRequest, ReplayResponse, StreamEvent, StreamRequest, append_request,
};
use ministore_client::{AppendOptions, Client, ClientBuilder, ClientError};
use ministore_tests::server::TestServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// An RPC as the scripted server received it: its method and its records.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Append(String),
    Batch(Vec<String>),
}

/// An RPC as the scripted server received it, with its key and expectation.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    call: Call,
    key: String,
    expected_last_seq: Option<u64>,
}

/// Answers by record: `"hold"` waits for `release`, `"bad"` is INVALID_ARGUMENT (a batch
/// with it too); a request with `"down"` is UNAVAILABLE the first time its key comes, and
/// one with `"lost"` is stored but answered UNAVAILABLE the first time; everything else is
/// stored. Keys are kept as the real server keeps them: the same key with the same records
/// is answered with the original seqs and `duplicate`, with others `ALREADY_EXISTS`; an
/// expectation that does not hold is `ABORTED` with the last seq in the trailer.
#[derive(Debug, Default)]
struct Scripted {
    sent: Mutex<Vec<Sent>>,
    next_seq: Mutex<u64>,
    /// Key -> the records it was committed with, and their first seq.
    committed: Mutex<HashMap<String, (Vec<String>, u64)>>,
    /// Keys that already had their one outage.
    failed_once: Mutex<Vec<String>>,
    received_hold: Notify,
    release: Notify,
}

/// What the scripted server does with a request, after it was recorded.
enum Verdict {
    Store,
    Duplicate(u64),
    Refuse(Status),
}

impl Scripted {
    fn calls(&self) -> Vec<Call> {
        self.sent().into_iter().map(|s| s.call).collect()
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// Records the request and decides on it, as the real server would by key and
    /// expectation, and by the script's `"down"`.
    fn receive(&self, call: Call, key: String, expected_last_seq: Option<u64>) -> Verdict {
        let texts = match &call {
            Call::Append(text) => vec![text.clone()],
            Call::Batch(texts) => texts.clone(),
        };
        self.sent.lock().unwrap().push(Sent {
            call,
            key: key.clone(),
            expected_last_seq,
        });
        if texts.iter().any(|t| t == "down") && self.first_failure(&key) {
            return Verdict::Refuse(Status::unavailable("the journal is gone for a moment"));
        }
        if let Some((records, first_seq)) = self.committed.lock().unwrap().get(&key) {
            return if *records == texts {
                Verdict::Duplicate(*first_seq)
            } else {
                Verdict::Refuse(Status::already_exists(format!(
                    "key {key:?} was used for other records, at seq {first_seq}"
                )))
            };
        }
        let last = *self.next_seq.lock().unwrap();
        match expected_last_seq {
            Some(expected) if expected != last => {
                let mut status = Status::aborted(format!("last seq is {last}, not {expected}"));
                status
                    .metadata_mut()
                    .insert("ministore-last-seq", last.to_string().parse().unwrap());
                Verdict::Refuse(status)
            }
            _ => Verdict::Store,
        }
    }

    /// Whether this is the first failure the script gives `key`.
    fn first_failure(&self, key: &str) -> bool {
        let mut failed = self.failed_once.lock().unwrap();
        let first = !failed.iter().any(|k| k == key);
        if first {
            failed.push(key.to_owned());
        }
        first
    }

    /// Stores `texts` under `key`: their first seq, or UNAVAILABLE if the script loses the
    /// answer (`"lost"`, once per key).
    fn store(&self, key: &str, texts: Vec<String>) -> Result<u64, Status> {
        let first_seq = self.seqs(texts.len() as u64);
        let lost = texts.iter().any(|t| t == "lost");
        if !key.is_empty() {
            self.committed
                .lock()
                .unwrap()
                .insert(key.to_owned(), (texts, first_seq));
        }
        if lost && self.first_failure(key) {
            return Err(Status::unavailable("written, but the answer was lost"));
        }
        Ok(first_seq)
    }

    fn seqs(&self, n: u64) -> u64 {
        let mut next = self.next_seq.lock().unwrap();
        let first = *next + 1;
        *next += n;
        first
    }
}

/// The scripted server as a tonic service.
struct Service(Arc<Scripted>);

#[tonic::async_trait]
impl Journal for Service {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let request = request.into_inner();
        let Some(append_request::Record::Payload(payload)) = request.record else {
            return Err(Status::invalid_argument("payload expected"));
        };
        let text: String = serde_json::from_slice(&payload).unwrap();
        let key = request.idempotency_key;
        let verdict = self.0.receive(
            Call::Append(text.clone()),
            key.clone(),
            request.expected_last_seq,
        );
        match text.as_str() {
            "hold" => {
                self.0.received_hold.notify_one();
                self.0.release.notified().await;
            }
            "bad" => return Err(Status::invalid_argument("record \"bad\" is refused")),
            _ => {}
        }
        let (seq, duplicate) = match verdict {
            Verdict::Refuse(status) => return Err(status),
            Verdict::Duplicate(seq) => (seq, true),
            Verdict::Store => (self.0.store(&key, vec![text])?, false),
        };
        Ok(Response::new(AppendResponse { seq, duplicate }))
    }

    async fn append_batch(
        &self,
        request: Request<AppendBatchRequest>,
    ) -> Result<Response<AppendBatchResponse>, Status> {
        let request = request.into_inner();
        let texts: Vec<String> = request
            .payloads
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        let key = request.idempotency_key;
        let verdict = self.0.receive(
            Call::Batch(texts.clone()),
            key.clone(),
            request.expected_last_seq,
        );
        if texts.iter().any(|t| t == "bad") {
            return Err(Status::invalid_argument("a record of the batch is refused"));
        }
        let n = texts.len() as u64;
        let (first_seq, duplicate) = match verdict {
            Verdict::Refuse(status) => return Err(status),
            Verdict::Duplicate(seq) => (seq, true),
            Verdict::Store => (self.0.store(&key, texts)?, false),
        };
        Ok(Response::new(AppendBatchResponse {
            first_seq,
            last_seq: first_seq + n - 1,
            duplicate,
        }))
    }

    type AppendStreamStream = Pin<Box<dyn Stream<Item = Result<AppendAck, Status>> + Send>>;

    /// As a server older than AppendStream: a client falls back to unary appends.
    async fn append_stream(
        &self,
        _: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        Err(Status::unimplemented("unary appends only"))
    }

    async fn replay(&self, _: Request<ReplayRequest>) -> Result<Response<ReplayResponse>, Status> {
        Err(Status::unimplemented("appends only"))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Status>> + Send>>;

    async fn stream(
        &self,
        _: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        Err(Status::unimplemented("appends only"))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("appends only"))
    }

    async fn list_journals(
        &self,
        _: Request<ministore::proto::ListJournalsRequest>,
    ) -> Result<Response<ministore::proto::ListJournalsResponse>, Status> {
        Err(Status::unimplemented("appends only"))
    }
}

/// The scripted server on `127.0.0.1:0`, and its address.
async fn scripted() -> (Arc<Scripted>, String) {
    let server = Arc::new(Scripted::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let service = JournalServer::new(Service(server.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (server, addr)
}

type Append = Pin<Box<dyn Future<Output = Result<u64, ClientError>> + Send>>;

/// Polls each append once, so each has been sent or has joined its journal's waiting line
/// before the test goes on (an append does either in its first poll).
async fn start_all(appends: &mut [Append]) {
    std::future::poll_fn(|cx| {
        for append in appends.iter_mut() {
            assert!(
                append.as_mut().poll(cx).is_pending(),
                "the server answers nothing yet"
            );
        }
        Poll::Ready(())
    })
    .await;
}

/// One append of the JSON string `text` to journal `j`, to be polled later.
fn append(client: &Client, text: &str) -> Append {
    append_to(client, "j", text)
}

/// One append of the JSON string `text` to `journal`, to be polled later.
fn append_to(client: &Client, journal: &str, text: &str) -> Append {
    let (client, journal, text) = (client.clone(), journal.to_owned(), text.to_owned());
    Box::pin(async move { client.append(&journal, &text).await })
}

/// The scripted server, and a client of it that allows one append in flight.
async fn scripted_with_client() -> (Arc<Scripted>, Client) {
    let (server, addr) = scripted().await;
    let client = ClientBuilder::new(addr)
        .append_streams(false)
        .max_appends_in_flight(1)
        .connect()
        .await
        .unwrap();
    (server, client)
}

/// The scripted server and a client that allows one append in flight, which the server
/// holds while appends of `texts` start and wait behind it; then the server lets it go.
/// Returns the waiting appends, which go out as one batch once awaited.
async fn waiting_behind_a_held_append(texts: &[&str]) -> (Arc<Scripted>, Client, Vec<Append>) {
    let appends: Vec<(&str, &str)> = texts.iter().map(|t| ("j", *t)).collect();
    waiting_behind_a_held_append_to("j", &appends).await
}

/// Like [`waiting_behind_a_held_append`], with the held append going to `held_journal`
/// and each waiting one to its own journal: `(journal, text)`.
async fn waiting_behind_a_held_append_to(
    held_journal: &str,
    appends: &[(&str, &str)],
) -> (Arc<Scripted>, Client, Vec<Append>) {
    let (server, client) = scripted_with_client().await;
    let held = tokio::spawn({
        let (client, journal) = (client.clone(), held_journal.to_owned());
        async move { client.append(&journal, "hold").await }
    });
    server.received_hold.notified().await;

    let mut waiting: Vec<Append> = appends
        .iter()
        .map(|(journal, text)| append_to(&client, journal, text))
        .collect();
    start_all(&mut waiting).await;
    assert_eq!(
        server.calls(),
        vec![Call::Append("hold".into())],
        "the others must wait while one append to their journal is in flight"
    );
    server.release.notify_one();
    assert_eq!(held.await.unwrap().unwrap(), 1);
    (server, client, waiting)
}

/// Awaits each append in turn.
async fn results(appends: Vec<Append>) -> Vec<Result<u64, ClientError>> {
    let mut results = Vec::new();
    for append in appends {
        results.push(append.await);
    }
    results
}

#[tokio::test]
async fn appends_beyond_the_limit_wait_and_go_as_one_batch_each_with_its_own_seq() {
    let texts: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (server, client, waiting) = waiting_behind_a_held_append(&refs).await;

    let seqs: Vec<u64> = results(waiting)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        seqs,
        (2..12).collect::<Vec<u64>>(),
        "each in the order it came"
    );
    assert_eq!(
        server.calls(),
        vec![Call::Append("hold".into()), Call::Batch(texts)],
        "one AppendBatch for the ten"
    );

    // Alone again: an append is its own Append RPC, sent at once.
    assert_eq!(client.append("j", "solo").await.unwrap(), 12);
    assert_eq!(server.calls().last(), Some(&Call::Append("solo".into())));
}

#[tokio::test]
async fn a_batch_refused_for_one_record_is_answered_record_by_record() {
    let (server, _client, waiting) = waiting_behind_a_held_append(&["a", "bad", "b"]).await;

    let results = results(waiting).await;
    assert_eq!(results[0].as_ref().unwrap(), &2);
    let refused = results[1].as_ref().unwrap_err();
    assert_eq!(refused.code(), Some(Code::InvalidArgument));
    assert!(
        refused.to_string().contains("record \"bad\" is refused"),
        "{refused}"
    );
    assert_eq!(results[2].as_ref().unwrap(), &3);
    assert_eq!(
        server.calls()[1..],
        [
            Call::Batch(vec!["a".into(), "bad".into(), "b".into()]),
            Call::Append("a".into()),
            Call::Append("bad".into()),
            Call::Append("b".into()),
        ],
        "the refused batch wrote nothing; each record went again alone"
    );
    let sent = server.sent();
    let keys: std::collections::HashSet<&str> = sent[1..].iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys.len(),
        4,
        "the batch and each record alone have keys of their own: {sent:?}"
    );
}

#[tokio::test]
async fn an_outage_during_a_batch_is_retried_as_the_identical_batch_with_its_key() {
    let (server, _client, waiting) = waiting_behind_a_held_append(&["a", "down"]).await;
    let seqs: Vec<u64> = results(waiting)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    let sent = server.sent();
    let batch = Call::Batch(vec!["a".into(), "down".into()]);
    assert_eq!(
        server.calls()[1..],
        [batch.clone(), batch],
        "the batch, and after the outage the same batch again"
    );
    assert_eq!(
        sent[1].key, sent[2].key,
        "the retry carries the batch's key"
    );
    assert_eq!(
        sent[1].key.len(),
        32,
        "a 128-bit hex key: {:?}",
        sent[1].key
    );
    assert_ne!(sent[1].key, sent[0].key, "the batch's key is its own");
}

#[tokio::test]
async fn a_batch_written_but_unanswered_is_retried_and_gets_its_original_seqs() {
    let (server, _client, waiting) = waiting_behind_a_held_append(&["a", "lost"]).await;
    let seqs: Vec<u64> = results(waiting)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        seqs,
        vec![2, 3],
        "the seqs of the first attempt, which was written"
    );
    assert_eq!(server.calls().len(), 3, "{:?}", server.calls());
    assert_eq!(
        *server.next_seq.lock().unwrap(),
        3,
        "the retry wrote nothing: hold, a and lost, once each"
    );
}

#[tokio::test]
async fn appends_with_a_key_or_an_expectation_are_never_shared_and_keep_both() {
    let (server, client) = scripted_with_client().await;
    let mut held = [append(&client, "hold")];
    start_all(&mut held).await;
    server.received_hold.notified().await;
    let keyed = |text: &str, options: AppendOptions| {
        let (client, text) = (client.clone(), text.to_owned());
        Box::pin(async move { client.append_with("j", &text, options).await.map(|a| a.seq) })
            as Append
    };
    // While "hold" has the lane's one place: two keyed appends, one with an expectation
    // alone, and two plain ones, which wait.
    let mut others = vec![
        keyed("x", AppendOptions::new().key("order-x")),
        keyed("y", AppendOptions::new().expected_last_seq(1)),
        keyed(
            "z",
            AppendOptions::new().key("order-z").expected_last_seq(2),
        ),
        append(&client, "p1"),
        append(&client, "p2"),
    ];
    start_all(&mut others).await;
    server.release.notify_one();
    let [held] = held;
    assert_eq!(held.await.unwrap(), 1);
    // x and the plain ones are stored; y and z may find the journal elsewhere than they
    // expect (the three go out concurrently), but each gets a definite answer.
    let results = results(others).await;
    for (i, result) in results.iter().enumerate() {
        match result {
            Err(e) if (i == 1 || i == 2) && e.code() == Some(Code::Aborted) => {}
            other => assert!(other.is_ok(), "append {i}: {other:?}"),
        }
    }
    let sent = server.sent();
    let of = |text: &str| {
        sent.iter()
            .find(|s| s.call == Call::Append(text.into()))
            .unwrap_or_else(|| panic!("{text} was not sent alone: {sent:?}"))
    };
    assert_eq!(of("x").key, "order-x");
    assert_eq!(of("x").expected_last_seq, None);
    assert_eq!(of("y").expected_last_seq, Some(1));
    assert_eq!(
        of("y").key.len(),
        32,
        "an expectation alone still gets a key"
    );
    assert_eq!(of("z").key, "order-z");
    assert_eq!(of("z").expected_last_seq, Some(2));
    let batch = sent
        .iter()
        .find(|s| s.call == Call::Batch(vec!["p1".into(), "p2".into()]))
        .expect("the plain appends share one batch");
    assert_eq!(batch.expected_last_seq, None);
    assert!(
        ![&of("x").key, &of("y").key, &of("z").key].contains(&&batch.key),
        "the batch has a key of its own: {sent:?}"
    );
    assert_eq!(sent.len(), 5, "hold, x, y, z alone and one batch: {sent:?}");
}

#[tokio::test]
async fn already_exists_and_aborted_are_answered_at_once_never_retried() {
    let (server, client) = scripted_with_client().await;
    let first = client
        .append_with("j", "x", AppendOptions::new().key("k"))
        .await
        .unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    let again = client
        .append_with("j", "x", AppendOptions::new().key("k"))
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));

    let reused = client
        .append_with("j", "other", AppendOptions::new().key("k"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Some(Code::AlreadyExists), "{reused}");
    assert!(!reused.is_retryable());

    let stale = client
        .append_with("j", "y", AppendOptions::new().expected_last_seq(0))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Some(Code::Aborted), "{stale}");
    assert_eq!(stale.last_seq(), Some(1));
    assert!(!stale.is_retryable());
    assert_eq!(
        server.calls(),
        vec![
            Call::Append("x".into()),
            Call::Append("x".into()),
            Call::Append("other".into()),
            Call::Append("y".into()),
        ],
        "one attempt each"
    );
}

/// An append of `"hold"` the scripted server holds, and an append of `"next"` waiting
/// behind it; both started, neither finished.
async fn one_held_one_waiting() -> (Arc<Scripted>, Client, Append, Append) {
    let (server, client) = scripted_with_client().await;
    let mut held = [append(&client, "hold")];
    start_all(&mut held).await;
    server.received_hold.notified().await;
    let mut waiting = [append(&client, "next")];
    start_all(&mut waiting).await;
    let [held] = held;
    let [waiting] = waiting;
    (server, client, held, waiting)
}

#[tokio::test]
async fn an_abandoned_append_hands_its_place_to_those_waiting() {
    let (server, _client, held, waiting) = one_held_one_waiting().await;
    drop(held); // the caller gives up on its append while the server still holds it
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiting append is still waiting 5 s after the held one was dropped")
        .unwrap();
    // The server numbers records as it answers, and still holds "hold": "next" is its first.
    assert_eq!(
        next, 1,
        "the waiting append went out on its own and got the first seq"
    );
    assert!(
        server.calls().contains(&Call::Append("next".into())),
        "{:?}",
        server.calls()
    );
    server.release.notify_one();
}

#[test]
fn an_append_dropped_outside_a_runtime_fails_those_waiting_instead_of_panicking() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, _client, held, waiting) = runtime.block_on(one_held_one_waiting());
    drop(held); // on this thread, outside the runtime: nothing can be spawned here
    let error = runtime.block_on(waiting).unwrap_err();
    assert!(matches!(error, ClientError::Protocol(_)), "{error}");
    assert!(
        error.to_string().contains("outside a tokio runtime"),
        "{error}"
    );
    server.release.notify_one();
}

#[tokio::test]
async fn many_concurrent_appends_to_the_real_server_each_get_the_seq_of_their_record() {
    let server = TestServer::start().await;
    let client = ClientBuilder::new(server.addr.to_string())
        .append_streams(false)
        .max_appends_in_flight(1)
        .connect()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..200u64)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move {
                (
                    id,
                    client
                        .append("orders", &serde_json::json!({ "id": id }))
                        .await
                        .unwrap(),
                )
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.push(task.await.unwrap());
    }
    let stored: Vec<(u64, serde_json::Value)> = client.replay("orders", 1).await.unwrap();
    assert_eq!(stored.len(), 200);
    for (id, seq) in acked {
        let (at, record) = &stored[seq as usize - 1];
        assert_eq!(*at, seq);
        assert_eq!(
            record["id"], id,
            "record {seq} is not the one acknowledged with it"
        );
    }
}

#[tokio::test]
async fn an_empty_journal_name_and_default_share_one_lane() {
    // "" is the journal "default": appends to either wait behind the one in flight.
    let (server, _client, waiting) =
        waiting_behind_a_held_append_to("", &[("default", "a"), ("", "b")]).await;

    let seqs: Vec<u64> = results(waiting)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(
        server.calls(),
        vec![
            Call::Append("hold".into()),
            Call::Batch(vec!["a".into(), "b".into()])
        ]
    );
}

#[tokio::test]
async fn a_default_client_of_a_server_without_append_stream_appends_with_unary_rpcs() {
    let (server, addr) = scripted().await;
    let client = Client::connect(addr).await.unwrap();
    assert_eq!(client.append("j", "a").await.unwrap(), 1);
    assert_eq!(client.append("j", "b").await.unwrap(), 2);
    let calls: Vec<Call> = server
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.call.clone())
        .collect();
    assert_eq!(
        calls,
        vec![Call::Append("a".into()), Call::Append("b".into())]
    );
}
