//! Reading a Stream RPC's events: the records, past the `caught_up` and `heartbeat` events
//! a following stream also sends, each within a bound so that a test never hangs.

use std::time::Duration;

use ministore::proto::{Record, StreamEvent, StreamRequest, stream_event};
use tonic::{Status, Streaming};

/// The longest a test waits for a stream's next message: a regression fails, not hangs.
pub const EVENT_BOUND: Duration = Duration::from_secs(30);

/// The records of a `Stream` RPC, one at a time.
#[allow(async_fn_in_trait)]
pub trait Records {
    /// The next record, skipping the events that are not records; `None` at the end.
    /// `DEADLINE_EXCEEDED` if nothing comes within [`EVENT_BOUND`].
    async fn record(&mut self) -> Result<Option<Record>, Status>;
}

impl Records for Streaming<StreamEvent> {
    async fn record(&mut self) -> Result<Option<Record>, Status> {
        loop {
            let message = tokio::time::timeout(EVENT_BOUND, self.message())
                .await
                .map_err(|_| Status::deadline_exceeded("the test saw no stream message in 30 s"))?;
            match message? {
                Some(StreamEvent {
                    event: Some(stream_event::Event::Record(record)),
                }) => return Ok(Some(record)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}

/// A following Stream of `journal` from `from_seq` on `client`'s connection (the raw
/// stub: the typed stream would hide a cut by reconnecting), once its first record has
/// arrived, which proves it open.
pub async fn follower(
    client: &ministore_client::Client,
    journal: &str,
    from_seq: u64,
) -> (Streaming<StreamEvent>, Record) {
    let mut events = client
        .raw()
        .stream(StreamRequest {
            journal: journal.into(),
            from_seq,
            follow: true,
            format: 0,
            heartbeat_seconds: 0,
        })
        .await
        .expect("opening a following stream")
        .into_inner();
    let first = events
        .record()
        .await
        .expect("the follower's first record")
        .expect("the follower ended before its first record");
    (events, first)
}
