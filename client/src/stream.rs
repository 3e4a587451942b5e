//! [`RecordStream`]: a typed stream of records that resumes across reconnects.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

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
    rx: mpsc::Receiver<Result<proto::Record, ClientError>>,
    failed: bool,
    _record: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for RecordStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream").finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> Stream for RecordStream<T> {
    type Item = Result<(u64, T), ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(self.rx.poll_recv(cx));
        let item = item.map(|r| r.and_then(decode));
        self.failed = matches!(item, Some(Err(_)));
        Poll::Ready(item)
    }
}

pub(crate) fn open<T>(
    client: Client,
    journal: String,
    from_seq: u64,
    follow: bool,
) -> RecordStream<T> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(pump(client, journal, from_seq, follow, tx));
    RecordStream {
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
    tx: mpsc::Sender<Result<proto::Record, ClientError>>,
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
                        // Where the stream is (caught up, alive): this typed stream yields
                        // records only; the keepalive pings notice a dead connection.
                        Ok(Some(proto::StreamEvent {
                            event: Some(stream_event::Event::Record(record)),
                        })) => {
                            if record.seq < next {
                                continue; // already delivered before a reconnect
                            }
                            next = record.seq + 1;
                            delay = client.reconnect.first;
                            attempts_left = 5;
                            if tx.send(Ok(record)).await.is_err() {
                                return; // the consumer went away
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
