//! Reading a Stream RPC's events: the records, past the `caught_up` and `heartbeat` events
//! a following stream also sends.

use ministore::proto::{Record, StreamEvent, stream_event};
use tonic::{Status, Streaming};

/// The records of a `Stream` RPC, one at a time.
#[allow(async_fn_in_trait)]
pub trait Records {
    /// The next record, skipping the events that are not records; `None` at the end.
    async fn record(&mut self) -> Result<Option<Record>, Status>;
}

impl Records for Streaming<StreamEvent> {
    async fn record(&mut self) -> Result<Option<Record>, Status> {
        loop {
            match self.message().await? {
                Some(StreamEvent {
                    event: Some(stream_event::Event::Record(record)),
                }) => return Ok(Some(record)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}
