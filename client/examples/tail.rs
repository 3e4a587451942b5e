//! `tail -f` for a journal: prints every record of a journal, then new ones as they are
//! appended, surviving server restarts without missing or repeating a record.
//!
//! ```sh
//! cargo run -p ministore-client --example tail -- orders
//! ```
//! Set `MINISTORE_ADDR` to use another server (default `127.0.0.1:50051`).

use ministore_client::ClientBuilder;
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), ministore_client::ClientError> {
    let journal = std::env::args().nth(1).unwrap_or_else(|| "orders".into());
    let addr = std::env::var("MINISTORE_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    // Lazy: the tail starts even if the server is not up yet, and waits for it.
    let client = ClientBuilder::new(addr).connect_lazy()?;
    let mut records = client.stream::<serde_json::Value>(&journal, 0, true);
    while let Some(record) = records.next().await {
        let (seq, value) = record?;
        println!("{seq}\t{value}");
    }
    Ok(())
}
