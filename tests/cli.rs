//! The `ministore` tool, run as a user runs it: `verify`, `dump` and `inspect` on real data
//! directories, clean, damaged in each way a disk or a person can damage them, and live
//! under a running server; `append`, `tail`, `ls` and `info` against the real server
//! binary, across a restart of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ministore::{JsonLine, MiniStore};
use ministore_tests::binaries::ministore_binary;
use ministore_tests::docs::{DocStep, console_steps};
use ministore_tests::files::{SegmentIndex, header, index_path, rotated_segments};
use ministore_tests::records::{INDEXED_RECORDS, fixed_width, indexed_journal};
use ministore_tests::server::ServerProcess;
use ministore_tests::tools;

/// What a run of the tool gave: exit status, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The lines of stdout that start with `prefix` ("DAMAGE:", "warning:", ...).
    fn lines(&self, prefix: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `ministore ARGS`, killing it if it has not finished within a minute.
fn ministore(args: &[&str]) -> Run {
    let child = Command::new(ministore_binary())
        .args(args)
        .env_remove("MINISTORE_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ministore");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output: Output = match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(output) => output.expect("wait for ministore"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("ministore {args:?} did not finish within 60 s");
        }
    };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// A data directory holding `orders` (records `fixed_width(1..=50000)` in three indexed
/// rotated segments and the active file) and `audit` (three small records), both closed.
async fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    drop(indexed_journal(&data.join("orders")).await);
    let mut audit = MiniStore::open(data.join("audit/journal.jsonl"))
        .await
        .unwrap();
    audit.append_batch(&["a", "b", "c"]).await.unwrap();
    drop(audit);
    let orders = data.join("orders/journal.jsonl");
    assert_eq!(rotated_segments(&orders).len(), 3, "the fixture rotated");
    (tmp, data)
}

/// A segment's first seq (from its header) and where each of its lines starts.
fn lines_of(segment: &Path) -> (u64, Vec<u64>) {
    let bytes = std::fs::read(segment).unwrap();
    let header = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let first_seq = String::from_utf8_lossy(&bytes[..header])
        .split("first_seq=")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("a header with first_seq");
    let mut starts = vec![header as u64];
    for (i, &b) in bytes.iter().enumerate().skip(header) {
        if b == b'\n' && i + 1 < bytes.len() {
            starts.push(i as u64 + 1);
        }
    }
    (first_seq, starts)
}

/// The `{"seq":N,"record":...}` lines of a dump, parsed.
fn dumped(run: &Run) -> Vec<(u64, serde_json::Value)> {
    run.stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (v["seq"].as_u64().expect("a seq"), v["record"].clone())
        })
        .collect()
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, serde_json::Value)> {
    range.map(|i| (i, fixed_width(i).into())).collect()
}

#[tokio::test]
async fn verify_passes_a_clean_data_directory_and_says_what_it_holds() {
    let (_tmp, data) = data_dir().await;
    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "orders/journal.jsonl: 4 files, records 1..={INDEXED_RECORDS} ({INDEXED_RECORDS})"
        )),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("audit/journal.jsonl: 1 file, records 1..=3 (3)")
    );
    assert!(run.lines("DAMAGE").is_empty() && run.lines("warning").is_empty());
    assert!(
        run.stdout.contains("2 journals, 0 damaged: clean"),
        "{run:?}"
    );

    let run = ministore(&["verify", "--json", arg(&data)]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON report");
    assert_eq!(report["verdict"], "clean");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["journals"].as_array().unwrap().len(), 2);

    // The same for one journal, by its directory or its file, and from the environment.
    for path in [data.join("orders"), data.join("orders/journal.jsonl")] {
        assert_eq!(ministore(&["verify", arg(&path)]).code, Some(0));
    }
    let status = Command::new(ministore_binary())
        .arg("verify")
        .env("MINISTORE_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0));
}

#[tokio::test]
async fn a_torn_tail_in_a_rotated_segment_is_damage_at_its_seq_and_offset() {
    let (_tmp, data) = data_dir().await;
    let segment = &rotated_segments(&data.join("orders/journal.jsonl"))[1];
    let (first_seq, starts) = lines_of(segment);
    let len = std::fs::metadata(segment).unwrap().len();
    // Cut the last record in the middle, as a lost write of its end would leave it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let last = starts.len() as u64 - 1;
    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let torn = format!(
        "DAMAGE: {}: seq {}, line {}, byte {}: this sealed segment ends with",
        segment.display(),
        first_seq + last,
        last + 2,
        starts[last as usize]
    );
    assert!(run.stdout.contains(&torn), "expected {torn}\n{run:?}");
    // Its index no longer fits the shorter file: readers ignore it, which is a warning.
    assert!(
        run.stdout
            .contains(&format!("warning: {}", index_path(segment).display())),
        "{run:?}"
    );
    // A dump stops at the damage, naming the missing seq and the files.
    let dump = ministore(&["dump", arg(&data.join("orders"))]);
    assert_eq!(dump.code, Some(1), "{dump:?}");
    assert_eq!(dumped(&dump), expected(1..=first_seq + last - 1));
    assert!(
        dump.stderr
            .contains(&format!("record {} is missing", first_seq + last)),
        "{dump:?}"
    );
    assert!(dump.stderr.contains(arg(segment)), "{dump:?}");
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_of_a_segment_is_damage_at_its_seq_and_offset() {
    let (_tmp, data) = data_dir().await;
    let segment = &rotated_segments(&data.join("orders/journal.jsonl"))[1];
    let (first_seq, starts) = lines_of(segment);
    let k = starts.len() / 2;
    let mut bytes = std::fs::read(segment).unwrap();
    bytes[starts[k] as usize] ^= 0x01; // the opening quote becomes '#'
    std::fs::write(segment, &bytes).unwrap();
    let seq = first_seq + k as u64;

    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let damage = run.lines("DAMAGE");
    assert_eq!(damage.len(), 1, "{run:?}");
    assert!(
        damage[0].starts_with(&format!(
            "DAMAGE: {}: seq {seq}, line {}, byte {}: not JSON",
            segment.display(),
            k + 2,
            starts[k]
        )),
        "{run:?}"
    );
    // The structure is intact, so the quick check does not see it; the full one does.
    assert_eq!(ministore(&["inspect", arg(&data)]).code, Some(0));

    let dump = ministore(&["dump", "--from", "2", arg(&data.join("orders"))]);
    assert_eq!(dump.code, Some(1), "{dump:?}");
    assert_eq!(dumped(&dump), expected(2..=seq - 1));
    // Its reader checks each record's CRC32C before it parses it: that is what stops it.
    assert!(
        dump.stderr.contains(&format!(
            "{}: record {seq} at byte {} fails its CRC32C",
            segment.display(),
            starts[k]
        )),
        "{dump:?}"
    );
}

#[tokio::test]
async fn a_missing_middle_segment_is_a_gap_naming_the_missing_seqs() {
    let (_tmp, data) = data_dir().await;
    let segments = rotated_segments(&data.join("orders/journal.jsonl"));
    let (first, starts) = lines_of(&segments[1]);
    let last = first + starts.len() as u64 - 1;
    std::fs::remove_file(&segments[1]).unwrap();

    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let damage = run.lines("DAMAGE");
    assert_eq!(damage.len(), 1, "{run:?}");
    assert!(
        damage[0].starts_with(&format!(
            "DAMAGE: {}: seq {first}: records {first}..={last} are missing: {} holds records",
            segments[2].display(),
            segments[0].display()
        )),
        "{run:?}"
    );
    // Its index is left behind: an orphan the next open deletes.
    assert!(
        run.stdout
            .contains(&format!("info: {}", index_path(&segments[1]).display())),
        "{run:?}"
    );
    let inspect = ministore(&["inspect", arg(&data)]);
    assert_eq!(inspect.code, Some(1), "{inspect:?}");
    assert!(inspect.stdout.contains("DAMAGED"), "{inspect:?}");
}

#[tokio::test]
async fn a_foreign_file_among_the_segments_is_damage_naming_it() {
    let (_tmp, data) = data_dir().await;
    let segment = &rotated_segments(&data.join("orders/journal.jsonl"))[1];
    std::fs::write(segment, "shopping list\neggs\n").unwrap();
    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "DAMAGE: {}: line 1, byte 0: a file named like a segment of this journal is not a journal",
            segment.display()
        )),
        "{run:?}"
    );
    // A file of another name is only noted: readers and the server ignore it.
    std::fs::write(data.join("orders/notes.txt"), "hello").unwrap();
    let run = ministore(&["verify", arg(&data.join("audit"))]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let run = ministore(&["verify", arg(&data)]);
    assert!(
        run.stdout.contains(&format!(
            "info: {}",
            data.join("orders/notes.txt").display()
        )),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_stale_index_is_a_warning_and_a_wrong_one_is_damage() {
    let (_tmp, data) = data_dir().await;
    let segment = &rotated_segments(&data.join("orders/journal.jsonl"))[0];
    let sidecar = index_path(segment);
    let good = SegmentIndex::read(&sidecar);

    // For another segment (a different first seq): readers ignore it.
    let stale = SegmentIndex {
        first_seq: good.first_seq + 1,
        ..good.clone()
    };
    std::fs::write(&sidecar, stale.encode()).unwrap();
    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let warnings = run.lines("warning");
    assert_eq!(warnings.len(), 1, "{run:?}");
    assert!(
        warnings[0].starts_with(&format!("warning: {}:", sidecar.display()))
            && warnings[0].contains("readers ignore it"),
        "{run:?}"
    );
    let inspect = ministore(&["inspect", arg(&data.join("orders"))]);
    assert!(inspect.stdout.contains("ignored"), "{inspect:?}");

    // Fits its segment in every checked way, but numbers a line wrongly: readers would
    // trust it.
    let mut wrong = good.clone();
    wrong.entries[0].0 += 1;
    std::fs::write(&sidecar, wrong.encode()).unwrap();
    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "DAMAGE: {}: the index says record",
            sidecar.display()
        )),
        "{run:?}"
    );
}

#[tokio::test]
async fn an_unfinished_write_in_the_active_file_is_a_warning_that_open_repairs() {
    let (_tmp, data) = data_dir().await;
    let active = data.join("audit/journal.jsonl");
    let len = std::fs::metadata(&active).unwrap().len();
    let mut bytes = std::fs::read(&active).unwrap();
    bytes.extend_from_slice(b"{\"half\":");
    std::fs::write(&active, &bytes).unwrap();

    let run = ministore(&["verify", arg(&data)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let warnings = run.lines("warning");
    assert_eq!(warnings.len(), 1, "{run:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "warning: {}: seq 4, line 5, byte {len}: the last 8 bytes are not complete records",
            active.display()
        )) && warnings[0].contains("the next open cuts it"),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read(&active).unwrap(),
        bytes,
        "verify wrote nothing"
    );
    drop(MiniStore::open(&active).await.unwrap());
    let run = ministore(&["verify", arg(&data)]);
    assert!(run.lines("warning").is_empty(), "{run:?}");
}

#[tokio::test]
async fn repair_fixes_what_a_crash_left_keeping_a_copy_and_leaves_damage_it_cannot_fix() {
    let (_tmp, data) = data_dir().await;
    let active = data.join("audit/journal.jsonl");
    let mut bytes = std::fs::read(&active).unwrap();
    bytes.extend_from_slice(b"\"d\"\n{\"half\":");
    std::fs::write(&active, &bytes).unwrap();

    let run = ministore(&["repair", arg(&data.join("audit"))]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("copied to"), "{run:?}");
    assert!(run.stdout.ends_with("clean\n"), "{run:?}");
    // The copy holds the file as it was; the journal holds its committed records only
    // (the complete line without a metadata entry was never acknowledged).
    let copy = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("journal.jsonl.before-repair-")
        })
        .expect("a copy of the active file");
    assert_eq!(std::fs::read(copy).unwrap(), bytes);
    let dump = ministore(&["dump", arg(&data.join("audit"))]);
    let records: Vec<_> = dumped(&dump).into_iter().map(|(_, r)| r).collect();
    assert_eq!(records, ["a", "b", "c"]);
    assert!(
        ministore(&["verify", arg(&data)])
            .lines("warning")
            .is_empty()
    );

    // Damage no repair can fix without losing the record: reported, left as it is.
    let segment = &rotated_segments(&data.join("orders/journal.jsonl"))[1];
    let mut damaged = std::fs::read(segment).unwrap();
    let (_, starts) = lines_of(segment);
    damaged[starts[3] as usize + 2] ^= 0x01;
    std::fs::write(segment, &damaged).unwrap();
    let run = ministore(&["repair", arg(&data)]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("DAMAGED"), "{run:?}");
    assert_eq!(std::fs::read(segment).unwrap(), damaged);

    // Never under a running server.
    let server = ServerProcess::start(&data, &[]);
    let run = ministore(&["repair", arg(&data)]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("stop it, then repair"), "{run:?}");
    drop(server);
}

#[tokio::test]
async fn dump_prints_exactly_the_stored_records_with_their_seqs() {
    let (_tmp, data) = data_dir().await;
    let orders = data.join("orders");
    let run = ministore(&["dump", arg(&orders)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(dumped(&run), expected(1..=INDEXED_RECORDS));

    // Ranges inside one segment, across segment boundaries, into the active file, past
    // the end.
    let boundary = lines_of(&rotated_segments(&orders.join("journal.jsonl"))[1]).0;
    for (from, to) in [
        (1, 1),
        (boundary - 3, boundary + 3),
        (30_000, 40_000),
        (INDEXED_RECORDS - 1, INDEXED_RECORDS + 10),
    ] {
        let run = ministore(&[
            "dump",
            arg(&orders),
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(
            dumped(&run),
            expected(from..=to.min(INDEXED_RECORDS)),
            "{from}..={to}"
        );
    }
    let run = ministore(&["dump", arg(&orders), "--from", "10", "--to", "9"]);
    assert_eq!(run.code, Some(2), "{run:?}");

    // The stored text itself, not a re-encoding: numbers keep their digits, keys their order.
    let path = data.join("exact/journal.jsonl");
    let mut store = MiniStore::open(&path).await.unwrap();
    let stored = [r#"{"z":1.50,"a":[1e3,-0]}"#, r#""\u00e9""#];
    let lines: Vec<JsonLine> = stored
        .iter()
        .map(|s| JsonLine::from_slice(s.as_bytes()).unwrap())
        .collect();
    store.append_json(&lines).await.unwrap();
    let run = ministore(&["dump", arg(&path)]);
    assert_eq!(
        run.stdout,
        format!(
            "{{\"seq\":1,\"record\":{}}}\n{{\"seq\":2,\"record\":{}}}\n",
            stored[0], stored[1]
        )
    );
}

#[tokio::test]
async fn inspect_shows_each_segments_seq_range_and_index() {
    let (_tmp, data) = data_dir().await;
    let base = data.join("orders/journal.jsonl");
    let run = ministore(&["inspect", arg(&data)]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let mut files = rotated_segments(&base);
    files.push(base.clone());
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("journal.jsonl"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let orders_rows = &rows[rows.len() - files.len()..];
    for (file, row) in files.iter().zip(orders_rows) {
        let (first, starts) = lines_of(file);
        let last = first + starts.len() as u64 - 1;
        let bytes = std::fs::metadata(file).unwrap().len();
        let index = if file == &base { "-" } else { "yes" };
        assert_eq!(
            row[..6],
            [
                file.file_name().unwrap().to_str().unwrap(),
                &first.to_string(),
                &last.to_string(),
                &starts.len().to_string(),
                &bytes.to_string(),
                index
            ],
            "{run:?}"
        );
    }
    assert!(run.stdout.contains(&format!(
        "4 files, records 1..={INDEXED_RECORDS} ({INDEXED_RECORDS})"
    )));

    let run = ministore(&["inspect", "--json", arg(&data.join("orders"))]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let segments = report["journals"][0]["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 4);
    assert_eq!(segments[0]["first_seq"], 1);
    assert_eq!(segments[0]["index"], "used");
    assert_eq!(report["journals"][0]["depth"], "structure");
}

#[tokio::test]
async fn dump_and_verify_read_a_journal_a_running_server_has_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::start(&data, &["--max-bytes-per-segment", "65536"]);
    let client = ministore_client::Client::connect(server.url())
        .await
        .unwrap();
    let record = |i: u64| serde_json::json!({ "n": i, "pad": "x".repeat(200) });
    let records: Vec<serde_json::Value> = (1..=2000).map(record).collect();
    for (i, chunk) in records.chunks(100).enumerate() {
        let seqs = client.append_batch("live", chunk).await.unwrap();
        assert_eq!(*seqs.start(), i as u64 * 100 + 1);
    }
    let journal = data.join("live");
    assert!(rotated_segments(&journal.join("journal.jsonl")).len() >= 5);

    // More appends while dumping: every record acknowledged before the dump started is in
    // it, in order, and whatever else it shows continues the sequence.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 2001..=3000 {
                client.append("live", &record(i)).await.unwrap();
            }
        })
    };
    let dump_path = journal.clone();
    let run = tokio::task::spawn_blocking(move || ministore(&["dump", arg(&dump_path)]))
        .await
        .unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    let got = dumped(&run);
    assert!(got.len() >= 2000, "{} records", got.len());
    for (i, (seq, value)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(value, &record(*seq));
    }
    writer.await.unwrap();

    // With the server still running: verify is clean, and the journal is still served.
    let run = tokio::task::spawn_blocking(move || ministore(&["verify", arg(&data)]))
        .await
        .unwrap();
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("records 1..=3000 (3000)"), "{run:?}");
    assert_eq!(client.append("live", &record(3001)).await.unwrap(), 3001);
}

#[test]
fn paths_that_are_not_there_or_not_a_journal_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing");
    for command in ["verify", "inspect", "dump"] {
        let run = ministore(&[command, arg(&missing)]);
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(run.stderr.contains(arg(&missing)), "{run:?}");
    }
    let run = ministore(&["dump", arg(tmp.path())]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("is not a journal"), "{run:?}");
    assert_eq!(ministore(&["verify"]).code, Some(2));
}

#[test]
fn the_session_in_the_readme_prints_what_it_shows() {
    let readme = std::fs::read_to_string(tools::workspace_root().join("README.md")).unwrap();
    let offline = ["ministore verify ", "ministore dump ", "ministore inspect "];
    let steps: Vec<DocStep> = console_steps(&readme)
        .into_iter()
        .filter(|s| offline.iter().any(|c| s.command.starts_with(c)))
        .collect();
    assert_eq!(steps.len(), 5, "the README's offline ministore session");

    // The data directory the session shows: two journals, `orders` in three files.
    let tmp = tempfile::tempdir().unwrap();
    let segment = |path: &str, first_seq: u64, records: &[String]| {
        let path = tmp.path().join("data").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let lines: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(path, header(first_seq) + &lines).unwrap();
    };
    let order = |id: u64, item: &str| format!(r#"{{"id":{id},"item":"{item}"}}"#);
    let orders = |ids: std::ops::RangeInclusive<u64>, item: &str| -> Vec<String> {
        ids.map(|id| order(id, item)).collect()
    };
    segment("orders/journal.jsonl.000001", 1, &orders(1..=3, "book"));
    segment("orders/journal.jsonl.000002", 4, &orders(4..=6, "pen"));
    segment("orders/journal.jsonl", 7, &orders(7..=8, "ink"));
    segment(
        "audit/journal.jsonl",
        1,
        &[r#"{"user":"alice","action":"login"}"#.to_owned()],
    );

    let bin_dir = ministore_binary().parent().unwrap().to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    for (i, step) in steps.iter().enumerate() {
        if i == 3 {
            // "After a byte of record 5 was flipped and a write was cut short":
            let sealed = tmp.path().join("data/orders/journal.jsonl.000002");
            let text = std::fs::read_to_string(&sealed).unwrap();
            std::fs::write(&sealed, text.replace(r#"{"id":5"#, r#"x"id":5"#)).unwrap();
            let active = tmp.path().join("data/orders/journal.jsonl");
            let mut bytes = std::fs::read(&active).unwrap();
            bytes.extend_from_slice(br#"{"id":9,"it"#);
            std::fs::write(&active, bytes).unwrap();
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{{ {}; }} 2>&1", step.command))
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env_remove("MINISTORE_DATA_DIR")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            step.output,
            "$ {}",
            step.command
        );
    }
}

/// `PATH` with the directory of the built `ministore` first, as after `cargo install`.
fn path_with_ministore() -> std::ffi::OsString {
    let bin_dir = ministore_binary().parent().unwrap().to_path_buf();
    std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap()
}

/// A command of the docs run with `sh` as typed, talking to the server at `addr` through
/// `MINISTORE_ADDR` (the docs leave `--addr` at its default).
fn shell(command: &str, addr: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(command)
        .env("PATH", path_with_ministore())
        .env("MINISTORE_ADDR", addr)
        .env_remove("MINISTORE_TOKEN")
        .env_remove("MINISTORE_CA_CERT")
        .stdin(std::process::Stdio::null());
    sh
}

/// The lines a running command prints, read by a thread so that the test waits for each
/// within a bound instead of blocking on the pipe.
struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut std::process::Child) -> Lines {
        use std::io::BufRead;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, within 30 s.
    fn next(&self, what: &str) -> String {
        self.0
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: no line within 30 s ({e})"))
    }
}

#[test]
fn the_online_session_in_the_readme_runs_as_shown_and_tail_follows_across_a_restart() {
    let readme = std::fs::read_to_string(tools::workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("## At a terminal")
        .expect("the README's terminal section");
    let end = start + 3 + readme[start + 3..].find("\n## ").expect("the next section");
    let steps = console_steps(&readme[start..end]);
    let commands: Vec<&str> = steps.iter().map(|s| s.command.as_str()).collect();
    assert_eq!(
        commands,
        [
            r#"echo '{"a":1}' | ministore append orders -"#,
            "ministore tail -f orders",
            "ministore ls",
            "ministore info orders",
        ],
        "the README's session"
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let addr = server.addr.to_string();
    let mut tail = None;
    for step in &steps {
        if step.command.contains("tail -f") {
            // It never ends: check the lines it prints, then leave it running. The line in
            // parentheses is the README's comment on what happens next.
            // `exec`: the shell becomes the tool, so killing the child stops the tail.
            let mut child = shell(&format!("exec {}", step.command), &addr)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = Lines::of(&mut child);
            for shown in step.output.lines().filter(|l| !l.starts_with('(')) {
                assert_eq!(lines.next(&step.command), shown, "$ {}", step.command);
            }
            tail = Some((child, lines));
            continue;
        }
        let out = shell(&format!("{{ {}; }} 2>&1", step.command), &addr)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            step.output,
            "$ {}",
            step.command
        );
    }
    let (mut child, lines) = tail.expect("the session runs tail -f");
    let append = |record: &str| {
        let out = shell(&format!("ministore append orders '{record}'"), &addr)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    assert_eq!(append(r#"{"a":2}"#), "2");
    assert_eq!(lines.next("tail -f, live"), r#"{"a":2}"#);

    // The server dies without a goodbye and comes back on the same port and data.
    server.signal("KILL");
    let (_, _) = server.wait();
    let server = ServerProcess::start(&data, &["--listen", &addr]);
    assert_eq!(append(r#"{"a":3}"#), "3");
    assert_eq!(
        lines.next("tail -f, after the restart"),
        r#"{"a":3}"#,
        "the tail goes on with the next record: no gap, no duplicate"
    );
    assert_eq!(append(r#"{"a":4}"#), "4");
    assert_eq!(lines.next("tail -f, after the restart"), r#"{"a":4}"#);

    child.kill().unwrap();
    child.wait().unwrap();
    let rest: Vec<String> = lines.0.iter().collect();
    assert!(rest.is_empty(), "tail printed more: {rest:?}");
    drop(server);
}

#[test]
fn online_commands_exit_with_the_documented_codes_and_name_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]);
    let addr = server.addr.to_string();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--addr", &addr]);
        ministore(&all)
    };

    let ok = run(&["append", "orders", r#"{"id": 1}"#]);
    assert_eq!((ok.code, ok.stdout.as_str()), (Some(0), "1\n"), "{ok:?}");
    let ok = run(&["tail", "orders"]);
    assert_eq!(
        (ok.code, ok.stdout.as_str()),
        (Some(0), "{\"id\":1}\n"),
        "{ok:?}"
    );
    let ok = run(&["ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(ok.stdout.trim()).expect("one line");
    assert_eq!(
        (&listed["name"], &listed["first_seq"], &listed["last_seq"]),
        (&"orders".into(), &1.into(), &1.into()),
        "{ok:?}"
    );

    // 4: not found, for info and for a tail that does not follow.
    for args in [&["info", "nope"][..], &["tail", "nope"]] {
        let run = run(args);
        assert_eq!(run.code, Some(4), "{run:?}");
        assert_eq!(
            run.stderr,
            format!(
                "ministore: {addr}: journal \"nope\" does not exist; it is created by its first Append (NOT_FOUND)\n"
            )
        );
    }
    // 5: refused by the server.
    let refused = run(&["append", "a/b", "1"]);
    assert_eq!(refused.code, Some(5), "{refused:?}");
    assert!(refused.stderr.contains("(INVALID_ARGUMENT)"), "{refused:?}");
    // 2: input that is not JSON, and bad usage; nothing reaches the server.
    let bad = run(&["append", "orders", "{not json"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("not one JSON value"), "{bad:?}");
    assert_eq!(ministore(&["append"]).code, Some(2));
    assert_eq!(
        run(&["info", "orders"]).stdout.lines().nth(2),
        Some("last seq:  1")
    );

    // 3: nobody listens there. One line, naming the address.
    drop(server);
    for args in [&["ls"][..], &["info", "orders"], &["append", "orders", "2"]] {
        let run = run(args);
        assert_eq!(run.code, Some(3), "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        assert!(
            run.stderr
                .starts_with(&format!("ministore: {addr}: cannot connect")),
            "{run:?}"
        );
    }
}

#[test]
fn append_from_stdin_stores_lines_in_order_and_stops_at_the_first_that_is_not_json() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("data"), &[]);
    let addr = server.addr.to_string();
    let input: String = (1..=2500).map(|i| format!("{{\"i\":{i}}}\n\n")).collect();
    let out = shell(
        "printf '%s' \"$INPUT\" | ministore append big -; echo \"exit $?\"",
        &addr,
    )
    .env(
        "INPUT",
        format!("{input}{{\"i\":2501}}\nnot json\n{{\"i\":2502}}\n"),
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seqs: Vec<&str> = stdout.lines().collect();
    let expected: Vec<String> = (1..=2501).map(|i| i.to_string()).collect();
    assert_eq!(
        seqs[..seqs.len() - 1],
        expected,
        "each line's seq, in order"
    );
    assert_eq!(seqs.last(), Some(&"exit 2"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stdin line 5002 is not one JSON value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tail = shell("ministore tail big", &addr).output().unwrap();
    let records: Vec<String> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let stored: Vec<String> = (1..=2501).map(|i| format!("{{\"i\":{i}}}")).collect();
    assert_eq!(
        records, stored,
        "stored in order, nothing after the bad line"
    );
}
