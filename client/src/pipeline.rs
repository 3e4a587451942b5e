//! Concurrent single-record appends to one journal share one `AppendStream`.
//!
//! Each journal the client appends to gets one long-lived AppendStream, opened by the first
//! append and reopened by the first append after it ended. An append puts its request on
//! the stream and waits for its ack; the stream's task hands acks to the waiting callers in
//! order, which is the order their requests were sent. So 64 concurrent callers cost 64
//! small HTTP/2 frames each way and no per-call headers, and their records share group
//! commits on the server without anyone waiting for another caller's reply.
//!
//! A stream that fails (the server restarting, the connection lost) fails every append
//! waiting on it with the stream's status; each caller's retry (same key, same bytes) then
//! goes out on a new stream. Nothing is ever resent by the pipeline itself, so the retry
//! policy and its budget stay those of [`Retry`](crate::retry::Retry).
//!
//! Memory: requests waiting to be sent are bounded by the callers (each has at most one
//! request on the stream); the server reads at most 1024 requests or 1 MiB ahead of their
//! acks and stops reading beyond, which stops the stream's sending.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ministore::proto::{AppendAck, AppendRequest, AppendResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

use crate::Rpc;
use crate::connection::with_causes;
// An ack's ABORTED carries in `last_seq` what a unary Append's carries in this trailer.
use ministore::proto::LAST_SEQ_TRAILER;

/// Append streams one client keeps open at once; appends to further journals go as unary
/// Append RPCs. Well inside the server's default 128 streams per connection, which its
/// followers share.
pub(crate) const MAX_OPEN_STREAMS: usize = 16;
/// A stream with nothing to acknowledge for this long is closed, giving its place back.
const IDLE: std::time::Duration = std::time::Duration::from_secs(2);

/// What became of an append handed to a stream.
enum Outcome {
    /// The ack, as a unary Append would have answered (an error as its `Status`).
    Answer(Result<AppendResponse, Status>),
    /// The server has no room for another stream (RESOURCE_EXHAUSTED on opening it), or
    /// does not know AppendStream (UNIMPLEMENTED: a server older than the RPC): send it as
    /// a unary Append instead.
    NoStream,
}

/// An append waiting for its ack.
type Reply = oneshot::Sender<Outcome>;
type Queue = mpsc::UnboundedSender<(AppendRequest, Reply)>;

/// The open AppendStreams of one client, one per journal.
#[derive(Debug)]
pub(crate) struct Pipeline {
    rpc: Rpc,
    /// The server's address, for the errors of a stream's broken connection.
    addr: Arc<str>,
    /// The client's per-call deadline ([`ClientBuilder::timeout`](crate::ClientBuilder::timeout)),
    /// applied to each append's wait for its ack, as it is to a unary call.
    timeout: Option<std::time::Duration>,
    streams: Mutex<HashMap<String, Queue>>,
    /// Set once the server answered UNIMPLEMENTED: every append goes unary from then on.
    unsupported: Arc<AtomicBool>,
}

impl Pipeline {
    pub(crate) fn new(
        rpc: Rpc,
        addr: Arc<str>,
        timeout: Option<std::time::Duration>,
    ) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            rpc,
            addr,
            timeout,
            streams: Mutex::new(HashMap::new()),
            unsupported: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Sends `request` on its journal's stream (opening one if there is none) and waits
    /// for its ack: the answer a unary Append would have given, as a `Status` for an error.
    /// `None` when no stream can be had (the client's [`MAX_OPEN_STREAMS`] are busy with
    /// other journals, or the server has no room): send it as a unary Append.
    pub(crate) async fn append(
        &self,
        request: AppendRequest,
    ) -> Option<Result<AppendResponse, Status>> {
        let (reply, answer) = oneshot::channel();
        self.send(request, reply)?;
        let answer = match self.timeout {
            None => answer.await,
            Some(timeout) => match tokio::time::timeout(timeout, answer).await {
                Ok(answer) => answer,
                Err(_) => {
                    return Some(Err(Status::deadline_exceeded(format!(
                        "no answer from ministore-server at {} within the client's timeout of {timeout:?}",
                        self.addr
                    ))));
                }
            },
        };
        match answer {
            Ok(Outcome::Answer(answer)) => Some(answer),
            Ok(Outcome::NoStream) => None,
            Err(_) => Some(Err(Status::unavailable(
                "the append stream ended before answering this append",
            ))),
        }
    }

    /// Queues the request on its journal's stream, opening one if needed; gives it back
    /// if there is no place for another stream.
    fn send(&self, request: AppendRequest, reply: Reply) -> Option<()> {
        if self.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        let mut streams = self.streams.lock().expect("pipeline lock");
        let item = match streams.get(&request.journal) {
            Some(stream) => match stream.send((request, reply)) {
                Ok(()) => return Some(()),
                // That stream ended since (idle, or failed): open another.
                Err(mpsc::error::SendError(item)) => item,
            },
            None => (request, reply),
        };
        streams.retain(|_, stream| !stream.is_closed());
        if streams.len() >= MAX_OPEN_STREAMS {
            return None;
        }
        let journal = item.0.journal.clone();
        let stream = open(
            self.rpc.clone(),
            self.addr.clone(),
            self.unsupported.clone(),
        );
        let _ = stream.send(item);
        streams.insert(journal, stream);
        Some(())
    }
}

/// Starts the task that runs one AppendStream; its queue of requests to send.
fn open(mut rpc: Rpc, addr: Arc<str>, unsupported: Arc<AtomicBool>) -> Queue {
    let (queue, mut incoming) = mpsc::unbounded_channel::<(AppendRequest, Reply)>();
    tokio::spawn(async move {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let mut requests = Some(requests);
        let mut waiting: VecDeque<Reply> = VecDeque::new();
        // Requests queued before the call is under way are sent as soon as it is.
        let call = rpc.append_stream(UnboundedReceiverStream::new(outgoing));
        tokio::pin!(call);
        let mut acks = loop {
            tokio::select! {
                answer = &mut call => match answer {
                    Ok(acks) => break acks.into_inner(),
                    Err(status) => {
                        incoming.close();
                        let code = status.code();
                        if code == tonic::Code::Unimplemented {
                            unsupported.store(true, Ordering::Relaxed);
                        }
                        let no_room = matches!(
                            code,
                            tonic::Code::ResourceExhausted | tonic::Code::Unimplemented
                        );
                        return answer_all(&mut waiting, &mut incoming, || match no_room {
                            true => Outcome::NoStream,
                            false => Outcome::Answer(Err(status.clone())),
                        });
                    }
                },
                Some((request, reply)) = incoming.recv() => {
                    waiting.push_back(reply);
                    let _ = requests.as_ref().map(|r| r.send(request));
                }
            }
        };
        let ended = loop {
            let idle = waiting.is_empty() && requests.is_some();
            tokio::select! {
                // Acks first: they free the callers, and the server's read-ahead.
                biased;
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => match waiting.pop_front() {
                        Some(reply) => {
                            let _ = reply.send(Outcome::Answer(answer_of(ack)));
                        }
                        None => break Status::internal(format!(
                            "the server acknowledged request {} of an append stream that had no request waiting",
                            ack.index
                        )),
                    },
                    Ok(None) => break Status::unavailable("the append stream ended"),
                    Err(status) => break broken(&addr, status),
                },
                item = incoming.recv(), if requests.is_some() => match item {
                    Some((request, reply)) => {
                        waiting.push_back(reply);
                        let _ = requests.as_ref().map(|r| r.send(request));
                    }
                    // The client is gone: half-close, and answer what is on its way.
                    None => requests = None,
                },
                () = tokio::time::sleep(IDLE), if idle => {
                    // Nobody is waiting: close the queue (appends from now on open a new
                    // stream), send what raced in before it closed, and half-close.
                    incoming.close();
                    while let Ok((request, reply)) = incoming.try_recv() {
                        waiting.push_back(reply);
                        let _ = requests.as_ref().map(|r| r.send(request));
                    }
                    requests = None;
                }
            }
        };
        // The server answers every request it read before it ends a stream, so those still
        // waiting were not read (or their acks were lost with the connection): retryable,
        // whatever ended the stream. Their retries, on a new stream, get their own answers
        // (their keys settle any that were in fact written).
        incoming.close();
        let unanswered = Status::unavailable(format!(
            "the append stream ended before this append was answered ({}: {}); retry it with its key",
            ended.code(),
            ended.message()
        ));
        answer_all(&mut waiting, &mut incoming, || {
            Outcome::Answer(Err(unanswered.clone()))
        });
    });
    queue
}

/// Answers every append on this stream, and any still queued for it, with `outcome`.
fn answer_all(
    waiting: &mut VecDeque<Reply>,
    incoming: &mut mpsc::UnboundedReceiver<(AppendRequest, Reply)>,
    outcome: impl Fn() -> Outcome,
) {
    for reply in waiting.drain(..) {
        let _ = reply.send(outcome());
    }
    while let Ok((_, reply)) = incoming.try_recv() {
        let _ = reply.send(outcome());
    }
}

/// The status a stream ended with; a connection that broke under it (tonic's `UNKNOWN`
/// with the transport's error as its source) as `UNAVAILABLE`, naming the server and why,
/// as the client's unary calls say it.
fn broken(addr: &str, status: Status) -> Status {
    match std::error::Error::source(&status) {
        Some(cause) if status.code() == tonic::Code::Unknown => Status::unavailable(format!(
            "lost the connection to ministore-server at {addr}: {}",
            with_causes(cause)
        )),
        _ => status,
    }
}

/// An ack as the unary Append would have answered it.
fn answer_of(ack: AppendAck) -> Result<AppendResponse, Status> {
    let Some(error) = ack.error else {
        return Ok(AppendResponse {
            seq: ack.seq,
            duplicate: ack.duplicate,
        });
    };
    let mut status = Status::new(tonic::Code::from(error.code), error.message);
    if status.code() == tonic::Code::Aborted
        && let Ok(value) = error.last_seq.to_string().parse()
    {
        status.metadata_mut().insert(LAST_SEQ_TRAILER, value);
    }
    Err(status)
}
