//! Appends with a key and an expectation: [`AppendOptions`], what comes back, and the two
//! RPCs that carry them, each retried with its key.

use std::ops::RangeInclusive;

use ministore::proto::{AppendBatchRequest, AppendRequest, append_request};

use crate::pipeline::Pipeline;
use crate::retry::Retry;
use crate::{ClientError, Rpc};

/// How one append is sent: its idempotency key and the journal's last sequence number it
/// expects. See [`Client::append_with`](crate::Client::append_with).
///
/// ```
/// use ministore_client::AppendOptions;
/// // Written at most once however often it is sent, and only right after record 7.
/// let options = AppendOptions::new().key("order-42").expected_last_seq(7);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOptions {
    pub(crate) key: Option<String>,
    pub(crate) expected_last_seq: Option<u64>,
}

impl AppendOptions {
    /// No key of the caller's (the client makes a fresh random one) and no expectation:
    /// what [`Client::append`](crate::Client::append) sends.
    pub fn new() -> Self {
        AppendOptions::default()
    }

    /// The idempotency key (at most 128 bytes; e.g. `"order-42-created"`): the journal
    /// writes a request with this key once, and answers any later one with the same key and
    /// records with the original sequence number(s) and
    /// [`duplicate`](Appended::duplicate) set, across restarts and rotations, as long as
    /// the server remembers the key (`--dedupe-keys`). The same key with other records is
    /// `ALREADY_EXISTS`, never retried.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Write only if the journal's last sequence number is `seq` (0: the journal has no
    /// records yet); otherwise nothing is written and the append fails with `ABORTED`,
    /// never retried, whose [`ClientError::last_seq`] is the journal's last sequence number.
    /// A retry of an append that was in fact written still gets its sequence number: the
    /// server answers a known key before it checks the expectation.
    pub fn expected_last_seq(mut self, seq: u64) -> Self {
        self.expected_last_seq = Some(seq);
        self
    }

    /// Neither a key of the caller's nor an expectation: the append may share an
    /// `AppendBatch` (with a key of that batch's) without weakening either.
    pub(crate) fn may_share(&self) -> bool {
        self.key.is_none() && self.expected_last_seq.is_none()
    }
}

/// A durable append: see [`Client::append_with`](crate::Client::append_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// The key was already committed, so nothing was written and `seq` is the original
    /// record's: an earlier request with the caller's key, or an earlier attempt of this
    /// very call whose answer was lost.
    pub duplicate: bool,
    /// How many attempts were sent (1 unless an outage was retried).
    pub attempts: u32,
}

/// A durable batch: see [`Client::append_batch_with`](crate::Client::append_batch_with).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendedBatch {
    /// The records' sequence numbers, in the order given.
    pub seqs: RangeInclusive<u64>,
    /// As in [`Appended::duplicate`]: the whole batch was already committed.
    pub duplicate: bool,
    /// How many attempts were sent.
    pub attempts: u32,
}

/// One `Append` of `payload` with `key`, retried while the failure may be an outage.
/// With a `pipeline`, each attempt goes on the journal's AppendStream (or as a unary Append
/// when no stream can be had); without, as a unary Append.
pub(crate) async fn append_one(
    rpc: &Rpc,
    pipeline: Option<&Pipeline>,
    retry: &Retry,
    journal: &str,
    payload: Vec<u8>,
    key: &str,
    expected_last_seq: Option<u64>,
) -> Result<Appended, ClientError> {
    let request = AppendRequest {
        journal: journal.to_owned(),
        record: Some(append_request::Record::Payload(payload)),
        idempotency_key: key.to_owned(),
        expected_last_seq,
    };
    let (reply, attempts) = retry
        .run(key, false, || {
            // The identical request each time: the key settles what an earlier attempt did.
            let (mut rpc, request) = (rpc.clone(), request.clone());
            async move {
                if let Some(answer) = match pipeline {
                    Some(pipeline) => pipeline.append(request.clone()).await,
                    None => None,
                } {
                    return answer;
                }
                Ok(rpc.append(request).await?.into_inner())
            }
        })
        .await;
    let reply = reply?;
    Ok(Appended {
        seq: reply.seq,
        duplicate: reply.duplicate,
        attempts,
    })
}

/// One `AppendBatch` of `payloads` with `key`, retried while the failure may be an outage;
/// `shared` if the batch carries several callers' records. The error comes with the
/// number of attempts sent.
pub(crate) async fn append_many(
    rpc: &Rpc,
    retry: &Retry,
    journal: &str,
    payloads: Vec<Vec<u8>>,
    key: &str,
    expected_last_seq: Option<u64>,
    shared: bool,
) -> Result<AppendedBatch, (ClientError, u32)> {
    let sent = payloads.len() as u64;
    let request = AppendBatchRequest {
        journal: journal.to_owned(),
        payloads,
        values: Vec::new(),
        idempotency_key: key.to_owned(),
        expected_last_seq,
    };
    let (reply, attempts) = retry
        .run(key, shared, || {
            let (mut rpc, request) = (rpc.clone(), request.clone());
            async move { Ok(rpc.append_batch(request).await?.into_inner()) }
        })
        .await;
    let reply = reply.map_err(|e| (e, attempts))?;
    if reply.last_seq.checked_sub(reply.first_seq) != sent.checked_sub(1) {
        let error = format!(
            "AppendBatch of {sent} records answered {}..={}",
            reply.first_seq, reply.last_seq
        );
        return Err((ClientError::Protocol(error), attempts));
    }
    Ok(AppendedBatch {
        seqs: reply.first_seq..=reply.last_seq,
        duplicate: reply.duplicate,
        attempts,
    })
}
