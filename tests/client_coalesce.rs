//! `Client::append` under concurrency: appends beyond `max_appends_in_flight` share one
//! AppendBatch, and each caller still gets exactly its own answer. A scripted server shows
//! which RPCs the client sent; the real server shows the sequence numbers are the records'.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use ministore::proto::journal_server::{Journal, JournalServer};
use ministore::proto::{
    AppendBatchRequest, AppendBatchResponse, AppendRequest, AppendResponse, InfoRequest,
    InfoResponse, ReplayRequest, ReplayResponse, StreamEvent, StreamRequest, append_request,
};
use ministore_client::{Client, ClientBuilder, ClientError};
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

/// Answers by record: `"hold"` waits for `release`, `"bad"` is INVALID_ARGUMENT (a batch
/// with it too), a batch with `"down"` is UNAVAILABLE; everything else is stored.
#[derive(Debug, Default)]
struct Scripted {
    calls: Mutex<Vec<Call>>,
    next_seq: Mutex<u64>,
    received_hold: Notify,
    release: Notify,
}

impl Scripted {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
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
        let Some(append_request::Record::Payload(payload)) = request.into_inner().record else {
            return Err(Status::invalid_argument("payload expected"));
        };
        let text: String = serde_json::from_slice(&payload).unwrap();
        self.0
            .calls
            .lock()
            .unwrap()
            .push(Call::Append(text.clone()));
        match text.as_str() {
            "hold" => {
                self.0.received_hold.notify_one();
                self.0.release.notified().await;
            }
            "bad" => return Err(Status::invalid_argument("record \"bad\" is refused")),
            _ => {}
        }
        Ok(Response::new(AppendResponse {
            seq: self.0.seqs(1),
            ..Default::default()
        }))
    }

    async fn append_batch(
        &self,
        request: Request<AppendBatchRequest>,
    ) -> Result<Response<AppendBatchResponse>, Status> {
        let texts: Vec<String> = request
            .into_inner()
            .payloads
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        self.0
            .calls
            .lock()
            .unwrap()
            .push(Call::Batch(texts.clone()));
        if texts.iter().any(|t| t == "bad") {
            return Err(Status::invalid_argument("a record of the batch is refused"));
        }
        if texts.iter().any(|t| t == "down") {
            return Err(Status::unavailable("the journal is gone for a moment"));
        }
        let first_seq = self.0.seqs(texts.len() as u64);
        Ok(Response::new(AppendBatchResponse {
            first_seq,
            last_seq: first_seq + texts.len() as u64 - 1,
            ..Default::default()
        }))
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
}

#[tokio::test]
async fn an_outage_during_a_batch_is_every_records_error_and_nothing_is_resent() {
    let (server, _client, waiting) = waiting_behind_a_held_append(&["a", "down"]).await;
    for result in results(waiting).await {
        let error = result.unwrap_err();
        assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
        assert!(error.is_retryable());
    }
    assert_eq!(
        server.calls().len(),
        2,
        "one Append, one AppendBatch: {:?}",
        server.calls()
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
