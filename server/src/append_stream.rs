//! The AppendStream RPC: a producer's requests, each queued for its journal's writer as it
//! arrives, and answered in order as each commit becomes durable.
//!
//! One task per stream reads requests and sends acks. It queues request N+1 without waiting
//! for N's commit, so the records of one stream share group commits, the way 64 concurrent
//! unary callers do; it acknowledges strictly in request order, which is also seq order
//! for a journal, because requests are handed to the writer in that order.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::Poll;

use ministore::Appended;
use ministore::proto::{AppendAck, AppendError, AppendRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::auth::Grant;
use crate::backend::PendingCommit;
use crate::error::{LAST_SEQ_TRAILER, ServerError};
use crate::limits::StreamPermit;
use crate::metrics::OpenAppendStream;
use crate::service::JournalService;

/// Requests a stream may have read and not yet acknowledged.
pub const MAX_UNACKED: usize = 1024;
/// Bytes of records a stream may have read and not yet acknowledged; one more request is
/// read below it, so a single request larger than this still goes through.
pub const MAX_UNACKED_BYTES: usize = 1024 * 1024;
/// Acks made and not yet taken by HTTP/2: small, so a client that stops reading its acks
/// soon stops the stream from reading its requests.
const ACKS_BUFFERED: usize = 64;

/// The acks of one AppendStream, then its final status.
pub type AckStream = Pin<Box<dyn Stream<Item = Result<AppendAck, Status>> + Send>>;

/// Starts serving one AppendStream; its acks as tonic sends them.
pub fn start(
    service: JournalService,
    grant: Grant,
    permit: StreamPermit,
    shutdown: watch::Receiver<bool>,
    requests: Streaming<AppendRequest>,
) -> AckStream {
    let (acks, out) = mpsc::channel(ACKS_BUFFERED);
    let producer = Producer {
        _open: service.metrics().append_stream_opened(),
        service,
        grant,
        _permit: permit,
        shutdown,
        acks,
        waiting: VecDeque::new(),
        unacked_bytes: 0,
        next_index: 0,
    };
    tracing::debug!(method = "AppendStream", "stream opened");
    tokio::spawn(producer.run(requests));
    Box::pin(ReceiverStream::new(out))
}

/// One request read from the stream, in the order read.
enum Slot {
    /// Queued for its journal's writer: its record bytes, and its commit to come.
    Queued {
        index: u64,
        bytes: usize,
        commit: PendingCommit,
    },
    /// What became of it.
    Done {
        index: u64,
        bytes: usize,
        result: Result<Appended, ServerError>,
    },
}

struct Producer {
    // Held for the stream's lifetime: its count in ministore_append_streams_open.
    _open: OpenAppendStream,
    service: JournalService,
    grant: Grant,
    // Held for the stream's lifetime: its place in --max-streams.
    _permit: StreamPermit,
    shutdown: watch::Receiver<bool>,
    acks: mpsc::Sender<Result<AppendAck, Status>>,
    /// Read and not yet acknowledged, oldest first.
    waiting: VecDeque<Slot>,
    unacked_bytes: usize,
    next_index: u64,
}

impl Producer {
    /// Reads, queues and acknowledges until the client half-closes and every request is
    /// answered, or a failure of the journal or server, or shutdown, ends the stream (after
    /// answering each request already read), or the client goes away.
    async fn run(mut self, mut requests: Streaming<AppendRequest>) {
        let mut reading = true;
        let mut ended_by: Option<Status> = None;
        let mut shutdown = self.shutdown.clone();
        loop {
            let room = self.waiting.len() < MAX_UNACKED && self.unacked_bytes < MAX_UNACKED_BYTES;
            tokio::select! {
                // Acks first: they free room, and a client waits for them.
                biased;
                () = first_done(&mut self.waiting), if !self.waiting.is_empty() => {
                    let Some(Slot::Done { index, bytes, result }) = self.waiting.pop_front() else {
                        unreachable!("first_done returns once the first slot is done");
                    };
                    self.unacked_bytes -= bytes;
                    if let Err(e) = &result
                        && !e.is_request_error()
                    {
                        // The journal's failure, or the server's: read nothing more.
                        reading = false;
                        ended_by.get_or_insert_with(|| Status::from(e.clone()));
                    }
                    let ack = ack(index, result);
                    let code = ack.error.as_ref().map_or(tonic::Code::Ok, |e| tonic::Code::from(e.code));
                    self.service.metrics().append_acked(code);
                    if self.acks.send(Ok(ack)).await.is_err() {
                        return; // the client went away; what it sent is committed regardless
                    }
                }
                () = stopping(&mut shutdown), if reading => {
                    reading = false;
                    ended_by.get_or_insert_with(|| ServerError::ShuttingDown.into());
                }
                request = requests.message(), if reading && room => match request {
                    Ok(Some(request)) => self.queue(request).await,
                    // Half-closed: answer what was read, then end with OK.
                    Ok(None) => reading = false,
                    // A request that cannot be read (larger than --max-message-bytes, not
                    // protobuf), or the client went away: nothing more can be read. The
                    // request is answered in its turn with why, and ends the stream; to a
                    // client that went away, nothing is sent.
                    Err(status) => {
                        reading = false;
                        let index = self.take_index();
                        self.waiting.push_back(Slot::Done {
                            index,
                            bytes: 0,
                            result: Err(ServerError::Unreadable(status)),
                        });
                    }
                },
                else => break,
            }
        }
        tracing::debug!(
            method = "AppendStream",
            requests = self.next_index,
            ended_by = ended_by.as_ref().map(|s| s.message()),
            "stream ended"
        );
        if let Some(status) = ended_by {
            let _ = self.acks.send(Err(status)).await;
        }
    }

    /// Checks the request and hands it to its journal's writer, in the order read; a
    /// request refused here is answered in its turn like any other.
    async fn queue(&mut self, request: AppendRequest) {
        let index = self.take_index();
        let submitted = async {
            let (journal, append) = self.service.append_of(&self.grant, request).await?;
            let bytes: usize = append.lines.iter().map(|l| l.as_bytes().len()).sum();
            let commit = self.service.backend().submit(&journal, append).await?;
            Ok::<_, ServerError>((bytes, commit))
        }
        .await;
        let slot = match submitted {
            Ok((bytes, commit)) => {
                self.unacked_bytes += bytes;
                Slot::Queued {
                    index,
                    bytes,
                    commit,
                }
            }
            Err(e) => Slot::Done {
                index,
                bytes: 0,
                result: Err(e),
            },
        };
        self.waiting.push_back(slot);
    }

    /// The index of the next request read.
    fn take_index(&mut self) -> u64 {
        self.next_index += 1;
        self.next_index - 1
    }
}

/// Resolves once the first slot is done (waiting for its commit if needed). Cancel-safe:
/// a commit that completes is kept in its slot.
async fn first_done(waiting: &mut VecDeque<Slot>) {
    std::future::poll_fn(|cx| {
        let done = match waiting.front_mut() {
            None => return Poll::Pending,
            Some(Slot::Done { .. }) => return Poll::Ready(()),
            Some(Slot::Queued {
                index,
                bytes,
                commit,
            }) => match commit.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => Slot::Done {
                    index: *index,
                    bytes: *bytes,
                    result,
                },
            },
        };
        waiting[0] = done;
        Poll::Ready(())
    })
    .await
}

/// Resolves when the server starts shutting down; never, if nobody can signal it.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The ack of request `index`: its seq, or what Append would have answered.
fn ack(index: u64, result: Result<Appended, ServerError>) -> AppendAck {
    match result {
        Ok(appended) => AppendAck {
            index,
            seq: appended.seqs.start,
            duplicate: appended.duplicate,
            error: None,
        },
        Err(e) => {
            let status = Status::from(e);
            let last_seq = status
                .metadata()
                .get(LAST_SEQ_TRAILER)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            AppendAck {
                index,
                seq: 0,
                duplicate: false,
                error: Some(AppendError {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    last_seq,
                }),
            }
        }
    }
}
