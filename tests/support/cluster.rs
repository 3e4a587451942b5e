//! A NATS JetStream cluster on loopback for the JetStream backend's tests: three
//! `nats-server` processes (pinned in tests/requirements.txt), each with its own client,
//! cluster and monitoring port and its own store directory, routed to each other, with
//! `sync_interval: always` as ministore requires. Readiness is read from `/jsz` on the
//! monitoring ports, never waited for with a sleep.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// One node of the cluster.
struct Node {
    name: String,
    /// Its stdout and stderr, every start appended: what a failure to start shows.
    log: PathBuf,
    client_port: u16,
    http_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A running cluster; its processes are killed when it is dropped, or when the test
/// process ends (they are started with a parent-death signal).
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// The cluster shared by every test of one test binary (started on first use).
pub fn shared() -> &'static NatsCluster {
    static CLUSTER: OnceLock<NatsCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| NatsCluster::start(3))
}

impl NatsCluster {
    /// Starts `size` nodes and returns once every node reports a JetStream meta leader.
    pub fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, "")
    }

    /// Like [`start`](Self::start), with `client_config` added to each node's
    /// configuration: what clients meet (`tls {...}`, `authorization {...}`). Routes and
    /// monitoring stay plain, on loopback.
    pub fn start_with(size: usize, client_config: &str) -> NatsCluster {
        // Each node binds ports that were free a moment before; another test can take one
        // in between, and that node exits. Then the cluster is started again on new ports.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match NatsCluster::start_once(size, client_config) {
                Ok(cluster) => return cluster,
                Err(why) => failures.push(why),
            }
        }
        panic!("the NATS cluster did not start: {failures:#?}");
    }

    fn start_once(size: usize, client_config: &str) -> Result<NatsCluster, String> {
        let binary = crate::tools::nats_server();
        let dir = tempfile::tempdir().expect("tempdir");
        // Ports taken together and released together just before the servers bind them.
        let listeners: Vec<std::net::TcpListener> =
            (0..size * 3).map(|_| bind_fixed_port()).collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        drop(listeners);
        let routes: Vec<String> = (0..size)
            .map(|i| format!("\"nats-route://127.0.0.1:{}\"", ports[3 * i + 1]))
            .collect();
        let nodes = (0..size)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                let log = dir.path().join(format!("{name}.log"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\nmax_payload: 8MB\n\
                         jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
                         {cluster}{client_config}\n",
                        client = ports[3 * i],
                        // One node alone runs JetStream unclustered: a cluster of one
                        // never elects a meta leader.
                        cluster = match size {
                            1 => String::new(),
                            _ => format!(
                                "cluster {{\n  name: ministore-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                                ports[3 * i + 1],
                                routes.join(", ")
                            ),
                        },
                        http = ports[3 * i + 2],
                        store = store.display(),
                    ),
                )
                .expect("write nats config");
                Node {
                    name,
                    log,
                    client_port: ports[3 * i],
                    http_port: ports[3 * i + 2],
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..size {
            cluster.nodes[i].child = Some(spawn(&binary, &cluster.nodes[i]));
        }
        cluster.until_ready()?;
        Ok(cluster)
    }

    /// A ministore-server's configuration with this cluster as its backend (`data_dir`
    /// only for the server's own lock; the journals are the cluster's).
    pub fn server_config(&self, data_dir: &std::path::Path) -> ministore_server::Config {
        let mut config = ministore_server::Config::with_data_dir(data_dir);
        config.backend = self.url();
        config.nats_monitor = self.monitor_urls();
        config
    }

    /// `nats://127.0.0.1:A,127.0.0.1:B,...`: the `--backend` of a ministore-server.
    pub fn url(&self) -> String {
        let servers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.client_port))
            .collect();
        format!("nats://{}", servers.join(","))
    }

    /// The monitoring URLs (`--nats-monitor`).
    pub fn monitor_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.http_port))
            .collect()
    }

    /// Polls every running node's `/jsz` until each names a meta leader among running nodes
    /// (a single node, unclustered, until it answers), and its `/healthz` until it is ready.
    /// Panics if that takes over 60 s or a node exits, with the nodes' logs.
    pub fn wait_for_meta_leader(&mut self) {
        if let Err(why) = self.until_ready() {
            panic!("{why}");
        }
    }

    /// What [`wait_for_meta_leader`](Self::wait_for_meta_leader) waits for; `Err` (with
    /// the logs of the nodes) when a node exits, or after 60 s.
    fn until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = self.nodes.iter_mut().find_map(|node| {
                let status = node.child.as_mut()?.try_wait().ok()??;
                Some(format!("{} exited ({status})", node.name))
            });
            if let Some(exited) = exited {
                return Err(format!("{exited}: {}", self.logs()));
            }
            let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let leaders: Vec<Option<String>> = running
                .iter()
                .map(|n| {
                    let jsz = jsz(n.http_port, "")?;
                    if self.nodes.len() == 1 {
                        return Some(n.name.clone()); // unclustered: /healthz says it all
                    }
                    let leader = jsz.pointer("/meta_cluster/leader")?.as_str()?.to_owned();
                    // The leader also sees every other running node current.
                    let current = jsz
                        .pointer("/meta_cluster/replicas")
                        .and_then(|r| r.as_array())
                        .map_or(0, |r| {
                            r.iter()
                                .filter(|p| {
                                    p.get("current").and_then(|c| c.as_bool()) == Some(true)
                                })
                                .count()
                        });
                    let ready = leader != n.name || current + 1 >= running.len();
                    Some(leader).filter(|l| ready && running.iter().any(|r| &r.name == l))
                })
                .collect();
            // And each node's /healthz says its JetStream is current (placement on a node
            // not yet current fails with "peer offline").
            if leaders.iter().all(Option::is_some)
                && running
                    .iter()
                    .all(|n| http(n.http_port, "/healthz").is_some_and(|(status, _)| status == 200))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no JetStream meta leader after 60 s: {leaders:?}; {}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of each node's log.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!("\n--- {} ---\n{tail}", n.name)
            })
            .collect()
    }

    /// The index of the node leading `stream`, as the running nodes' `/jsz` report it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let leader = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let jsz = jsz(n.http_port, "?streams=true")?;
                jsz.get("account_details")?
                    .as_array()?
                    .iter()
                    .flat_map(|a| {
                        a.get("stream_detail")
                            .and_then(|s| s.as_array())
                            .into_iter()
                            .flatten()
                    })
                    .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(stream))?
                    .pointer("/cluster/leader")?
                    .as_str()
                    .map(str::to_owned)
            })?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// Polls until `stream` has a leader among the running nodes; its index.
    pub fn wait_for_stream_leader(&self, stream: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(leader) = self
                .stream_leader(stream)
                .filter(|&i| self.nodes[i].child.is_some())
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no leader for {stream} after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until `stream`'s leader reports every other replica current (caught up).
    pub fn wait_for_stream_current(&self, stream: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let current = self.nodes.iter().filter(|n| n.child.is_some()).any(|n| {
                let Some(jsz) = jsz(n.http_port, "?streams=true") else {
                    return false;
                };
                let detail = jsz
                    .get("account_details")
                    .and_then(|a| a.as_array())
                    .into_iter()
                    .flatten()
                    .flat_map(|a| {
                        a.get("stream_detail")
                            .and_then(|s| s.as_array())
                            .into_iter()
                            .flatten()
                    })
                    .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(stream));
                let Some(cluster) = detail.and_then(|d| d.get("cluster")) else {
                    return false;
                };
                let replicas = cluster.get("replicas").and_then(|r| r.as_array());
                cluster.get("leader").and_then(|l| l.as_str()) == Some(n.name.as_str())
                    && replicas.is_some_and(|r| {
                        r.len() + 1 == self.nodes.len()
                            && r.iter()
                                .all(|p| p.get("current").and_then(|c| c.as_bool()) == Some(true))
                    })
            });
            if current {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{stream} not current on every node after 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops node `i` as an operator would (SIGTERM): it tells the cluster it is leaving,
    /// and the meta leader counts it offline at once.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // SAFETY: a plain kill(2) on a child we own and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// SIGKILLs node `i` (kill -9): no shutdown, no flush.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        let binary = crate::tools::nats_server();
        self.nodes[i].child = Some(spawn(&binary, &self.nodes[i]));
        self.wait_for_meta_leader();
    }

    /// Starts every stopped node again at once (one alone could not elect a meta leader
    /// when a majority is stopped).
    pub fn restart_stopped(&mut self) {
        let binary = crate::tools::nats_server();
        for node in self.nodes.iter_mut().filter(|n| n.child.is_none()) {
            node.child = Some(spawn(&binary, node));
        }
        self.wait_for_meta_leader();
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A listener on a free loopback port below the kernel's ephemeral range, so that no
/// `bind(0)` and no outgoing connection of any test can take the port between its release
/// and the node's bind, or while the node is down between a kill and a restart (ports of
/// the ephemeral range went that way: a node that cannot bind exits). Falls back to an
/// ephemeral port when no such port is free.
fn bind_fixed_port() -> std::net::TcpListener {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FROM: u16 = 10_000;
    for _ in 0..100 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let span = u64::from(ephemeral_from.saturating_sub(FROM).max(1));
        let port = FROM + (random % span) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind")
}

/// `/jsz` of the node monitored on `port`, `None` while it does not answer.
fn jsz(port: u16, query: &str) -> Option<serde_json::Value> {
    let (_, body) = http(port, &format!("/jsz{query}"))?;
    serde_json::from_str(&body).ok()
}

/// GET `path` from the monitoring port: the status code and the body.
fn http(port: u16, path: &str) -> Option<(u16, String)> {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(socket, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    socket.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Starts `nats-server -c config` from one thread that lives as long as the test process:
/// the child gets SIGKILL when that thread's process ends (PR_SET_PDEATHSIG follows the
/// spawning thread, so a test's own thread would kill it when the test ends).
fn spawn(binary: &std::path::Path, node: &Node) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (send, receive) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut command, reply) in receive {
                let _ = reply.send(command.spawn());
            }
            // Keep the thread (and so the children) alive until the process exits.
            loop {
                std::thread::park();
            }
        });
        Mutex::new(send)
    });
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .expect("open the node's log");
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (reply, replied) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner")
        .send((command, reply))
        .expect("spawner thread");
    replied
        .recv()
        .expect("spawner thread")
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
}
