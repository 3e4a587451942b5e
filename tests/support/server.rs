//! Starting ministore-server for tests: in-process on `127.0.0.1:0` (no port races), or the
//! real binary as a child process where the behaviour is about the process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use ministore::proto::journal_client::JournalClient;
use ministore_server::{Config, ServerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A server running inside the test process, on its own task.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with default flags over a fresh temporary data directory.
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut server =
            TestServer::start_with(Config::with_data_dir(tmp.path().join("data"))).await;
        server._tmp = Some(tmp);
        server
    }

    /// A server with `config` (its `listen` is ignored: it binds `127.0.0.1:0`).
    pub async fn start_with(config: Config) -> TestServer {
        TestServer::start_on("127.0.0.1:0".parse().unwrap(), config).await
    }

    /// A server on `addr`: to restart one on the address its clients know.
    pub async fn start_on(addr: SocketAddr, config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        // Take the data directory now, before returning: the server is ready when we are.
        let server =
            ministore_server::Server::from_listener(config, listener).expect("start server");
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir,
            stop: Some(stop),
            task: Some(task),
            _tmp: None,
        }
    }

    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The generated stub, connected.
    pub async fn stub(&self) -> JournalClient<Channel> {
        JournalClient::connect(self.url()).await.expect("connect")
    }

    /// The typed client, connected.
    pub async fn client(&self) -> ministore_client::Client {
        ministore_client::Client::connect(self.url())
            .await
            .expect("connect")
    }

    /// Signals shutdown and waits for the server to finish it.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        self.stop.take().map(|s| s.send(()));
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task panicked")
    }

    /// Stops the server but keeps its data directory for the caller (for restarts).
    pub async fn stop_keeping_data(mut self) -> Option<tempfile::TempDir> {
        let tmp = self._tmp.take();
        self.stop().await.expect("clean shutdown");
        tmp
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A client whose appends make one attempt each: for tests of the server's answer to an
/// outage (`UNAVAILABLE` and the like), which the default client would retry for
/// [`DEFAULT_RETRY_BUDGET`](ministore_client::DEFAULT_RETRY_BUDGET) before giving up.
pub async fn client_without_retries(url: &str) -> ministore_client::Client {
    ministore_client::ClientBuilder::new(url)
        .retry_budget(std::time::Duration::ZERO)
        .connect()
        .await
        .expect("connect")
}

/// The `ministore-server` binary, built once per test process.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| crate::binaries::build("ministore-server", "ministore-server"))
}

/// The real `ministore-server` binary running as a child process.
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// Where it listens (read from its "listening on" line).
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its stdout, past the "listening on" line.
    stdout: BufReader<ChildStdout>,
    /// Its metrics endpoint, once read from its "metrics on" line.
    metrics_addr: Option<SocketAddr>,
    /// Everything it has logged so far (drained by a thread, so the pipe never fills).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts the binary on `127.0.0.1:0` with `data_dir` and extra `args`, and waits for
    /// its "listening on ADDR" line (the server prints it once bound).
    pub fn start(data_dir: &Path, args: &[&str]) -> ServerProcess {
        ServerProcess::try_start(data_dir, args).expect("server did not start")
    }

    /// Like [`start`](Self::start), but returns the server's stderr if it exits instead.
    pub fn try_start(data_dir: &Path, args: &[&str]) -> Result<ServerProcess, String> {
        ServerProcess::try_start_env(data_dir, args, &[])
    }

    /// Like [`try_start`](Self::try_start), with extra environment variables.
    pub fn try_start_env(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ServerProcess, String> {
        ServerProcess::try_start_with(data_dir, args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// Like [`start`](Self::start), with `setup` applied to the command before it is
    /// spawned: e.g. a `pre_exec` hook that sets a resource limit in the child alone.
    pub fn start_with(
        data_dir: &Path,
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> ServerProcess {
        ServerProcess::try_start_with(data_dir, args, setup).expect("server did not start")
    }

    /// Like [`start_with`](Self::start_with), but returns the server's stderr if it exits
    /// instead.
    pub fn try_start_with(
        data_dir: &Path,
        args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Result<ServerProcess, String> {
        let listen: &[&str] = if args.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut command = Command::new(server_binary());
        command
            .args(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        setup(&mut command);
        let mut child = command.spawn().expect("spawn ministore-server");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read stdout");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut sink = sink.lock().unwrap();
                sink.push_str(&line);
                sink.push('\n');
            }
        });
        let mut server = ServerProcess {
            addr: "0.0.0.0:0".parse().unwrap(),
            child,
            data_dir: data_dir.to_path_buf(),
            stdout,
            metrics_addr: None,
            stderr,
            drain: Some(drain),
        };
        match line.trim().strip_prefix("listening on ") {
            Some(addr) => {
                server.addr = addr.parse().expect("address");
                Ok(server)
            }
            None => {
                let (code, stderr) = server.wait();
                Err(format!("exit {code:?}, stderr: {stderr}"))
            }
        }
    }

    /// The next line the server prints on stdout after "listening on"; `None` once it has
    /// closed stdout (exited).
    pub fn next_stdout_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line).expect("read stdout") {
            0 => None,
            _ => Some(line.trim_end().to_owned()),
        }
    }

    /// Where its metrics endpoint listens, from the "metrics on ADDR" line it prints right
    /// after "listening on" when started with `--metrics-listen`.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        if self.metrics_addr.is_none() {
            let line = self.next_stdout_line();
            let addr = line
                .as_deref()
                .and_then(|line| line.strip_prefix("metrics on "))
                .unwrap_or_else(|| panic!("expected \"metrics on ADDR\", got {line:?}"));
            self.metrics_addr = Some(addr.parse().expect("metrics address"));
        }
        self.metrics_addr.expect("read above")
    }

    /// What the server has logged so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends `signal` ("TERM", "INT", "KILL") to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code and everything it logged.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("wait");
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        (status.code(), self.logs())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of `journal` as (seq, stored JSON text), Replay page by page.
///
/// # Panics
/// If a Replay fails or a record comes without its payload.
pub async fn replay_texts(stub: &mut JournalClient<Channel>, journal: &str) -> Vec<(u64, String)> {
    use ministore::proto::ReplayRequest;
    use ministore::proto::record::Body;
    let mut all = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = stub
            .replay(ReplayRequest {
                journal: journal.into(),
                from_seq,
                ..Default::default()
            })
            .await
            .expect("Replay")
            .into_inner();
        for record in page.records {
            let Some(Body::Payload(json)) = record.body else {
                panic!("record {} came back without its payload", record.seq);
            };
            all.push((record.seq, String::from_utf8(json).expect("UTF-8 JSON")));
        }
        if page.next_seq > page.last_seq {
            return all;
        }
        from_seq = page.next_seq;
    }
}

/// An Append of the JSON text `json` to `journal`, as a payload.
pub fn payload_request(journal: &str, json: &str) -> ministore::proto::AppendRequest {
    ministore::proto::AppendRequest {
        journal: journal.into(),
        record: Some(ministore::proto::append_request::Record::Payload(
            json.as_bytes().to_vec(),
        )),
        ..Default::default()
    }
}

/// Appends the JSON text `json` to `journal` with one Append RPC; its seq.
pub async fn append_payload(
    stub: &mut JournalClient<Channel>,
    journal: &str,
    json: &str,
) -> Result<u64, tonic::Status> {
    Ok(stub
        .append(payload_request(journal, json))
        .await?
        .into_inner()
        .seq)
}
