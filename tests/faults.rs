//! Disk faults while the real `ministore-server` binary serves: a file-size limit (EFBIG), a
//! full file system (ENOSPC), a read-only file system (EROFS), and a journal file that may
//! no longer be written (the immutable flag: EPERM even for root, even through a file the
//! server already has open). Each failing append gets a clear status, nothing acknowledged
//! is lost, and the server recovers once the fault is gone, without a restart wherever the
//! fault can be removed from outside the process.
//!
//! Real faults need real privileges: these tests mount a tmpfs, remount a bind mount
//! read-only and set the immutable flag, so they run as root (as CI does) on a file system
//! that honours the immutable flag (ext4, xfs; not tmpfs).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ministore_client::{Client, ClientError};
use ministore_tests::files::header;
use ministore_tests::server::{ServerProcess, client_without_retries};
use ministore_tests::tools::printed;
use tokio_stream::StreamExt;
use tonic::Code;

/// Runs a privileged command (`mount`, `chattr`) and panics with its output if it fails.
fn run(program: &str, args: &[&str], path: &Path) {
    let out = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} {} failed; the fault tests need root (CAP_SYS_ADMIN for mounts, \
         CAP_LINUX_IMMUTABLE for chattr): {}",
        path.display(),
        printed(&out)
    );
}

/// A mount made by a test, unmounted when dropped (lazily, should a server still hold it).
struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` (e.g. "256k") at `at`.
    fn tmpfs(at: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            at,
        );
        Mount(at.to_path_buf())
    }

    /// `dir` bind-mounted onto itself, so that it can be made read-only on its own.
    fn bind(dir: &Path) -> Mount {
        run("mount", &["--bind", &dir.to_string_lossy()], dir);
        Mount(dir.to_path_buf())
    }

    /// Makes the bind mount read-only (`false`) or writable again (`true`).
    fn set_writable(&self, writable: bool) {
        let mode = if writable {
            "remount,rw,bind"
        } else {
            "remount,ro,bind"
        };
        run("mount", &["-o", mode], &self.0);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The immutable flag on a file, cleared when dropped (or the temporary directory could not
/// be deleted).
struct Immutable(PathBuf);

impl Immutable {
    fn set(file: &Path) -> Immutable {
        run("chattr", &["+i"], file);
        Immutable(file.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// A record of exactly `len` bytes of JSON: a string.
fn record(i: u64, len: usize) -> String {
    let head = format!("{i:06}-");
    format!("{head}{}", "x".repeat(len - 2 - head.len()))
}

fn assert_code(err: &ClientError, code: Code, fragments: &[&str]) {
    assert_eq!(err.code(), Some(code), "{err}");
    for fragment in fragments {
        assert!(
            err.to_string().contains(fragment),
            "{fragment:?} not in: {err}"
        );
    }
}

/// The server's file-size limit, set in the child before it runs the binary.
fn file_size_limit(limit: u64) -> impl FnOnce(&mut Command) {
    move |command| {
        // SAFETY: runs in the forked child before exec; signal and setrlimit are
        // async-signal-safe and change only the child.
        unsafe {
            command.pre_exec(move || {
                // Without this the kernel kills the server at the limit (SIGXFSZ) instead of
                // failing the write with EFBIG.
                if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                // The hard limit too: the server cannot raise it back.
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_past_the_file_size_limit_is_resource_exhausted_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    const BIG: usize = 1000;
    const SMALL: usize = 100;
    let line = |len: usize| len as u64 + 1;
    // Room for ten big records and half of an eleventh, which the kernel writes part of.
    let start = header(1).len() as u64;
    let limit = start + 10 * line(BIG) + line(BIG) / 2;
    let server = ServerProcess::start_with(tmp.path(), &[], file_size_limit(limit));
    let client = Client::connect(server.url()).await.unwrap();

    let mut acked = Vec::new();
    let err = loop {
        let i = acked.len() as u64 + 1;
        match client.append("capped", &record(i, BIG)).await {
            Ok(seq) => acked.push((seq, record(i, BIG))),
            Err(e) => break e,
        }
        assert!(
            acked.len() < 20,
            "the file-size limit never stopped the appends"
        );
    };
    assert_eq!(acked.len(), 10);
    assert_code(
        &err,
        Code::ResourceExhausted,
        &[
            "File too large",
            "raise the file-size limit",
            "nothing was written",
        ],
    );
    let active = tmp.path().join("capped/journal.jsonl");
    let size = || std::fs::metadata(&active).unwrap().len();
    assert_eq!(
        size(),
        start + 10 * line(BIG),
        "the cut-short write was truncated"
    );

    // The failure did not stop the journal: a record that still fits is taken, in the room
    // the failed write left behind. A batch that does not fit is refused as a whole.
    assert_eq!(
        client.append("capped", &record(11, SMALL)).await.unwrap(),
        11
    );
    acked.push((11, record(11, SMALL)));
    let err = client
        .append_batch("capped", &[record(12, SMALL), record(13, BIG)])
        .await
        .unwrap_err();
    assert_code(&err, Code::ResourceExhausted, &["nothing was written"]);
    assert_eq!(size(), start + 10 * line(BIG) + line(SMALL));
    let stored: Vec<(u64, String)> = client.replay("capped", 1).await.unwrap();
    assert_eq!(stored, acked);

    // The limit cannot be lifted from outside the process: restart without it.
    server.signal("TERM");
    let (code, logs) = server.wait();
    assert_eq!(code, Some(0), "{logs}");
    let server = ServerProcess::start(tmp.path(), &[]);
    let client = Client::connect(server.url()).await.unwrap();
    let stored: Vec<(u64, String)> = client.replay("capped", 1).await.unwrap();
    assert_eq!(stored, acked);
    assert_eq!(client.append("capped", &record(12, BIG)).await.unwrap(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_appends_resume_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Mount::tmpfs(&tmp.path().join("fs"), "256k");
    // Half the file system: deleting it is how the operator frees space.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 128 * 1024]).unwrap();
    // Small segments, so that rotations (new files, renames) happen while it fills up.
    let server = ServerProcess::start(
        &fs.0.join("data"),
        &["--max-bytes-per-segment", "16384", "--max-segments", "0"],
    );
    let client = Client::connect(server.url()).await.unwrap();

    let mut acked = Vec::new();
    let err = loop {
        let i = acked.len() as u64 + 1;
        match client.append("full", &record(i, 3000)).await {
            Ok(seq) => acked.push((seq, record(i, 3000))),
            Err(e) => break e,
        }
        assert!(acked.len() < 100, "the file system never filled up");
    };
    assert_code(
        &err,
        Code::ResourceExhausted,
        &[
            "No space left on device",
            "free disk space",
            "nothing was written",
        ],
    );
    // Still full: refused again, and every acknowledged record is served.
    let err = client.append("full", &record(0, 3000)).await.unwrap_err();
    assert_code(&err, Code::ResourceExhausted, &["free disk space"]);
    let stored: Vec<(u64, String)> = client.replay("full", 1).await.unwrap();
    assert_eq!(stored, acked);

    std::fs::remove_file(&ballast).unwrap();
    let next = acked.len() as u64 + 1;
    assert_eq!(
        client.append("full", &record(next, 3000)).await.unwrap(),
        next,
        "the same server takes appends once there is room: {}",
        server.logs()
    );
    acked.push((next, record(next, 3000)));
    let stored: Vec<(u64, String)> = client.replay("full", 1).await.unwrap();
    assert_eq!(stored, acked);
    println!("{next} records; server log:\n{}", server.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_file_system_is_unavailable_and_appends_resume_once_it_is_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A journal written by an earlier run. While a server has a file open for writing, the
    // kernel refuses to make its mount read-only (EBUSY), so the fault is set up between runs.
    let server = ServerProcess::start(&data, &[]);
    let client = Client::connect(server.url()).await.unwrap();
    for i in 1..=5u64 {
        client.append("ro", &i).await.unwrap();
    }
    server.signal("TERM");
    assert_eq!(server.wait().0, Some(0));

    let mount = Mount::bind(&data.join("ro"));
    mount.set_writable(false);
    let server = ServerProcess::start(&data, &[]);
    let client = client_without_retries(&server.url()).await;
    let err = client.append("ro", &6u64).await.unwrap_err();
    assert_code(
        &err,
        Code::Unavailable,
        &["Read-only file system", "check the data directory"],
    );
    let err = client.append("ro", &6u64).await.unwrap_err();
    assert_code(&err, Code::Unavailable, &["Read-only file system"]);
    // The rest of the data directory is served meanwhile.
    assert_eq!(client.append("rw", &1u64).await.unwrap(), 1);

    mount.set_writable(true);
    assert_eq!(client.append("ro", &6u64).await.unwrap(), 6);
    let stored: Vec<(u64, u64)> = client.replay("ro", 1).await.unwrap();
    assert_eq!(stored, (1..=6).map(|i| (i, i)).collect::<Vec<_>>());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_file_that_cannot_be_written_is_unavailable_and_goes_on_once_it_can() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &[]);
    let client = client_without_retries(&server.url()).await;
    for i in 1..=5u64 {
        assert_eq!(client.append("locked", &i).await.unwrap(), i);
    }
    // A follower stays open through the fault and the reopen.
    let mut tail = client.stream::<u64>("locked", 1, true);
    for i in 1..=5u64 {
        assert_eq!(tail.next().await.unwrap().unwrap(), (i, i));
    }

    let active = tmp.path().join("locked/journal.jsonl");
    let immutable = Immutable::set(&active);
    let err = client.append("locked", &6u64).await.expect_err(
        "an append to an immutable file succeeded: this file system lets open files be \
         written despite chattr +i (tmpfs does); run the tests on ext4 or xfs",
    );
    assert_code(
        &err,
        Code::Unavailable,
        &["Operation not permitted", "check the data directory"],
    );
    // The writer could not cut back what it tried to write, so it refuses writes (trying
    // the cut again each time) until the cut succeeds; it never reopens over those bytes.
    let err = client.append("locked", &6u64).await.unwrap_err();
    assert_code(&err, Code::Unavailable, &["Operation not permitted"]);
    let stored: Vec<(u64, u64)> = client.replay("locked", 1).await.unwrap();
    assert_eq!(stored, (1..=5).map(|i| (i, i)).collect::<Vec<_>>());

    drop(immutable); // clears the flag
    assert_eq!(client.append("locked", &6u64).await.unwrap(), 6);
    assert_eq!(client.append("locked", &7u64).await.unwrap(), 7);
    assert_eq!(tail.next().await.unwrap().unwrap(), (6, 6));
    assert_eq!(tail.next().await.unwrap().unwrap(), (7, 7));
    let stored: Vec<(u64, u64)> = client.replay("locked", 1).await.unwrap();
    assert_eq!(stored, (1..=7).map(|i| (i, i)).collect::<Vec<_>>());
    let logs = server.logs();
    assert!(logs.contains("refusing writes until it succeeds"), "{logs}");
    assert!(!logs.contains("reopened journal after a failure"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_fails_keeps_every_record_and_is_finished_once_it_can() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path(), &["--max-bytes-per-segment", "1024"]);
    let client = Client::connect(server.url()).await.unwrap();
    let mut n = 0u64;
    while client
        .info("rot")
        .await
        .map_or(true, |info| info.segments < 2)
    {
        n += 1;
        assert_eq!(client.append("rot", &record(n, 100)).await.unwrap(), n);
    }

    // No file can be renamed or created in the journal's directory: every rotation fails
    // after its records were made durable. They are acknowledged, and each append reopens
    // the journal the failed rotation left poisoned.
    let dir = Immutable::set(&tmp.path().join("rot"));
    for _ in 0..30 {
        n += 1;
        assert_eq!(client.append("rot", &record(n, 100)).await.unwrap(), n);
    }
    assert_eq!(client.info("rot").await.unwrap().segments, 2);
    let logs = server.logs();
    assert!(logs.contains("segment rotation failed"), "{logs}");
    assert!(logs.contains("reopened journal after a failure"), "{logs}");

    drop(dir); // clears the flag
    n += 1;
    assert_eq!(client.append("rot", &record(n, 100)).await.unwrap(), n);
    assert_eq!(client.info("rot").await.unwrap().segments, 3);
    let stored: Vec<(u64, String)> = client.replay("rot", 1).await.unwrap();
    assert_eq!(
        stored,
        (1..=n).map(|i| (i, record(i, 100))).collect::<Vec<_>>()
    );
}

/// Fails every read of a journal file by an RPC while switched on, with EIO (a failing disk
/// sector, a cable pulled from a disk array).
#[derive(Debug, Default)]
struct FailingReads(std::sync::atomic::AtomicBool);

impl ministore::io::FaultInjector for FailingReads {
    fn fault(&self, op: ministore::io::FileOp, _path: &Path) -> Option<ministore::io::Fault> {
        (op == ministore::io::FileOp::Read && self.0.load(std::sync::atomic::Ordering::SeqCst))
            .then(|| ministore::io::Fault::Fail(std::io::Error::from_raw_os_error(5)))
    }
}

#[tokio::test]
async fn a_read_failing_with_eio_is_unavailable_naming_the_file_and_reads_resume_once_it_clears() {
    use ministore::proto::StreamRequest;
    use ministore_tests::server::TestServer;
    let tmp = tempfile::tempdir().unwrap();
    let faults = std::sync::Arc::new(FailingReads::default());
    let mut config = ministore_server::Config::with_data_dir(tmp.path());
    config.store_faults = ministore::MiniStoreOptions::new()
        .inject_faults(faults.clone())
        .faults;
    let server = TestServer::start_with(config).await;
    let client = server.client().await;
    for i in 1..=3u64 {
        assert_eq!(client.append("disk", &i).await.unwrap(), i);
    }

    faults.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = client.replay_page::<u64>("disk", 1, 0).await.unwrap_err();
    assert_code(
        &err,
        Code::Unavailable,
        &["disk/journal.jsonl", "os error 5"],
    );
    let mut stub = server.stub().await;
    let request = StreamRequest {
        journal: "disk".into(),
        from_seq: 1,
        ..Default::default()
    };
    let status = match stub.stream(request).await {
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("os error 5"), "{status:?}");
    // Appends do not read: they go on while reads fail.
    assert_eq!(client.append("disk", &4u64).await.unwrap(), 4);

    faults.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let all: Vec<(u64, u64)> = client.replay("disk", 1).await.unwrap();
    assert_eq!(all, [(1, 1), (2, 2), (3, 3), (4, 4)]);
}
