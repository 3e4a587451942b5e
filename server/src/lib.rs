//! ministore-server: the ministore journal behind gRPC.
//!
//! The binary is a thin `main.rs` over [`serve`]; tests and embedders call [`serve`] with
//! their own listener (bind `127.0.0.1:0`) and shutdown signal.
//!
//! Data flows one way: [`service`] (the `ministore.v1.Journal` RPCs) -> [`journals`]
//! (validated names, one group-committing writer per journal) -> the `ministore` store ->
//! disk. Errors meet gRPC in one place: `From<ServerError> for tonic::Status` in [`error`].

#![warn(missing_docs)]

pub mod append_stream;
pub mod auth;
pub mod backend;
mod background;
pub mod config;
pub mod connections;
pub mod error;
pub mod journals;
pub mod limits;
pub mod metrics;
pub mod service;
mod value;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use ministore::proto::journal_server::JournalServer;
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::Authenticator;
use crate::backend::Backend;
use crate::backend::jetstream::JetStreamBackend;
use crate::backend::local::LocalBackend;
use crate::connections::ConnectionLimits;
use crate::limits::{ReadBudget, StreamLimits};
use crate::metrics::Metrics;

pub use config::{Config, LogFormat};
pub use error::ServerError;
pub use journals::Journals;
pub use service::JournalService;

/// Locks a std mutex; a panic elsewhere while it was held does not make its data unusable
/// here (each holder leaves it consistent between statements).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most threads of the async runtime's blocking pool in the `ministore-server` binary
/// (file reads, journal opens, large JSON): with `--writer-threads`, the fsync helpers (as
/// many) and one async worker per core, what bounds the process's threads (see README,
/// "Threads and descriptors").
pub const MAX_BLOCKING_THREADS: usize = 64;

/// Serves the journals of `config.data_dir` on `listener` until `shutdown` resolves:
/// [`Server::from_listener`] then [`Server::run`].
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), ministore_server::ServerError> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let config = ministore_server::Config::with_data_dir("./data");
/// ministore_server::serve(config, listener, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await
/// # }
/// ```
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::from_listener(config, listener)?.run(shutdown).await
}

/// A server that holds its data directory and its listening socket, ready to run.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listener: TcpListener,
    auth: Option<Authenticator>,
    tls: Option<ServerTlsConfig>,
    /// Bound for `--metrics-listen`, served once running.
    metrics_listener: Option<std::net::TcpListener>,
    /// `None` with a cluster backend, which has no data directory.
    _data_dir_lock: Option<std::fs::File>,
    /// A cluster backend's connection, made by [`Server::bind`] (else by [`Server::run`]).
    cluster: Option<JetStreamBackend>,
}

impl Server {
    /// Binds `config.listen`, then takes the data directory (refusing one another server
    /// holds), reads the TLS and token files and, with a cluster backend, connects to the
    /// cluster: everything that can fail at startup fails here, before the caller
    /// announces the server.
    ///
    /// # Errors
    /// [`ServerError::DataDirLocked`], or [`ServerError::Startup`] naming the directory,
    /// file, address or cluster that failed.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(config.listen.as_str())
            .await
            .map_err(|e| ServerError::Startup {
                op: "listening on",
                path: config.listen.to_string(),
                source: Arc::new(e),
            })?;
        let mut server = Server::from_listener(config, listener)?;
        if !server.config.is_local() {
            server.cluster = Some(JetStreamBackend::connect(&server.config).await?);
        }
        Ok(server)
    }

    /// Takes the data directory and serves on an already bound `listener` (tests bind
    /// `127.0.0.1:0`). A cluster backend is connected by [`Server::run`].
    pub fn from_listener(config: Config, listener: TcpListener) -> Result<Server, ServerError> {
        let lock = match config.is_local() {
            true => Some(lock_data_dir(&config.data_dir)?),
            false => None,
        };
        let (auth, tls) = load_security(&config)?;
        let metrics_listener = config
            .metrics_listen
            .as_deref()
            .map(bind_metrics)
            .transpose()?;
        Ok(Server {
            config,
            listener,
            auth,
            tls,
            metrics_listener,
            _data_dir_lock: lock,
            cluster: None,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the metrics endpoint, when `--metrics-listen` is given.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Serves until `shutdown` resolves.
    ///
    /// Shutdown is visible and orderly: health turns NOT_SERVING, open streams end with
    /// UNAVAILABLE, the server stops accepting and lets in-flight RPCs finish (for at most
    /// `--shutdown-grace-seconds`, after which remaining connections are closed), then every
    /// journal writer commits what is queued and closes. Returns once all of that is done.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            config,
            listener,
            auth,
            tls,
            metrics_listener,
            _data_dir_lock: lock,
            cluster,
        } = self;
        let metrics = Metrics::default();
        let mut journals = Journals::new(&config.data_dir, config.store_options())
            .with_max_open(config.max_journals)
            .with_writer_threads(config.writer_threads)
            .with_idle_close(std::time::Duration::from_secs(config.journal_idle_seconds))
            .with_warm_budget(config.warm_journal_bytes)
            .with_metrics(metrics.clone());
        if let Some(lock) = &lock {
            journals = journals.watch_data_dir(config.data_dir.join(LOCK_FILE), lock);
        }
        // With a cluster backend these local journals stay empty: metrics read them.
        let journals = Arc::new(journals);
        let backend: Arc<dyn Backend> = match config.is_local() {
            true => Arc::new(LocalBackend::new(journals.clone())),
            false => Arc::new(match cluster {
                Some(cluster) => cluster,
                None => JetStreamBackend::connect(&config).await?,
            }),
        };
        let watchdog = tokio::spawn({
            let journals = journals.clone();
            let local = lock.is_some();
            async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                while local && journals.check_data_dir_now() {
                    every.tick().await;
                    // Closing idle journals' files blocks briefly: off the runtime.
                    let sweeping = journals.clone();
                    let _ = tokio::task::spawn_blocking(move || sweeping.sweep()).await;
                }
            }
        });
        let (stop_streams, streams_stop) = tokio::sync::watch::channel(false);
        let streams = StreamLimits::new(config.max_streams, config.max_streams_per_connection);
        let service = JournalService::with_backend(
            backend.clone(),
            config.max_payload_bytes,
            streams,
            ReadBudget::new(config.max_read_bytes),
            streams_stop,
        )
        .with_metrics(metrics.clone());
        let journal_server = JournalServer::new(service)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes.max(16 << 20));
        let journal_auth = RequireToken(auth.clone());
        let other_auth = RequireToken(auth.filter(|_| config.auth_all_services));

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<JournalServer<JournalService>>().await;
        // Health follows the backend (a server cut off from its cluster is NOT_SERVING)
        // until shutdown, which sets it for good.
        let follow_backend = tokio::spawn({
            let (health, mut reachable) = (health.clone(), backend.watch_reachable());
            async move {
                loop {
                    let status = match *reachable.borrow_and_update() {
                        true => tonic_health::ServingStatus::Serving,
                        false => tonic_health::ServingStatus::NotServing,
                    };
                    health
                        .set_service_status(JournalServer::<JournalService>::NAME, status)
                        .await;
                    health.set_service_status("", status).await;
                    if reachable.changed().await.is_err() {
                        return;
                    }
                }
            }
        });
        // Both reflection versions (grpcurl 1.8 asks for v1alpha) describe the same files.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ministore::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .expect("the embedded descriptor set is valid");
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("the embedded descriptor set is valid");

        let metrics_server = match metrics_listener {
            Some(std_listener) => {
                let metrics_addr = std_listener
                    .local_addr()
                    .map_or_else(|e| format!("an unknown address ({e})"), |a| a.to_string());
                let listener =
                    TcpListener::from_std(std_listener).map_err(|e| ServerError::Startup {
                        op: "serving metrics on",
                        path: metrics_addr.clone(),
                        source: Arc::new(e),
                    })?;
                tracing::info!(addr = %metrics_addr, "serving metrics at /metrics");
                Some(tokio::spawn(metrics::serve(
                    listener,
                    metrics.registry(journals.clone()),
                )))
            }
            None => None,
        };
        let local = listener
            .local_addr()
            .map_or_else(|e| format!("an unknown address ({e})"), |a| a.to_string());
        let connections = ConnectionLimits::from_config(&config);
        match config.is_local() {
            true => {
                tracing::info!(addr = %local, data_dir = %config.data_dir.display(), "serving; {}", config.retention_summary())
            }
            false => {
                tracing::info!(addr = %local, backend = %config.backend, "serving; {}", config.retention_summary())
            }
        }

        let (signalled, grace_starts) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!(
                "shutting down: health NOT_SERVING, ending streams, finishing in-flight RPCs"
            );
            follow_backend.abort();
            let _ = follow_backend.await;
            health
                .set_not_serving::<JournalServer<JournalService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = stop_streams.send(true);
            let _ = signalled.send(());
        };
        let mut builder = tonic::transport::Server::builder()
            .timeout(std::time::Duration::from_secs(
                config.request_timeout_seconds,
            ))
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .initial_stream_window_size(ministore::proto::STREAM_WINDOW)
            .initial_connection_window_size(ministore::proto::CONNECTION_WINDOW);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(|e| ServerError::Startup {
                op: "configuring TLS from",
                path: format!("{:?}", config.tls_cert),
                source: Arc::new(std::io::Error::other(e)),
            })?;
        }
        let serving = builder
            .layer(connections.first_request_layer())
            // Outside the layers below, so it records the status codes they correct.
            .layer(metrics.rpc_layer())
            .layer(tower::util::MapResponseLayer::new(
                client_errors_keep_client_codes::<tonic::body::Body>,
            ))
            .layer(tower::util::MapResponseLayer::new(limits::hold_until_sent))
            .add_service(InterceptedService::new(health_service, other_auth.clone()))
            .add_service(InterceptedService::new(reflection_v1, other_auth.clone()))
            .add_service(InterceptedService::new(reflection_v1alpha, other_auth))
            .add_service(InterceptedService::new(journal_server, journal_auth))
            .serve_with_incoming_shutdown(connections.incoming(listener), signal);
        let grace = std::time::Duration::from_secs(config.shutdown_grace_seconds);
        // A client that never lets its connection close (frozen, or hostile) must not keep
        // the server from stopping: after the grace period, its connection is dropped.
        let served = tokio::select! {
            served = serving => served,
            _ = async {
                if grace_starts.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(?grace, "connections still open after the grace period; closing them");
                Ok(())
            }
        };
        watchdog.abort();
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        backend.shut_down().await;
        drop(lock);
        tracing::info!("stopped");
        served.map_err(|e| ServerError::Startup {
            op: "serving on",
            path: local,
            source: Arc::new(std::io::Error::other(e)),
        })
    }
}

/// Checks bearer tokens when a token file is configured; lets everything through otherwise.
#[derive(Debug, Clone)]
struct RequireToken(Option<Authenticator>);

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.0 {
            Some(auth) => auth.intercept(request),
            None => Ok(request),
        }
    }
}

/// Corrects the codes tonic gives to the client's own mistakes, which it reports before
/// our code runs, in a response's status (see [`error::client_code`]).
fn client_errors_keep_client_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    let code = headers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok()?.parse::<i32>().ok())
        .map(tonic::Code::from);
    if let Some(code) = code {
        let corrected = error::client_code(code, &message);
        if corrected != code {
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from(corrected as i32));
        }
    }
    response
}

/// Reads the token file and the TLS files named by `config`, at startup, so that a bad
/// path fails before the server reports itself listening.
fn load_security(
    config: &Config,
) -> Result<(Option<Authenticator>, Option<ServerTlsConfig>), ServerError> {
    let auth = config
        .auth_tokens
        .as_deref()
        .map(Authenticator::from_file)
        .transpose()?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ServerError::Startup {
            op: "reading",
            path: path.display().to_string(),
            source: Arc::new(e),
        })
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let mut tls =
                ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
            if let Some(ca) = &config.tls_client_ca {
                tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
            }
            Some(tls)
        }
        _ => None,
    };
    Ok((auth, tls))
}

/// Binds `--metrics-listen`: a startup failure like the main address's.
fn bind_metrics(addr: &str) -> Result<std::net::TcpListener, ServerError> {
    let startup = |e| ServerError::Startup {
        op: "listening for metrics on",
        path: addr.to_owned(),
        source: Arc::new(e),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(startup)?;
    listener.set_nonblocking(true).map_err(startup)?;
    Ok(listener)
}

/// The data directory's lock file, held by the one server using it.
const LOCK_FILE: &str = ".ministore.lock";

/// Takes `data_dir/.ministore.lock`: two servers on one directory would interleave their
/// writes. Held until the returned file is dropped.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, ServerError> {
    let startup = |op, path: &Path, e| ServerError::Startup {
        op,
        path: path.display().to_string(),
        source: Arc::new(e),
    };
    let created = !data_dir.is_dir();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| startup("creating data directory", data_dir, e))?;
    // A new directory is only an entry in its parent until the parent is fsynced: without
    // this, a power loss could take the data directory, and the records acknowledged in it.
    if created && let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| startup("fsyncing the parent of the data directory", parent, e))?;
    }
    let lock = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| startup("opening", &lock, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServerError::DataDirLocked {
            path: data_dir.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(startup("locking", &lock, e)),
    }
}
