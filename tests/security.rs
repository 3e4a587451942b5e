//! TLS, mutual TLS, bearer tokens, limits and the file-system guards, against real
//! servers. Certificates are made at test time with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ministore::proto::StreamRequest;
use ministore_client::{Client, ClientBuilder};
use ministore_server::Config;
use ministore_tests::docs::{console_steps, fenced_block, run_as_typed};
use ministore_tests::events::{Records, follower};
use ministore_tests::server::{ServerProcess, TestServer};
use ministore_tests::tools;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::Code;

/// A CA, and certificates it signed, written as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// Writes `<name>.pem` and `<name>.key` for the given names; returns their paths.
    fn issue(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

fn tls_config(data: &Path, pki: &Pki, client_ca: Option<&Pki>) -> Config {
    let (cert, key) = pki.issue("server", &["localhost", "127.0.0.1"]);
    let mut config = Config::with_data_dir(data);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.tls_client_ca = client_ca.map(Pki::ca_path);
    config
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca_and_refuses_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "main");
    let server = TestServer::start_with(tls_config(&tmp.path().join("data"), &pki, None)).await;

    let client = ClientBuilder::new(format!("localhost:{}", server.addr.port()))
        .tls_ca_file(pki.ca_path())
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(client.append("secure", &"over tls").await.unwrap(), 1);

    // A plaintext client gets nowhere, and nothing is written.
    let plain = ClientBuilder::new(server.addr.to_string())
        .connect_timeout(Duration::from_secs(2))
        // A refused handshake looks like an outage: one attempt, not a retry budget's worth.
        .retry_budget(Duration::ZERO)
        .timeout(Duration::from_secs(5))
        .connect_lazy()
        .unwrap();
    assert!(plain.append("secure", &"plaintext").await.is_err());

    // A client that trusts another CA refuses the server.
    let stranger = Pki::new(tmp.path(), "stranger");
    let wrong_ca = ClientBuilder::new(format!("localhost:{}", server.addr.port()))
        .tls_ca_file(stranger.ca_path())
        .unwrap()
        .connect()
        .await;
    assert!(wrong_ca.is_err());

    let all: Vec<(u64, String)> = client.replay("secure", 1).await.unwrap();
    assert_eq!(all, vec![(1, "over tls".to_string())]);
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Pki::new(tmp.path(), "servers");
    let clients = Pki::new(tmp.path(), "clients");
    let foreign = Pki::new(tmp.path(), "foreign");
    let server = TestServer::start_with(tls_config(
        &tmp.path().join("data"),
        &servers,
        Some(&clients),
    ))
    .await;
    let addr = format!("localhost:{}", server.addr.port());

    let (cert, key) = clients.issue("app", &["app"]);
    let good = ClientBuilder::new(addr.clone())
        .tls_ca_file(servers.ca_path())
        .unwrap()
        .tls_identity(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
        .connect()
        .await
        .unwrap();
    assert_eq!(good.append("m", &1).await.unwrap(), 1);

    let (cert, key) = foreign.issue("intruder", &["intruder"]);
    let intruder = ClientBuilder::new(addr.clone())
        .tls_ca_file(servers.ca_path())
        .unwrap()
        .tls_identity(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
        .timeout(Duration::from_secs(5))
        // A refused handshake looks like an outage: one attempt, not a retry budget's worth.
        .retry_budget(Duration::ZERO)
        .connect_lazy()
        .unwrap();
    assert!(
        intruder.append("m", &2).await.is_err(),
        "a foreign client certificate is refused"
    );

    let anonymous = ClientBuilder::new(addr)
        .tls_ca_file(servers.ca_path())
        .unwrap()
        .timeout(Duration::from_secs(5))
        // A refused handshake looks like an outage: one attempt, not a retry budget's worth.
        .retry_budget(Duration::ZERO)
        .connect_lazy()
        .unwrap();
    assert!(
        anonymous.append("m", &3).await.is_err(),
        "no client certificate is refused"
    );

    assert_eq!(good.info("m").await.unwrap().last_seq, 1);
}

const TOKENS: &str = "\
# test tokens
admin-token-0123456789
writer-token-0123456789 rights=append journals=orders
reader-token-0123456789 rights=read
";

async fn token_server(tmp: &Path, all_services: bool) -> TestServer {
    std::fs::write(tmp.join("tokens"), TOKENS).unwrap();
    let mut config = Config::with_data_dir(tmp.join("data"));
    config.auth_tokens = Some(tmp.join("tokens"));
    config.auth_all_services = all_services;
    TestServer::start_with(config).await
}

async fn as_token(server: &TestServer, token: Option<&str>) -> Client {
    let builder = ClientBuilder::new(server.url());
    match token {
        Some(t) => builder.bearer_token(t),
        None => builder,
    }
    .connect()
    .await
    .unwrap()
}

#[tokio::test]
async fn tokens_authenticate_and_their_rights_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let server = token_server(tmp.path(), false).await;
    let admin = as_token(&server, Some("admin-token-0123456789")).await;
    let writer = as_token(&server, Some("writer-token-0123456789")).await;
    let reader = as_token(&server, Some("reader-token-0123456789")).await;
    let nobody = as_token(&server, None).await;
    let wrong = as_token(&server, Some("admin-token-0123456788")).await;

    assert_eq!(writer.append("orders", &1).await.unwrap(), 1);
    assert_eq!(admin.append("audit", &1).await.unwrap(), 1);

    for (client, journal, code) in [
        (&nobody, "orders", Code::Unauthenticated),
        (&wrong, "orders", Code::Unauthenticated),
        (&writer, "audit", Code::PermissionDenied),
        (&reader, "orders", Code::PermissionDenied),
    ] {
        let err = client.append(journal, &2).await.unwrap_err();
        assert_eq!(err.code(), Some(code), "{err}");
    }
    let err = writer.replay::<u64>("orders", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(err.to_string().contains("may not read"), "{err}");
    let err = nobody.info("orders").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("authorization: Bearer"), "{err}");

    let read: Vec<(u64, u64)> = reader.replay("orders", 1).await.unwrap();
    assert_eq!(read, vec![(1, 1)]);
    let streamed: Vec<_> =
        tokio_stream::StreamExt::collect::<Vec<_>>(reader.stream::<u64>("audit", 1, false)).await;
    assert_eq!(streamed.len(), 1);
    assert_eq!(
        admin.info("orders").await.unwrap().last_seq,
        1,
        "refused appends wrote nothing"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let tmp = tempfile::tempdir().unwrap();
    let server = token_server(tmp.path(), false).await;
    let mut stub = server.stub().await;
    for (n, scheme) in ["Bearer", "bearer", "BEARER", "bEaReR"]
        .into_iter()
        .enumerate()
    {
        let mut request = tonic::Request::new(ministore::proto::AppendRequest {
            journal: "cases".into(),
            record: Some(ministore::proto::append_request::Record::Payload(
                b"1".to_vec(),
            )),
            ..Default::default()
        });
        let header = format!("{scheme} admin-token-0123456789").parse().unwrap();
        request.metadata_mut().insert("authorization", header);
        let reply = stub.append(request).await;
        assert_eq!(
            reply.map(|r| r.into_inner().seq).ok(),
            Some(n as u64 + 1),
            "{scheme}"
        );
    }
    let mut request = tonic::Request::new(ministore::proto::InfoRequest {
        journal: "cases".into(),
    });
    let header = "Basic admin-token-0123456789".parse().unwrap();
    request.metadata_mut().insert("authorization", header);
    assert_eq!(
        stub.info(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

async fn health_code(server: &TestServer) -> Code {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    match health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn health_stays_open_unless_a_flag_closes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let open = token_server(tmp.path(), false).await;
    assert_eq!(health_code(&open).await, Code::Ok);
    open.stop().await.unwrap();
    let closed = token_server(tmp.path(), true).await;
    assert_eq!(health_code(&closed).await, Code::Unauthenticated);
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokens"), TOKENS).unwrap();
    let tokens = tmp.path().join("tokens");
    let server = ServerProcess::start(
        &tmp.path().join("data"),
        &[
            "--auth-tokens",
            tokens.to_str().unwrap(),
            "--log-level",
            "trace",
        ],
    );
    let writer = ClientBuilder::new(server.url())
        .bearer_token("writer-token-0123456789")
        .connect()
        .await
        .unwrap();
    writer.append("orders", &1).await.unwrap();
    let wrong = ClientBuilder::new(server.url())
        .bearer_token("guessed-token-0123456789")
        .connect()
        .await
        .unwrap();
    assert!(wrong.append("orders", &1).await.is_err());
    server.signal("TERM");
    let (code, logs) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(logs.contains("Append"), "debug logs were written:\n{logs}");
    assert!(!logs.contains("writer-token"), "a token was logged");
    assert!(!logs.contains("guessed-token"), "a token was logged");
}

#[test]
fn a_malformed_token_file_stops_the_server_at_startup() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokens"), "short-token rights=read\n").unwrap();
    let tokens = tmp.path().join("tokens");
    let err = ServerProcess::try_start(
        &tmp.path().join("data"),
        &["--auth-tokens", tokens.to_str().unwrap()],
    )
    .err()
    .expect("must not start");
    assert!(
        err.contains("tokens:1") && err.contains("at least 16 characters"),
        "{err}"
    );
    assert!(
        !err.contains("short-token"),
        "the token itself is never shown: {err}"
    );
}

#[tokio::test]
async fn streams_beyond_the_limits_are_resource_exhausted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.max_streams = 5;
    config.max_streams_per_connection = 3;
    let server = TestServer::start_with(config).await;
    // A unary append: the client's own AppendStream would take one of the three places.
    let client = ministore_client::ClientBuilder::new(server.url())
        .append_streams(false)
        .connect()
        .await
        .unwrap();
    client.append("s", &1).await.unwrap();

    let follow = || StreamRequest {
        heartbeat_seconds: 0,
        journal: "s".into(),
        from_seq: 1,
        follow: true,
        format: 0,
    };
    let mut one_connection = client.raw();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = one_connection.stream(follow()).await.unwrap().into_inner();
        stream.record().await.unwrap().unwrap();
        open.push(stream);
    }
    let err = one_connection.stream(follow()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-streams-per-connection"),
        "{}",
        err.message()
    );

    let mut other_connection = server.client().await.raw();
    for _ in 0..2 {
        open.push(
            other_connection
                .stream(follow())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let err = other_connection.stream(follow()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("--max-streams)"),
        "{}",
        err.message()
    );

    // Closing streams gives their places back; appends were served all along.
    open.clear();
    assert_eq!(client.append("s", &2).await.unwrap(), 2);
    // The server releases a stream's place when HTTP/2 tells it the client reset the
    // stream, which happens after the drop above returns: retry, for a bounded time.
    let reopen = async {
        loop {
            match other_connection.stream(follow()).await {
                Ok(stream) => break stream.into_inner(),
                Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let mut stream = tokio::time::timeout(std::time::Duration::from_secs(5), reopen)
        .await
        .expect("closed streams still held their places 5 s later");
    assert_eq!(stream.record().await.unwrap().unwrap().seq, 1);
}

#[tokio::test]
async fn journals_beyond_the_limit_close_the_least_recently_used_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.max_journals = 2;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    client.append("a", &1).await.unwrap();
    client.append("b", &1).await.unwrap();
    // A third journal closes the least recently used idle one ("a") instead of being refused.
    client.append("c", &1).await.unwrap();
    assert_eq!(
        client.append("a", &2).await.unwrap(),
        2,
        "a closed journal reopens where it ended"
    );
    assert!(tmp.path().join("c").exists());
}

#[tokio::test]
async fn giant_messages_are_resource_exhausted_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.max_message_bytes = 64 * 1024;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    let giant = "x".repeat(200 * 1024);
    let err = client.append("g", &giant).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let many: Vec<String> = (0..100).map(|_| "y".repeat(1000)).collect();
    let err = client.append_batch("g", &many).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert_eq!(client.append("g", &"small").await.unwrap(), 1);
}

#[tokio::test]
async fn a_symlink_out_of_the_data_directory_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("escape")).unwrap();
    std::fs::create_dir_all(data.join("planted")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), data.join("planted/journal.jsonl")).unwrap();

    let server = TestServer::start_with(Config::with_data_dir(&data)).await;
    let client = server.client().await;
    for journal in ["escape", "planted"] {
        let err = client.append(journal, &1).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(Code::FailedPrecondition),
            "{journal}: {err}"
        );
        assert!(
            err.to_string().contains("does not follow symlinks"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing was written outside"
    );
}

#[tokio::test]
async fn the_request_timeout_does_not_cut_a_following_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config::with_data_dir(tmp.path());
    config.request_timeout_seconds = 1;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    client.append("t", &1).await.unwrap();
    // The raw stub: the typed stream would hide a cut by reconnecting.
    let (mut tail, first) = follower(&client, "t", 1).await;
    assert_eq!(first.seq, 1);
    // Outlive the timeout, then prove the same stream still delivers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.append("t", &2).await.unwrap();
    assert_eq!(tail.record().await.unwrap().unwrap().seq, 2);
}

#[test]
fn the_tls_and_token_session_in_the_readme_prints_what_it_shows() {
    let readme = std::fs::read_to_string(tools::workspace_root().join("README.md")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "readme");
    // The files the session names, in the directory it runs in: the CA, the server's
    // certificate and key, and the token file shown above the session.
    pki.issue("server", &["localhost"]);
    let tokens_at = readme
        .find("\n```text\n# tokens\n")
        .expect("the README's token file");
    let (tokens, _) = fenced_block(&readme, "```text", tokens_at);
    std::fs::write(pki.dir.join("tokens"), tokens).unwrap();
    let steps: Vec<_> = console_steps(&readme)
        .into_iter()
        .skip_while(|s| !s.command.starts_with("ministore-server --tls-cert"))
        .take(2)
        .collect();
    assert_eq!(
        steps.len(),
        2,
        "the README's TLS session: server, then grpcurl"
    );

    // The server as the session starts it, on a free port instead of 50051.
    let args: Vec<&str> = steps[0]
        .command
        .strip_prefix("ministore-server ")
        .unwrap()
        .split_whitespace()
        .collect();
    let server = ServerProcess::start_with(&tmp.path().join("data"), &args, |command| {
        command.current_dir(&pki.dir);
    });

    let grpcurl = &steps[1];
    assert!(
        grpcurl.command.contains("localhost:50051"),
        "{}",
        grpcurl.command
    );
    let command = grpcurl.command.replace(
        "localhost:50051",
        &format!("localhost:{}", server.addr.port()),
    );
    let shown = run_as_typed(&command, &pki.dir);
    assert_eq!(
        shown.trim_end(),
        grpcurl.output.trim_end(),
        "`{}` printed something other than the README shows\nserver log:\n{}",
        grpcurl.command,
        server.logs()
    );
}

/// The NATS connection flags, on the real binary, against a cluster that asks for mutual
/// TLS and a password (or a token): with the right ones the server serves the cluster's
/// journals; with a wrong one, or no cluster there, it refuses to start (before it says
/// "listening on") and says what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_flags_reach_a_cluster_behind_mutual_tls_and_a_password_or_a_token() {
    use ministore_tests::cluster::NatsCluster;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "nats");
    let (server_cert, server_key) = pki.issue("nats-server", &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = pki.issue("ministore", &["ministore"]);
    let (ca, client_cert, client_key) = (
        pki.ca_path().display().to_string(),
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    let cluster = NatsCluster::start_with(
        3,
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{ca}\"\n  verify: true\n}}\n\
             authorization {{\n  user: ministore\n  password: \"s3cret pass\"\n}}\n",
            server_cert.display(),
            server_key.display(),
        ),
    );
    let url = cluster.url();
    let monitors = cluster.monitor_urls().join(",");
    let backend = ["--backend", &url, "--nats-monitor", &monitors];
    let tls = [
        "--nats-tls-ca",
        &ca,
        "--nats-tls-cert",
        &client_cert,
        "--nats-tls-key",
        &client_key,
    ];
    let user = ["--nats-user", "ministore"];
    fn args<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
        parts.concat()
    }
    // Refused before it says "listening on": nothing announces a server that cannot serve.
    // The error names the servers it tried, and says why.
    fn refused(what: &str, started: Result<ServerProcess, String>, url: &str, says: &str) {
        let Err(stderr) = started else {
            panic!("{what}: the server started");
        };
        assert!(
            stderr.contains(&format!("connecting to NATS at {url}")) && stderr.contains(says),
            "{what}: {stderr}"
        );
    }
    // The password from the environment, as an operator would pass a secret.
    let start = |args: Vec<&str>, password: &str| {
        ServerProcess::try_start_env(
            &tmp.path().join("lock"),
            &args,
            &[("MINISTORE_NATS_PASSWORD", password)],
        )
    };

    let server = start(args(&[&backend, &tls, &user]), "s3cret pass").unwrap();
    let client = Client::connect(server.url()).await.unwrap();
    assert_eq!(client.append("behind-tls", &"through").await.unwrap(), 1);
    let read: Vec<(u64, String)> = client.replay("behind-tls", 1).await.unwrap();
    assert_eq!(read, vec![(1, "through".to_string())]);
    drop(server);

    for (what, args, password, says) in [
        (
            "a wrong password",
            args(&[&backend, &tls, &user]),
            "guess",
            "authorization violation",
        ),
        (
            "no client certificate",
            args(&[&backend, &tls[..2], &user]),
            "s3cret pass",
            "CertificateRequired",
        ),
        (
            "no CA for the servers' certificates",
            args(&[&backend, &tls[2..], &user]),
            "s3cret pass",
            "UnknownIssuer",
        ),
    ] {
        refused(what, start(args, password), &url, says);
    }
    drop(cluster);

    // A token instead: one node, one replica.
    let cluster = NatsCluster::start_with(1, "authorization {\n  token: \"t0ken\"\n}\n");
    let url = cluster.url();
    let backend = ["--backend", &url, "--nats-replicas", "1"];
    let with_token = |token| {
        ServerProcess::try_start(
            &tmp.path().join("lock"),
            &args(&[&backend, &["--nats-token", token]]),
        )
    };
    let server = with_token("t0ken").unwrap();
    let client = Client::connect(server.url()).await.unwrap();
    assert_eq!(client.append("by-token", &"in").await.unwrap(), 1);
    drop(server);
    refused(
        "a wrong token",
        with_token("nope"),
        &url,
        "authorization violation",
    );

    // No cluster there at all: the same, naming where it looked.
    drop(cluster);
    refused("no cluster", with_token("t0ken"), &url, "");
}
