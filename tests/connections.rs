//! Connections that never send a byte cannot use up the server's connections, file
//! descriptors or CPU: the real binary under a 1024-descriptor limit, the handshake
//! timeout, and the connection cap with its eviction of silent connections.

use std::process::Command;
use std::time::{Duration, Instant};

use ministore_client::{Client, ClientBuilder};
use ministore_tests::events::{Records, follower};
use ministore_tests::server::ServerProcess;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Sets the server's open-files limit, soft and hard, in the child before it runs the
/// binary: the server cannot raise it back.
fn open_files_limit(limit: u64) -> impl FnOnce(&mut Command) {
    move |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
        // changes only the child.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Sets the running server's soft open-files limit, leaving its hard limit as it is.
fn set_soft_open_files_limit(server: &ServerProcess, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: prlimit reads `new` and writes `old`, both ours.
    unsafe {
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// The server's CPU time (user + system) so far, from /proc/PID/stat.
fn cpu_time(server: &ServerProcess) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces; utime
    // and stime are fields 14 and 15 of the whole line.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// The share of one core the server used over the next `window`.
async fn cpu_share_over(server: &ServerProcess, window: Duration) -> f64 {
    let before = cpu_time(server);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_time(server) - before;
    used.as_secs_f64() / started.elapsed().as_secs_f64()
}

/// `n` TCP connections to the server that send nothing. Each connect completes in the
/// kernel (the backlog), whether or not the server accepts it.
async fn silent_connections(server: &ServerProcess, n: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        let connection =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(server.addr))
                .await
                .expect("connecting took more than 5 s")
                .unwrap();
        connections.push(connection);
    }
    connections
}

/// Reads `connection` until the server closes it; how long that took, or `None` if it was
/// still open after `within`.
async fn closed_within(connection: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            // The server's HTTP/2 SETTINGS may come first; then EOF, or a reset.
            match connection.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Whether the server logs `needle` within 2 s (its stderr is read by another thread, so a
/// line it wrote may not be in [`ServerProcess::logs`] yet).
async fn logs_soon(server: &ServerProcess, needle: &str) -> bool {
    let started = Instant::now();
    while !server.logs().contains(needle) {
        if started.elapsed() > Duration::from_secs(2) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A new client appends `value` to `journal`: each attempt gets `attempt_timeout`, and
/// attempts go on until `within` has passed. Returns how long it took.
async fn append_as_new_client(
    server: &ServerProcess,
    journal: &str,
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        let attempt = async {
            let client = ClientBuilder::new(server.url())
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            client
                .append(journal, &"hello")
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(_)) => return Ok(started.elapsed()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer within 3 s".into(),
        }
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_past_the_descriptor_limit_leave_room_for_clients_and_journals() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(tmp.path(), &[], open_files_limit(1024));

    // More than the server has descriptors for.
    let mut silent = silent_connections(&server, 1100).await;

    let took = append_as_new_client(&server, "first", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    eprintln!("a new client appended {took:?} after 1100 silent connections");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        logs_soon(&server, "leaves room for only 16 connections").await,
        "the cap is lowered to fit 1024 descriptors: {}",
        server.logs()
    );

    // Descriptors are left for journal files: new journals open.
    let client = Client::connect(server.url()).await.unwrap();
    for i in 0..20 {
        let journal = format!("new-{i}");
        assert_eq!(client.append(&journal, &i).await.unwrap(), 1, "{journal}");
    }

    // With the silent connections still open on our side, the server idles.
    let share = cpu_share_over(&server, Duration::from_secs(2)).await;
    eprintln!("server CPU over 2 s: {:.1}% of a core", share * 100.0);
    assert!(share < 0.20, "{:.1}% of a core", share * 100.0);

    // Most silent connections were closed to admit newer ones.
    let mut closed = 0;
    for connection in &mut silent[..100] {
        if closed_within(connection, Duration::from_millis(100))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert!(closed >= 90, "only {closed} of the first 100 were closed");
    assert!(
        logs_soon(&server, "closing the oldest connection").await,
        "{}",
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_backs_off_instead_of_spinning_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    // A cap far above what is left once the limit is lowered below: accept meets EMFILE.
    let server = ServerProcess::start_with(
        tmp.path(),
        &["--max-journals", "10", "--max-streams", "10"],
        open_files_limit(1024),
    );
    let client = Client::connect(server.url()).await.unwrap();
    assert_eq!(client.append("before", &1).await.unwrap(), 1);

    set_soft_open_files_limit(&server, 64);
    let _silent = silent_connections(&server, 200).await;
    let share = cpu_share_over(&server, Duration::from_secs(2)).await;
    eprintln!(
        "server CPU over 2 s out of descriptors: {:.1}% of a core",
        share * 100.0
    );
    assert!(share < 0.20, "{:.1}% of a core", share * 100.0);
    assert!(
        logs_soon(&server, "accepting connections failed").await,
        "{}",
        server.logs()
    );
    let logs = server.logs();
    // Warned once, not once per failed accept.
    assert_eq!(
        logs.matches("accepting connections failed").count(),
        1,
        "{logs}"
    );

    // The connection that was served before keeps working.
    assert_eq!(client.append("before", &2).await.unwrap(), 2);

    set_soft_open_files_limit(&server, 1024);
    let took = append_as_new_client(&server, "after", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.logs()));
    eprintln!("a new client appended {took:?} after the limit was raised again");
}

/// With a handshake timeout of 1 s: `client`, once it has sent a request, follows a
/// journal across the timeout on its connection, while a connection that sends nothing (not
/// even a TLS ClientHello) is closed after the timeout.
async fn the_timeout_closes_a_silent_connection_and_spares_a_served_one(
    server: &ServerProcess,
    client: &Client,
) {
    client.append("tail", &1).await.unwrap();
    let (mut stream, first) = follower(client, "tail", 1).await;
    assert_eq!(first.seq, 1);

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("the silent connection is still open after 5 s");
    eprintln!("the silent connection was closed after {closed:?}");
    assert!(closed >= Duration::from_millis(900), "{closed:?}");

    // The stream lives on the client's connection, now older than the timeout.
    client.append("tail", &2).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.record())
        .await
        .expect("the stream is stuck")
        .expect("the stream's connection was closed");
    assert_eq!(next.unwrap().seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout_and_a_served_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &["--handshake-timeout-seconds", "1"]);
    let client = Client::connect(server.url()).await.unwrap();
    the_timeout_closes_a_silent_connection_and_spares_a_served_one(&server, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_silent_connection_is_closed_and_a_served_one_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    // A self-signed certificate is its own CA for the client.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("server.pem"), tmp.path().join("server.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = ServerProcess::start(
        &tmp.path().join("data"),
        &[
            "--handshake-timeout-seconds",
            "1",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let client = ClientBuilder::new(format!("localhost:{}", server.addr.port()))
        .tls_ca_file(&cert_path)
        .unwrap()
        .connect()
        .await
        .unwrap();
    the_timeout_closes_a_silent_connection_and_spares_a_served_one(&server, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_clients_keep_working_while_silent_connections_churn() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &["--max-connections", "4"]);
    let a = Client::connect(server.url()).await.unwrap();
    let b = Client::connect(server.url()).await.unwrap();
    a.append("a", &0).await.unwrap();
    b.append("b", &0).await.unwrap();

    // Two places are left: each new silent connection takes one, closing the oldest
    // silent one, and never one of the clients'.
    let mut silent = Vec::new();
    for i in 1..=50u64 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
        let append = async { (a.append("a", &i).await, b.append("b", &i).await) };
        let (from_a, from_b) = tokio::time::timeout(Duration::from_secs(5), append)
            .await
            .expect("appends stuck");
        assert_eq!(from_a.unwrap(), i + 1);
        assert_eq!(from_b.unwrap(), i + 1);
    }
    // The last two are open; those before them were closed.
    for connection in &mut silent[..48] {
        assert!(
            closed_within(connection, Duration::from_secs(2))
                .await
                .is_some(),
            "an older silent connection is still open"
        );
    }
    for connection in &mut silent[48..] {
        assert!(
            closed_within(connection, Duration::from_millis(300))
                .await
                .is_none(),
            "one of the two newest silent connections was closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_served_a_new_connection_is_closed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &["--max-connections", "2"]);
    let a = Client::connect(server.url()).await.unwrap();
    let b = Client::connect(server.url()).await.unwrap();
    a.append("a", &1).await.unwrap();
    b.append("b", &1).await.unwrap();

    // Well before the 10 s handshake timeout.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    closed_within(&mut third, Duration::from_secs(2))
        .await
        .expect("a connection past the cap is still open");
    assert!(
        logs_soon(&server, "refusing connections").await,
        "{}",
        server.logs()
    );

    assert_eq!(a.append("a", &2).await.unwrap(), 2);
    assert_eq!(b.append("b", &2).await.unwrap(), 2);
}
