//! The no-op ceiling: a `ministore.v1.Journal` server whose Append and AppendBatch answer at
//! once, served by tonic with the settings `ministore_server::Server::run` uses. What the
//! real server gets beyond this is the cost of validating, queueing and fsyncing; what this
//! gets at all is the cost of gRPC, HTTP/2 and loopback TCP on this machine.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ministore::proto::journal_server::{Journal, JournalServer};
use ministore::proto::{
    AppendAck, AppendBatchRequest, AppendBatchResponse, AppendRequest, AppendResponse, InfoRequest,
    InfoResponse, ListJournalsRequest, ListJournalsResponse, ReplayRequest, ReplayResponse,
    StreamEvent, StreamRequest,
};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// Answers appends with made-up sequence numbers and touches nothing else.
#[derive(Debug, Default)]
struct NoopJournal {
    next_seq: AtomicU64,
}

#[tonic::async_trait]
impl Journal for NoopJournal {
    async fn append(
        &self,
        _request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Response::new(AppendResponse {
            seq,
            duplicate: false,
        }))
    }

    async fn append_batch(
        &self,
        request: Request<AppendBatchRequest>,
    ) -> Result<Response<AppendBatchResponse>, Status> {
        let n = request.get_ref().payloads.len() as u64;
        let first_seq = self.next_seq.fetch_add(n, Ordering::Relaxed) + 1;
        Ok(Response::new(AppendBatchResponse {
            first_seq,
            last_seq: first_seq + n - 1,
            duplicate: false,
        }))
    }

    type AppendStreamStream = Pin<Box<dyn Stream<Item = Result<AppendAck, Status>> + Send>>;

    /// Acks each request as it arrives, in order.
    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let acks = futures_util::stream::unfold(
            (request.into_inner(), 0u64),
            |(mut requests, index)| async move {
                let Ok(Some(_)) = requests.message().await else {
                    return None;
                };
                let ack = AppendAck {
                    index,
                    seq: index + 1,
                    duplicate: false,
                    error: None,
                };
                Some((Ok(ack), (requests, index + 1)))
            },
        );
        Ok(Response::new(Box::pin(acks)))
    }

    async fn replay(
        &self,
        _request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        Err(Status::unimplemented("the no-op server only appends"))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, Status>> + Send>>;

    async fn stream(
        &self,
        _request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        Err(Status::unimplemented("the no-op server only appends"))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("the no-op server only appends"))
    }

    async fn list_journals(
        &self,
        _request: Request<ListJournalsRequest>,
    ) -> Result<Response<ListJournalsResponse>, Status> {
        Err(Status::unimplemented("the no-op server only appends"))
    }
}

/// Serves the no-op journal on a fresh `127.0.0.1:0` listener until `shutdown` resolves.
/// Returns the address and the serving task.
pub async fn spawn(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The transport settings of `ministore_server::Server::run` (which does not expose its
    // builder), from the server's default configuration: message limits, the per-request
    // deadline, HTTP/2 keepalive, TCP_NODELAY on each accepted socket (through
    // `TcpIncoming`: the builder's `tcp_nodelay` is ignored by `serve_with_incoming*`), and
    // an interceptor in front of the service (the server's token check, which passes every
    // request when no token file is given). Not copied: the response layer that corrects
    // two status codes (two header lookups per response).
    let config = ministore_server::Config::with_data_dir(".");
    let service = JournalServer::new(NoopJournal::default())
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes.max(16 << 20));
    let service = InterceptedService::new(service, |request: Request<()>| Ok(request));
    let builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(config.request_timeout_seconds))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let task = tokio::spawn(async move {
        let mut builder = builder;
        let served = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = served {
            eprintln!("no-op server failed: {e}");
        }
    });
    Ok((addr, task))
}
