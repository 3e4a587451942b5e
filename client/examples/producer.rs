//! Appends a few orders to the `orders` journal of a local ministore-server.
//!
//! ```sh
//! cargo run --release -p ministore-server          # in one terminal
//! cargo run -p ministore-client --example producer # in another
//! ```
//! Set `MINISTORE_ADDR` to use another server (default `127.0.0.1:50051`).

use ministore_client::Client;
use serde::Serialize;

#[derive(Serialize)]
struct Order {
    id: u64,
    item: &'static str,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<(), ministore_client::ClientError> {
    let addr = std::env::var("MINISTORE_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let client = Client::connect(addr).await?;

    let seq = client
        .append(
            "orders",
            &Order {
                id: 1,
                item: "tea",
                quantity: 2,
            },
        )
        .await?;
    println!("order 1 is record {seq}");

    let batch = [
        Order {
            id: 2,
            item: "milk",
            quantity: 1,
        },
        Order {
            id: 3,
            item: "bread",
            quantity: 3,
        },
    ];
    let seqs = client.append_batch("orders", &batch).await?;
    println!("orders 2 and 3 are records {seqs:?} (one fsync for both)");
    Ok(())
}
