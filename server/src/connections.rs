//! Admitting and bounding TCP connections, so that clients that connect and then say
//! nothing cannot use up the server's connections, file descriptors or CPU.
//!
//! - [`Incoming`] is the accept loop tonic serves from. When the process is out of
//!   descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) it closes the oldest waiting
//!   connection and backs off (50 ms doubling to 1 s) instead of retrying at once: the
//!   pending connection stays in the kernel's backlog, so an immediate retry fails again
//!   and the loop would spin on a core.
//! - [`ConnectionLimits`] admits at most its cap of connections. A connection is *waiting*
//!   until its first HTTP/2 request arrives (so TLS and the HTTP/2 preface are done). At the
//!   cap, a new connection closes the oldest waiting one; if none is waiting, the new one is
//!   closed at once. A waiting connection is closed after the handshake timeout.
//! - [`FirstRequestLayer`] tells the limits when a connection's first request arrives.
//!
//! Closing a waiting connection works through its [`Connection`]: its next read or write
//! fails, and both the eviction signal and the deadline wake the task that polls it, so a
//! peer that never sends a byte is dropped all the same.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Sleep;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::Config;

/// The fewest connections the server allows, whatever its open-files limit: fewer would
/// make it unreachable rather than protected.
pub const MIN_CONNECTIONS: usize = 16;

/// Descriptors kept for what is neither a connection, a journal nor a stream: stdio, the
/// listener, the data directory's lock, the runtime's epoll and wakers, and files opened
/// for a moment (a directory to fsync it, a segment being rotated).
pub const BASE_DESCRIPTORS: u64 = 64;

/// Descriptors one open journal may hold: its lock file, its active segment, and one
/// opened for a moment to sync its directory or rotate.
pub const DESCRIPTORS_PER_JOURNAL: u64 = 3;

/// How often a repeated condition (out of descriptors, at the cap) is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Connections refused or failed in one poll of the accept loop before it yields, so a
/// flood cannot keep the loop's thread from everything else.
const ACCEPTS_PER_POLL: usize = 64;

/// Raises this process's soft limit on open files to its hard limit, so that the
/// connection cap rather than EMFILE decides who is served. Returns the soft limit before
/// and after.
///
/// # Errors
/// The OS error of `getrlimit` or `setrlimit`.
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// This process's soft limit on open files.
///
/// # Errors
/// The OS error of `getrlimit`.
pub fn open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// The connection cap that fits in `open_files` descriptors:
/// `min(max_connections, max(16, open_files - (64 + 3 × max_journals + max_streams)))`.
///
/// Every open journal may hold 3 descriptors and every Stream RPC one (the segment it
/// reads), so connections get what is left. Never below [`MIN_CONNECTIONS`] (unless
/// `max_connections` is lower), even when that could run out of descriptors: the accept
/// loop then backs off instead of spinning.
///
/// ```
/// use ministore_server::connections::connection_cap;
/// assert_eq!(connection_cap(1000, 1024, 1024, 1 << 20), 1000);
/// assert_eq!(connection_cap(1000, 100, 100, 1024), 1024 - 64 - 300 - 100);
/// assert_eq!(connection_cap(1000, 1024, 1024, 1024), 16);
/// assert_eq!(connection_cap(4, 1024, 1024, 1024), 4);
/// ```
pub fn connection_cap(
    max_connections: usize,
    max_journals: usize,
    max_streams: usize,
    open_files: u64,
) -> usize {
    let reserved = BASE_DESCRIPTORS
        .saturating_add(DESCRIPTORS_PER_JOURNAL.saturating_mul(max_journals as u64))
        .saturating_add(max_streams as u64);
    let left = usize::try_from(open_files.saturating_sub(reserved)).unwrap_or(usize::MAX);
    max_connections.min(left.max(MIN_CONNECTIONS))
}

/// Counts the open connections and knows which of them are still waiting for their first
/// request, oldest first.
#[derive(Debug)]
pub struct ConnectionLimits {
    max: usize,
    handshake_timeout: Duration,
    state: Mutex<State>,
    /// `state.waiting.len()`, readable without the lock: with no connection waiting (the
    /// usual case), a request costs one atomic load here rather than a lock and a lookup.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    next_id: u64,
    /// Waiting connections by id: ids grow, so the first is the oldest.
    waiting: BTreeMap<u64, SocketAddr>,
    /// Waiting connections by peer address, which is how a request names its connection
    /// (one peer address and port per live TCP connection).
    by_peer: HashMap<SocketAddr, Waiting>,
    evictions: RateLimited,
    refusals: RateLimited,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    /// Sending closes the connection; dropping it tells the connection its first request
    /// arrived.
    evict: oneshot::Sender<()>,
}

impl ConnectionLimits {
    /// At most `max` connections; a connection without a request after
    /// `handshake_timeout` is closed.
    pub fn new(max: usize, handshake_timeout: Duration) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max,
            handshake_timeout,
            state: Mutex::new(State::default()),
            waiting: AtomicUsize::new(0),
        })
    }

    /// The limits `config` asks for, with the cap lowered to fit this process's open-files
    /// limit ([`connection_cap`]); logs the cap, and warns when it was lowered.
    pub fn from_config(config: &Config) -> Arc<ConnectionLimits> {
        let open_files = open_files_limit().unwrap_or_else(|e| {
            tracing::warn!("cannot read the open-files limit ({e}); assuming it is ample");
            u64::MAX
        });
        // A writer thread that reopened a journal closes another only after replying: one
        // more journal per writer thread may have its files open for a moment.
        let max = connection_cap(
            config.max_connections,
            config.max_journals.saturating_add(config.writer_threads),
            config.max_streams,
            open_files,
        );
        if max < config.max_connections {
            tracing::warn!(
                open_files,
                max_connections = max,
                "the open-files limit leaves room for only {max} connections (--max-connections \
                 is {}): {BASE_DESCRIPTORS} + {DESCRIPTORS_PER_JOURNAL} per journal \
                 (--max-journals {} + --writer-threads {}) + 1 per stream (--max-streams {}) \
                 are kept for files; raise the limit (ulimit -n) or lower those flags",
                config.max_connections,
                config.max_journals,
                config.writer_threads,
                config.max_streams,
            );
        }
        tracing::info!(
            max_connections = max,
            handshake_timeout_seconds = config.handshake_timeout_seconds,
            max_concurrent_streams = config.max_concurrent_streams,
            open_files,
            "connection limits"
        );
        ConnectionLimits::new(max, Duration::from_secs(config.handshake_timeout_seconds))
    }

    /// The cap on open connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().expect("connection limits lock").open
    }

    /// The accept loop over `listener`, admitting connections within these limits.
    pub fn incoming(self: &Arc<Self>, listener: TcpListener) -> Incoming {
        Incoming {
            listener,
            limits: self.clone(),
            backoff: None,
            next_backoff: FIRST_BACKOFF,
            accept_errors: RateLimited::default(),
        }
    }

    /// The layer that ends each connection's wait at its first request.
    pub fn first_request_layer(self: &Arc<Self>) -> FirstRequestLayer {
        FirstRequestLayer(self.clone())
    }

    /// Admits `stream` (closing the oldest waiting connection if at the cap), or `None`:
    /// at the cap with nobody waiting, `stream` is dropped, which closes it.
    fn admit(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Option<Connection> {
        let mut state = self.state.lock().expect("connection limits lock");
        if state.open >= self.max {
            if !state.evict_oldest() {
                if let Some(suppressed) = state.refusals.due() {
                    tracing::warn!(
                        max_connections = self.max,
                        refused_since_last_warning = suppressed,
                        "refusing connections: all {} allowed are open and have sent requests \
                         (--max-connections)",
                        self.max
                    );
                }
                return None;
            }
            if let Some(suppressed) = state.evictions.due() {
                tracing::warn!(
                    max_connections = self.max,
                    evicted_since_last_warning = suppressed,
                    "at the connection cap (--max-connections {}): closing the oldest \
                     connection that has not sent a request, to admit a new one",
                    self.max
                );
            }
        }
        // An evicted connection still holds its descriptor until its task next runs
        // (microseconds), so `open` may pass `max` by the evictions in flight; counting
        // them keeps `open` the number of sockets we really hold.
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        state.waiting.insert(id, peer);
        if let Some(old) = state.by_peer.insert(peer, Waiting { id, evict }) {
            // The same address and port again: the kernel has closed the old connection,
            // and we close what is left of it.
            state.waiting.remove(&old.id);
            let _ = old.evict.send(());
        }
        self.waiting.store(state.waiting.len(), Ordering::Release);
        drop(state);
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(peer),
        };
        Some(Connection {
            stream,
            info,
            id,
            peer,
            handshake: Handshake::Waiting {
                evicted,
                deadline: Box::pin(tokio::time::sleep(self.handshake_timeout)),
            },
            limits: self.clone(),
        })
    }

    /// Closes the oldest waiting connection, to make room when descriptors ran out.
    fn evict_oldest(&self) -> bool {
        let mut state = self.state.lock().expect("connection limits lock");
        let evicted = state.evict_oldest();
        self.waiting.store(state.waiting.len(), Ordering::Release);
        evicted
    }

    /// The connection from `peer` sent a request: it is no longer waiting.
    fn first_request(&self, peer: SocketAddr) {
        let mut state = self.state.lock().expect("connection limits lock");
        if let Some(waiting) = state.by_peer.remove(&peer) {
            state.waiting.remove(&waiting.id);
            // Dropping `waiting.evict` wakes the connection, which then stops its timer.
            self.waiting.store(state.waiting.len(), Ordering::Release);
        }
    }

    fn release(&self, id: u64, peer: SocketAddr) {
        let mut state = self.state.lock().expect("connection limits lock");
        state.open -= 1;
        if state.waiting.remove(&id).is_some() {
            state.by_peer.remove(&peer);
            self.waiting.store(state.waiting.len(), Ordering::Release);
        }
    }
}

impl State {
    fn evict_oldest(&mut self) -> bool {
        let Some((_, peer)) = self.waiting.pop_first() else {
            return false;
        };
        if let Some(waiting) = self.by_peer.remove(&peer) {
            let _ = waiting.evict.send(());
        }
        true
    }
}

/// Logs a repeated condition at most every [`WARN_EVERY`], with how often it happened
/// in between.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    /// `Some(times suppressed since the last log)` when it is time to log again.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The accept loop: a stream of admitted [`Connection`]s for tonic's
/// `serve_with_incoming_shutdown`. It never yields an error: what accept reports is
/// handled here (skipped, or backed off from).
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    backoff: Option<Pin<Box<Sleep>>>,
    next_backoff: Duration,
    accept_errors: RateLimited,
}

impl Stream for Incoming {
    type Item = Result<Connection, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        for _ in 0..ACCEPTS_PER_POLL {
            if let Some(backoff) = &mut this.backoff {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.backoff = None;
            }
            let error = match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, peer))) => {
                    this.next_backoff = FIRST_BACKOFF;
                    // Without it, small replies wait for Nagle's algorithm (40 ms per
                    // Replay page).
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "setting TCP_NODELAY: {e}");
                    }
                    match this.limits.admit(stream, peer) {
                        Some(connection) => return Poll::Ready(Some(Ok(connection))),
                        None => continue,
                    }
                }
                Poll::Ready(Err(e)) => e,
            };
            match AcceptError::of(&error) {
                // That one connection failed before we took it; the next one may be fine.
                AcceptError::Transient => tracing::debug!("accept: {error}"),
                kind => {
                    let evicted = kind == AcceptError::OutOfResources && this.limits.evict_oldest();
                    let delay = this.next_backoff;
                    if let Some(suppressed) = this.accept_errors.due() {
                        tracing::warn!(
                            errors_since_last_warning = suppressed,
                            open_connections = this.limits.open(),
                            closed_a_waiting_connection = evicted,
                            "accepting connections failed ({error}); retrying in {delay:?}"
                        );
                    }
                    this.backoff = Some(Box::pin(tokio::time::sleep(delay)));
                    this.next_backoff = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// Out of descriptors or kernel memory: retrying at once fails again.
    OutOfResources,
    /// One connection failed (reset or aborted before we took it); accept may go on.
    Transient,
    /// Anything else: retried after a pause, since it may well persist.
    Other,
}

impl AcceptError {
    fn of(error: &io::Error) -> AcceptError {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptError::OutOfResources
            }
            // accept(2) on Linux: "already-pending network errors" are to be treated like
            // EAGAIN, and so are a connection aborted or reset in the backlog.
            Some(
                libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::EPERM
                | libc::ETIMEDOUT
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH,
            ) => AcceptError::Transient,
            _ => AcceptError::Other,
        }
    }
}

/// An admitted TCP connection, as tonic reads and writes it (TLS wraps it when
/// configured). Until its first request arrives, each read and write also watches for its
/// eviction and its handshake deadline, and fails once either comes.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    info: TcpConnectInfo,
    id: u64,
    peer: SocketAddr,
    handshake: Handshake,
    limits: Arc<ConnectionLimits>,
}

#[derive(Debug)]
enum Handshake {
    Waiting {
        evicted: oneshot::Receiver<()>,
        deadline: Pin<Box<Sleep>>,
    },
    Done,
    Closed(io::ErrorKind, &'static str),
}

impl Connection {
    /// `Err` once the connection was evicted or missed its handshake deadline. Polling
    /// both registers this task's waker with them, which is what wakes a silent peer's task.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Handshake::Waiting { evicted, deadline } = &mut self.handshake {
            match Pin::new(evicted).poll(cx) {
                Poll::Ready(Ok(())) => {
                    tracing::debug!(peer = %self.peer, "closing a connection evicted by a newer one");
                    self.handshake = Handshake::Closed(
                        io::ErrorKind::ConnectionAborted,
                        "closed to admit a newer connection (--max-connections)",
                    );
                }
                // The limits dropped the sender: the first request arrived.
                Poll::Ready(Err(_)) => self.handshake = Handshake::Done,
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        tracing::debug!(peer = %self.peer, "closing a connection that sent no request in time");
                        self.handshake = Handshake::Closed(
                            io::ErrorKind::TimedOut,
                            "no request within the handshake timeout (--handshake-timeout-seconds)",
                        );
                    }
                }
            }
        }
        match self.handshake {
            Handshake::Closed(kind, why) => Err(io::Error::new(kind, why)),
            _ => Ok(()),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.limits.release(self.id, self.peer);
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.poll_handshake(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.poll_handshake(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.poll_handshake(cx)?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A tower layer for the tonic server: each request marks its connection as past its
/// handshake (see [`ConnectionLimits`]).
#[derive(Debug, Clone)]
pub struct FirstRequestLayer(Arc<ConnectionLimits>);

impl<S> tower::Layer<S> for FirstRequestLayer {
    type Service = FirstRequest<S>;

    fn layer(&self, inner: S) -> FirstRequest<S> {
        FirstRequest {
            inner,
            limits: self.0.clone(),
        }
    }
}

/// The service of [`FirstRequestLayer`].
#[derive(Debug, Clone)]
pub struct FirstRequest<S> {
    inner: S,
    limits: Arc<ConnectionLimits>,
}

impl<S, B> tower::Service<http::Request<B>> for FirstRequest<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        // A connection's entry is stored before tonic is handed the connection, so its
        // requests see a count above zero until the entry is gone.
        if self.limits.waiting.load(Ordering::Acquire) == 0 {
            return self.inner.call(request);
        }
        let extensions = request.extensions();
        // tonic puts the connection's info here, wrapped when the connection is TLS.
        let peer = extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|tls| tls.get_ref().remote_addr())
            });
        if let Some(peer) = peer {
            self.limits.first_request(peer);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_journals_and_streams() {
        assert_eq!(connection_cap(1000, 1024, 1024, 1_048_576), 1000);
        assert_eq!(connection_cap(1000, 10, 10, 200), 200 - 64 - 30 - 10);
        assert_eq!(connection_cap(1000, 1024, 1024, 1024), MIN_CONNECTIONS);
        assert_eq!(connection_cap(4, 1024, 1024, 1024), 4);
        assert_eq!(
            connection_cap(1000, usize::MAX, usize::MAX, 0),
            MIN_CONNECTIONS
        );
    }

    #[test]
    fn accept_errors_that_persist_are_not_skipped() {
        let of = |errno| AcceptError::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::EMFILE), AcceptError::OutOfResources);
        assert_eq!(of(libc::ENFILE), AcceptError::OutOfResources);
        assert_eq!(of(libc::ENOBUFS), AcceptError::OutOfResources);
        assert_eq!(of(libc::ENOMEM), AcceptError::OutOfResources);
        assert_eq!(of(libc::ECONNABORTED), AcceptError::Transient);
        assert_eq!(of(libc::EBADF), AcceptError::Other);
    }
}
