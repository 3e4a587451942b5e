//! Faults from the environment: a write that fails part-way.
//!
//! The file-size limit (`RLIMIT_FSIZE`) makes the kernel cut a write short and then fail it
//! with `EFBIG`, like a full disk would, but it is per process. So the test re-runs its own
//! binary as a child that sets the limit, and this process stays unaffected: the parent
//! prepares a journal, the child appends into the limit and checks what the store says and
//! leaves, and the parent checks the files the child left.

use std::path::Path;
use std::process::Command;

use ministore::{MiniStore, MiniStoreError};
use ministore_tests::records::{read_all, seqs};

/// Set in the child's environment to the directory of the journal it works on.
const CHILD_DIR: &str = "MINISTORE_TEST_FSIZE_CHILD_DIR";
const TEST_NAME: &str =
    "an_append_past_the_file_size_limit_fails_with_efbig_and_keeps_the_journal_whole";
/// Records written by the parent before the child starts.
const BEFORE: u64 = 10;

/// Every record has the same length: 92 bytes as a journal line.
fn rec(i: u64) -> String {
    format!("{i:08}-{}", "x".repeat(80))
}

fn line_len() -> u64 {
    serde_json::to_string(&rec(0)).unwrap().len() as u64 + 1
}

#[tokio::test]
async fn an_append_past_the_file_size_limit_fails_with_efbig_and_keeps_the_journal_whole() {
    match std::env::var_os(CHILD_DIR) {
        Some(dir) => child(Path::new(&dir)).await,
        None => parent().await,
    }
}

async fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let mut store = MiniStore::open(&path).await.unwrap();
    for i in 1..=BEFORE {
        store.append(&rec(i)).await.unwrap();
    }
    drop(store);

    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // libtest prints the test's name first, so the count may share its line.
    let acknowledged: u64 = stdout
        .split_once("child acknowledged ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count from the child:\n{stdout}"));

    // Every acknowledged record, in order, and not a byte more.
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, (1..=acknowledged).map(rec).collect::<Vec<_>>());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count() as u64, 1 + acknowledged);
    let store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), acknowledged);
}

fn fsize_limit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) },
        0
    );
    limit
}

fn set_fsize_limit(limit: libc::rlimit) {
    // SAFETY: setrlimit reads the struct we pass; only this (child) process is affected.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

async fn child(dir: &Path) {
    // Without this, the kernel kills the process at the limit instead of failing the write.
    // SAFETY: ignoring a signal changes no memory; this process is the child alone.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let path = dir.join("journal.jsonl");
    let mut store = MiniStore::open(&path).await.unwrap();
    assert_eq!(store.last_seq(), BEFORE);
    let size = std::fs::metadata(&path).unwrap().len();
    let original = fsize_limit();
    // Room for three more records and half of a fourth: the fourth write is cut short.
    set_fsize_limit(libc::rlimit {
        rlim_cur: size + 3 * line_len() + line_len() / 2,
        rlim_max: original.rlim_max,
    });

    let mut next = BEFORE + 1;
    let err = loop {
        match store.append(&rec(next)).await {
            Ok(()) => next += 1,
            Err(e) => break e,
        }
        assert!(next <= BEFORE + 10, "the limit never stopped the appends");
    };
    let acknowledged = next - 1;

    assert_eq!(acknowledged, BEFORE + 3);
    assert!(matches!(err, MiniStoreError::Io { .. }), "{err:?}");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err:?}");
    assert_eq!(store.last_seq(), acknowledged);
    // The half-written record is gone from the file, and no reader sees it.
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        size + 3 * line_len()
    );
    let replayed: Vec<String> = MiniStore::replay(&path).await.unwrap();
    assert_eq!(replayed, (1..=acknowledged).map(rec).collect::<Vec<_>>());
    let read = read_all(&mut store.reader(1), 100).await;
    assert_eq!(seqs(&read), (1..=acknowledged).collect::<Vec<_>>());

    // A batch fails the same way, as a whole.
    let err = store
        .append_batch(&[rec(next), rec(next + 1)])
        .await
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err:?}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        size + 3 * line_len()
    );

    // Once there is room again the store goes on: the failure did not poison it.
    set_fsize_limit(original);
    assert_eq!(
        store.append_batch(&[rec(next)]).await.unwrap(),
        next..next + 1
    );
    drop(store);
    println!("child acknowledged {next}");
}
