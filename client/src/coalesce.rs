//! Concurrent [`Client::append`](crate::Client::append) calls to one journal share RPCs.
//!
//! An append goes out at once, as its own `Append` RPC, while fewer than `max_in_flight`
//! appends to its journal are on the wire; otherwise it waits, and when one of those RPCs
//! returns, everything waiting goes in one `AppendBatch`. So a lone caller pays nothing (no
//! timer, no extra task), and many callers pay one RPC per batch instead of one per record:
//! on a 2-core machine gRPC itself, not the fsync, caps single-record RPCs at a few times
//! the disk's fsync rate, while the server's group commit takes any number of records per
//! fsync.
//!
//! Each caller still gets exactly its own answer. `AppendBatch` is all-or-nothing, so a
//! batch refused for a reason that may be one record's (INVALID_ARGUMENT, such as invalid
//! JSON, or RESOURCE_EXHAUSTED, such as an oversize record) wrote nothing, and each of its
//! records is then sent alone for its own verdict. Any other failure is every record's.
//!
//! # Keys, expectations and retries
//!
//! An `AppendBatch` carries one idempotency key and one expectation for all its records,
//! so sharing one must weaken neither a caller's key nor its expectation:
//!
//! - Only appends with no key of the caller's and no `expected_last_seq` (every
//!   [`Client::append`](crate::Client::append)) wait in a lane and may share a batch. An
//!   append with a key or an expectation goes out at once as its own `Append`, outside the
//!   lanes, and is retried with the caller's key (or a fresh one, for an expectation alone).
//! - Each waiting append gets a fresh key of its own when it arrives; it is the key of
//!   every `Append` that ever carries that record alone (a batch of one, or the
//!   record-by-record resend of a refused batch), so each record is written at most once.
//! - A batch of several gets a fresh key of its own, and every retry of it is the
//!   *identical* batch (same records, same order, same key): if an earlier attempt was
//!   written, the server answers with its seqs and writes nothing.
//! - A refused batch is resent record by record only if the refusal answered its first
//!   attempt. After a retry, an earlier attempt might have been written (the server checks
//!   a known key before it writes, but some refusals, such as `--max-journals`, come
//!   before that check), and resending its records under their own keys could write them
//!   twice; so every caller gets the refusal instead.
//! - A batch that [gave up](crate::ClientError::GaveUp) tells each caller so, without a
//!   key: the batch's key does not settle one record's fate. Callers that need that use a
//!   key of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ministore::proto::DEFAULT_JOURNAL;
use tokio::sync::oneshot;
use tonic::Code;

use crate::append::{AppendOptions, Appended, append_many, append_one};
use crate::pipeline::Pipeline;
use crate::retry::{Retry, new_key};
use crate::{ClientError, Rpc};

/// Most records one batch carries.
const MAX_BATCH_RECORDS: usize = 1024;
/// Most payload bytes one batch carries: well inside the server's default 16 MiB message
/// limit, so a batch is never refused for its size as a whole.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The appends of one client, lane by journal.
#[derive(Debug)]
pub(crate) struct Coalescer {
    rpc: Rpc,
    /// When set, every append goes on its journal's AppendStream, and no lanes are kept:
    /// the stream shares commits without batching.
    pipeline: Option<Arc<Pipeline>>,
    retry: Retry,
    /// Places per lane; 0: every append is its own RPC, and no lanes are kept.
    max_in_flight: usize,
    lanes: Mutex<HashMap<String, Lane>>,
}

/// One journal's appends: how many RPCs are on the wire, and who waits for one to return.
#[derive(Debug, Default)]
struct Lane {
    in_flight: usize,
    /// Empty unless all `max_in_flight` places are taken: a returning RPC takes the
    /// waiting before it gives up its place.
    waiting: Vec<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    payload: Vec<u8>,
    /// The key of any `Append` that carries this record alone.
    key: String,
    reply: oneshot::Sender<Result<Appended, ClientError>>,
}

impl Coalescer {
    /// Coalesces once `max_in_flight` appends to a journal are on the wire; 0 means never.
    pub(crate) fn new(
        rpc: Rpc,
        pipeline: Option<Arc<Pipeline>>,
        retry: Retry,
        max_in_flight: usize,
    ) -> Self {
        Coalescer {
            rpc,
            pipeline,
            retry,
            max_in_flight,
            lanes: Mutex::default(),
        }
    }

    /// Appends one JSON `payload` to `journal` as `options` say; its sequence number once
    /// it is durable.
    pub(crate) async fn append(
        self: &Arc<Self>,
        journal: &str,
        payload: Vec<u8>,
        options: AppendOptions,
    ) -> Result<Appended, ClientError> {
        if self.pipeline.is_some() || self.max_in_flight == 0 || !options.may_share() {
            let key = options.key.unwrap_or_else(new_key);
            let expected = options.expected_last_seq;
            let pipeline = self.pipeline.as_deref();
            return append_one(
                &self.rpc,
                pipeline,
                &self.retry,
                journal,
                payload,
                &key,
                expected,
            )
            .await;
        }
        let key = new_key();
        // What the server takes "" for, so that both spellings share one lane.
        let journal = if journal.is_empty() {
            DEFAULT_JOURNAL
        } else {
            journal
        };
        let place = {
            let mut lanes = self.lanes.lock().expect("append lanes");
            let lane = match lanes.get_mut(journal) {
                Some(lane) => lane,
                None => lanes.entry(journal.to_owned()).or_default(),
            };
            if lane.in_flight < self.max_in_flight {
                lane.in_flight += 1;
                Ok((payload, key))
            } else {
                let (reply, answer) = oneshot::channel();
                lane.waiting.push(Waiting {
                    payload,
                    key,
                    reply,
                });
                Err(answer)
            }
        };
        match place {
            Err(answer) => answer.await.unwrap_or_else(|_| {
                Err(ClientError::Protocol(
                    "the append was dropped before it was sent (the runtime is shutting down)"
                        .into(),
                ))
            }),
            Ok((payload, key)) => {
                // Hands the place on even if this future is dropped mid-call: the waiting
                // must not wait for an RPC nobody will finish.
                let _place = Place {
                    coalescer: self,
                    journal,
                };
                append_one(&self.rpc, None, &self.retry, journal, payload, &key, None).await
            }
        }
    }

    /// Called when an RPC of `journal`'s returns: sends what waits, or gives the place up.
    fn returned(self: &Arc<Self>, journal: &str) {
        let Some(batch) = self.next_batch(journal) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // An append future dropped outside any runtime: nothing can send for those
            // waiting, so they are told, and the place is given up.
            let mut batch = Some(batch);
            while let Some(waiting) = batch {
                for w in waiting {
                    let _ = w.reply.send(Err(ClientError::Protocol(
                        "the append before this one was dropped outside a tokio runtime, so nothing could send this one".into(),
                    )));
                }
                batch = self.next_batch(journal);
            }
            return;
        };
        let coalescer = self.clone();
        let journal = journal.to_owned();
        runtime.spawn(async move {
            let mut batch = Some(batch);
            while let Some(waiting) = batch {
                send_batch(&coalescer.rpc, &coalescer.retry, &journal, waiting).await;
                batch = coalescer.next_batch(&journal);
            }
        });
    }

    /// The next batch of `journal`'s waiting appends, keeping the place of the RPC that
    /// returned; `None` (and the place given up) if nothing waits.
    fn next_batch(&self, journal: &str) -> Option<Vec<Waiting>> {
        let mut lanes = self.lanes.lock().expect("append lanes");
        let lane = lanes
            .get_mut(journal)
            .expect("a lane with an RPC in flight");
        if lane.waiting.is_empty() {
            lane.in_flight -= 1;
            if lane.in_flight == 0 {
                lanes.remove(journal);
            }
            return None;
        }
        let mut bytes = 0;
        let take = lane
            .waiting
            .iter()
            .take(MAX_BATCH_RECORDS)
            .take_while(|w| {
                bytes += w.payload.len();
                bytes <= MAX_BATCH_BYTES
            })
            .count()
            .max(1);
        Some(lane.waiting.drain(..take).collect())
    }
}

/// An RPC's place in its lane, handed on when the RPC returns or is abandoned.
struct Place<'a> {
    coalescer: &'a Arc<Coalescer>,
    journal: &'a str,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.coalescer.returned(self.journal);
    }
}

/// Sends `batch` as one AppendBatch, retried as the identical batch with one fresh key,
/// and answers each of its callers.
async fn send_batch(rpc: &Rpc, retry: &Retry, journal: &str, mut batch: Vec<Waiting>) {
    if batch.len() == 1 {
        let one = batch.pop().expect("one");
        let answer = append_one(rpc, None, retry, journal, one.payload, &one.key, None).await;
        let _ = one.reply.send(answer);
        return;
    }
    // A copy stays behind: should the batch be refused, each record is sent again alone.
    let payloads = batch.iter().map(|w| w.payload.clone()).collect();
    match append_many(rpc, retry, journal, payloads, &new_key(), None, true).await {
        Ok(appended) => {
            for (seq, w) in appended.seqs.zip(batch) {
                let _ = w.reply.send(Ok(Appended {
                    seq,
                    duplicate: appended.duplicate,
                    attempts: appended.attempts,
                }));
            }
        }
        Err((ClientError::Rpc(status), 1))
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted
            ) =>
        {
            // Perhaps one record's fault, and nothing was written: each record goes again
            // alone, in the order its caller came, with its own key, for an answer of its
            // own.
            for w in batch {
                let answer = append_one(rpc, None, retry, journal, w.payload, &w.key, None).await;
                let _ = w.reply.send(answer);
            }
        }
        Err((error, _)) => {
            for w in batch {
                let _ = w.reply.send(Err(error.for_each_caller()));
            }
        }
    }
}
