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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ministore::proto::{AppendBatchRequest, AppendRequest, DEFAULT_JOURNAL, append_request};
use tokio::sync::oneshot;
use tonic::Code;

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
    reply: oneshot::Sender<Result<u64, ClientError>>,
}

impl Coalescer {
    /// Coalesces once `max_in_flight` appends to a journal are on the wire; 0 means never.
    pub(crate) fn new(rpc: Rpc, max_in_flight: usize) -> Self {
        Coalescer {
            rpc,
            max_in_flight,
            lanes: Mutex::default(),
        }
    }

    /// Appends one JSON `payload` to `journal`; its sequence number once it is durable.
    pub(crate) async fn append(
        self: &Arc<Self>,
        journal: &str,
        payload: Vec<u8>,
    ) -> Result<u64, ClientError> {
        if self.max_in_flight == 0 {
            return append_one(&self.rpc, journal, payload).await;
        }
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
                Ok(payload)
            } else {
                let (reply, answer) = oneshot::channel();
                lane.waiting.push(Waiting { payload, reply });
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
            Ok(payload) => {
                // Hands the place on even if this future is dropped mid-call: the waiting
                // must not wait for an RPC nobody will finish.
                let _place = Place {
                    coalescer: self,
                    journal,
                };
                append_one(&self.rpc, journal, payload).await
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
                send_batch(&coalescer.rpc, &journal, waiting).await;
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

async fn append_one(rpc: &Rpc, journal: &str, payload: Vec<u8>) -> Result<u64, ClientError> {
    let request = AppendRequest {
        journal: journal.to_owned(),
        record: Some(append_request::Record::Payload(payload)),
        ..Default::default()
    };
    Ok(rpc.clone().append(request).await?.into_inner().seq)
}

/// Sends `batch` as one AppendBatch and answers each of its callers.
async fn send_batch(rpc: &Rpc, journal: &str, mut batch: Vec<Waiting>) {
    if batch.len() == 1 {
        let one = batch.pop().expect("one");
        let _ = one.reply.send(append_one(rpc, journal, one.payload).await);
        return;
    }
    // A copy stays behind: should the batch be refused, each record is sent again alone.
    let request = AppendBatchRequest {
        journal: journal.to_owned(),
        payloads: batch.iter().map(|w| w.payload.clone()).collect(),
        values: Vec::new(),
        ..Default::default()
    };
    let sent = batch.len() as u64;
    match rpc.clone().append_batch(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            if reply.last_seq.checked_sub(reply.first_seq) != Some(sent - 1) {
                let error = format!(
                    "AppendBatch of {sent} records answered {}..={}",
                    reply.first_seq, reply.last_seq
                );
                for w in batch {
                    let _ = w.reply.send(Err(ClientError::Protocol(error.clone())));
                }
                return;
            }
            for (seq, w) in (reply.first_seq..).zip(batch) {
                let _ = w.reply.send(Ok(seq));
            }
        }
        Err(status)
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted
            ) =>
        {
            // Perhaps one record's fault, and nothing was written: each record goes again
            // alone, in the order its caller came, for an answer of its own.
            for w in batch {
                let _ = w.reply.send(append_one(rpc, journal, w.payload).await);
            }
        }
        Err(status) => {
            for w in batch {
                let _ = w.reply.send(Err(ClientError::Rpc(status.clone())));
            }
        }
    }
}
