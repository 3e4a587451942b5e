//! [`RecordStream`] and [`EventStream`]: typed streams of a journal that resume across
//! reconnects, with no gap and no duplicate: records only, or records and where the
//! stream is (caught up, heartbeats).

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use ministore::proto::{self, RecordFormat, StreamRequest, stream_event};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::Stream;

use crate::error::is_retryable;
use crate::{Client, ClientError, decode};

/// Records fetched ahead of the consumer. Bounded: a slow consumer slows the fetch, and
/// the server's flow control slows the server.
const BUFFER: usize = 256;

/// A stream of `(seq, T)` from [`Client::stream`]. Ends after an error.
pub struct RecordStream<T> {
    events: EventStream<T>,
}

/// What a stream from [`Client::events`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// A record, in seq order.
    Record {
        /// Its sequence number.
        seq: u64,
        /// The record.
        record: T,
        /// When it was committed (`None` for records written before the journal kept
        /// metadata).
        commit_time: Option<SystemTime>,
    },
    /// Every record durable when this was sent has been delivered: what follows is live.
    /// Sent (when following) when the stream first reaches the end, and again each time it
    /// reaches it after falling behind, or after a reconnect.
    CaughtUp {
        /// The journal's last seq.
        last_seq: u64,
    },
    /// Nothing happened for the heartbeat interval (30 s): the server and the stream are
    /// alive, and the journal is at `last_seq`.
    Heartbeat {
        /// The journal's last seq.
        last_seq: u64,
    },
}

/// A stream of [`Event`]s from [`Client::events`]. Ends after an error.
pub struct EventStream<T> {
    rx: mpsc::Receiver<Result<stream_event::Event, ClientError>>,
    failed: bool,
    _record: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for EventStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Stream for EventStream<T> {
    type Item = Result<Event<T>, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(self.rx.poll_recv(cx));
        let item = item.map(|r| r.and_then(typed));
        self.failed = matches!(item, Some(Err(_)));
        Poll::Ready(item)
    }
}

/// A wire event as an [`Event`].
fn typed<T: DeserializeOwned>(event: stream_event::Event) -> Result<Event<T>, ClientError> {
    Ok(match event {
        stream_event::Event::Record(record) => {
            let commit_time = record
                .commit_time
                .and_then(|t| SystemTime::try_from(t).ok());
            let (seq, record) = decode(record)?;
            Event::Record {
                seq,
                record,
                commit_time,
            }
        }
        stream_event::Event::CaughtUp(c) => Event::CaughtUp {
            last_seq: c.last_seq,
        },
        stream_event::Event::Heartbeat(h) => Event::Heartbeat {
            last_seq: h.last_seq,
        },
    })
}

impl<T> std::fmt::Debug for RecordStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream").finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Stream for RecordStream<T> {
    type Item = Result<(u64, T), ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Where the stream is does not concern a consumer of records: skipped. Each turn
        // takes one event out of a bounded channel, so this ends.
        loop {
            return Poll::Ready(
                match std::task::ready!(Pin::new(&mut self.events).poll_next(cx)) {
                    Some(Ok(Event::Record { seq, record, .. })) => Some(Ok((seq, record))),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                },
            );
        }
    }
}

pub(crate) fn open<T>(
    client: Client,
    journal: String,
    from_seq: u64,
    follow: bool,
) -> RecordStream<T> {
    RecordStream {
        events: open_events(client, journal, from_seq, follow),
    }
}

pub(crate) fn open_events<T>(
    client: Client,
    journal: String,
    from_seq: u64,
    follow: bool,
) -> EventStream<T> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(pump(client, journal, from_seq, follow, tx));
    EventStream {
        rx,
        failed: false,
        _record: PhantomData,
    }
}

/// Runs Stream RPCs until the journal ends (without follow), an error that retrying will
/// not cure, or the consumer going away. After a dropped connection it asks again from the
/// record after the last one delivered, and drops anything older: no gap, no duplicate.
async fn pump(
    client: Client,
    journal: String,
    from_seq: u64,
    follow: bool,
    tx: mpsc::Sender<Result<stream_event::Event, ClientError>>,
) {
    let mut next = from_seq;
    let mut delay = client.reconnect.first;
    // A stream that does not follow gives up after this many failed attempts in a row; a
    // following one retries for as long as its consumer waits.
    let mut attempts_left = 5;
    loop {
        let request = StreamRequest {
            journal: journal.clone(),
            from_seq: next,
            follow,
            format: RecordFormat::Payload as i32,
            heartbeat_seconds: 0,
        };
        let failure = match client.rpc.clone().stream(request).await {
            Ok(response) => {
                let mut records = response.into_inner();
                loop {
                    match records.message().await {
                        Ok(Some(proto::StreamEvent {
                            event: Some(stream_event::Event::Record(record)),
                        })) => {
                            if record.seq < next {
                                continue; // already delivered before a reconnect
                            }
                            next = record.seq + 1;
                            delay = client.reconnect.first;
                            attempts_left = 5;
                            let event = stream_event::Event::Record(record);
                            if tx.send(Ok(event)).await.is_err() {
                                return; // the consumer went away
                            }
                        }
                        // Where the stream is (caught up, alive).
                        Ok(Some(proto::StreamEvent { event: Some(event) })) => {
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => continue,
                        // Without follow, the end of the journal. With follow, the server
                        // closed the stream without an error: ask again.
                        Ok(None) if !follow => return,
                        Ok(None) => {
                            break tonic::Status::unavailable("stream closed by the server");
                        }
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        attempts_left -= 1;
        if !is_retryable(&failure) || (!follow && attempts_left == 0) {
            let _ = tx.send(Err(ClientError::Rpc(failure))).await;
            return;
        }
        tracing::debug!(journal, next, error = %failure, ?delay, "stream interrupted; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = tx.closed() => return,
        }
        delay = (delay * 2).min(client.reconnect.max);
    }
}
