//! ListJournals against a server over thousands of journals: every journal once, in name
//! order, in pages that keep to their size; the numbers of open journals, of journals the
//! server never opened (read from their files, metadata or not, after retention), and of
//! one whose files are not a journal; page tokens and sizes it refuses; what a token limited
//! to some journals sees.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use ministore::MiniStoreOptions;
use ministore::proto::{InfoRequest, JournalSummary, ListJournalsRequest};
use ministore_server::Config;
use ministore_tests::files::header;
use ministore_tests::server::TestServer;
use tonic::Code;

/// Journals written straight into the data directory before the server starts.
const JOURNALS: usize = 2500;

/// Journal `i` of the bulk: `i % 7` records in one file, as the published format allows
/// (a header with `first_seq`, no metadata file), so 2,500 of them take a moment to make.
fn write_bulk(data: &Path) {
    for i in 0..JOURNALS {
        let dir = data.join(bulk_name(i));
        std::fs::create_dir_all(&dir).unwrap();
        let records: String = (0..i % 7).map(|k| format!("{{\"k\":{k}}}\n")).collect();
        std::fs::write(dir.join("journal.jsonl"), header(1) + &records).unwrap();
    }
}

fn bulk_name(i: usize) -> String {
    format!("bulk-{i:04}")
}

/// Every page of ListJournals with `page_size`, checking each keeps to it.
async fn all_pages(server: &TestServer, page_size: u32) -> (Vec<JournalSummary>, usize) {
    let mut stub = server.stub().await;
    let (mut all, mut pages) = (Vec::new(), 0);
    let mut token = String::new();
    // Bounded: at most one page per journal and one more.
    for _ in 0..=JOURNALS + 10 {
        let page = stub
            .list_journals(ListJournalsRequest {
                page_size,
                page_token: token.clone(),
            })
            .await
            .expect("ListJournals")
            .into_inner();
        pages += 1;
        let limit = if page_size == 0 { 100 } else { page_size };
        assert!(
            page.journals.len() <= limit as usize,
            "a page of {} journals for page_size {page_size}",
            page.journals.len()
        );
        all.extend(page.journals);
        if page.next_page_token.is_empty() {
            return (all, pages);
        }
        assert_ne!(page.next_page_token, token, "the same page token twice");
        token = page.next_page_token;
    }
    panic!("ListJournals did not reach its last page");
}

fn find<'a>(journals: &'a [JournalSummary], name: &str) -> &'a JournalSummary {
    journals
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("{name} is not listed"))
}

/// (first_seq, last_seq, segments) of a listed journal.
fn range(journal: &JournalSummary) -> (u64, u64, u32) {
    (journal.first_seq, journal.last_seq, journal.segments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_journals_pages_through_every_journal_once_in_name_order_with_their_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let started = Instant::now();
    write_bulk(&data);
    let wrote = started.elapsed();

    // `kept`, written by the store with metadata files, small segments and retention: its
    // oldest records are gone. The server does not open it before listing.
    let kept_path = data.join("kept/journal.jsonl");
    let mut kept = MiniStoreOptions::new()
        .max_bytes_per_segment(200)
        .max_segments(3)
        .open(&kept_path)
        .await
        .unwrap();
    for i in 0..40 {
        kept.append(&serde_json::json!({ "i": i, "pad": "xxxxxxxxxxxxxxxx" }))
            .await
            .unwrap();
    }
    let kept_durable = kept.durable();
    drop(kept);
    assert!(kept_durable.first_seq > 1, "retention deleted a segment");
    // `broken`: a file where its journal's should be that is not one. Listed with why.
    std::fs::create_dir_all(data.join("broken")).unwrap();
    std::fs::write(data.join("broken/journal.jsonl"), "not a journal\n").unwrap();
    // Not journals: a file, a directory whose name is not a journal name, a symlink.
    std::fs::write(data.join("notes.txt"), "x").unwrap();
    std::fs::create_dir_all(data.join(".hidden")).unwrap();
    std::os::unix::fs::symlink(data.join("bulk-0001"), data.join("link")).unwrap();

    let server = TestServer::start_with(Config::with_data_dir(&data)).await;
    let client = server.client().await;
    // `live`, open in the server, with records in its writer's durable position.
    let seqs = client.append_batch("live", &[1, 2, 3]).await.unwrap();
    assert_eq!(seqs, 1..=3);

    let started = Instant::now();
    let (listed, pages) = all_pages(&server, 97).await;
    let paged = started.elapsed();
    eprintln!(
        "{JOURNALS} journals written in {wrote:?}; listed in {pages} pages of 97 in {paged:?}"
    );

    let names: Vec<&str> = listed.iter().map(|j| j.name.as_str()).collect();
    let mut expected: Vec<String> = (0..JOURNALS).map(bulk_name).collect();
    expected.extend(["broken", "kept", "live"].map(String::from));
    expected.sort();
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>().len(),
        names.len(),
        "a journal listed twice"
    );
    assert_eq!(
        names, expected,
        "every journal once, sorted by name, nothing else"
    );
    assert_eq!(pages, expected.len().div_ceil(97));

    // Journals the server never opened, read from their files.
    for i in [0, 3, 6, 2499] {
        let journal = find(&listed, &bulk_name(i));
        let file = data.join(bulk_name(i)).join("journal.jsonl");
        assert_eq!(range(journal), (1, (i % 7) as u64, 1), "{}", journal.name);
        assert_eq!(journal.size_bytes, std::fs::metadata(&file).unwrap().len());
        assert_eq!(journal.error, "");
    }
    let listed_kept = find(&listed, "kept");
    assert_eq!(
        range(listed_kept),
        (
            kept_durable.first_seq,
            kept_durable.last_seq,
            kept_durable.segments as u32
        ),
        "an unopened journal after retention, from its metadata"
    );
    assert_eq!(kept_durable.last_seq, 40);
    assert_eq!(
        listed_kept.size_bytes,
        ministore::disk_bytes(&kept_path).unwrap()
    );
    // The open journal, from its writer.
    let live = find(&listed, "live");
    assert_eq!(range(live), (1, 3, 1));
    assert!(live.size_bytes > 0);
    // The broken one says why, and hides nothing else.
    let broken = find(&listed, "broken");
    assert!(broken.error.contains("broken"), "{broken:?}");
    assert_eq!(range(broken), (0, 0, 0));

    // Once the server opens `kept`, it reports the same numbers as from the files, and as
    // Info does.
    let mut stub = server.stub().await;
    let info = stub
        .info(InfoRequest {
            journal: "kept".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.first_seq, info.last_seq, info.segments),
        range(listed_kept)
    );
    let again = client.list_all_journals().await.unwrap();
    assert_eq!(range(find(&again, "kept")), range(listed_kept));
    assert_eq!(
        again.iter().map(|j| &j.name).collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>(),
        "the client's walk over pages of 1000 lists the same"
    );

    // The default page is 100 journals.
    let (by_default, pages) = all_pages(&server, 0).await;
    assert_eq!(by_default.len(), expected.len());
    assert_eq!(pages, expected.len().div_ceil(100));
}

#[tokio::test]
async fn a_page_token_the_server_did_not_give_and_an_oversize_page_are_invalid_argument() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for name in ["a", "b", "c"] {
        client.append(name, &1).await.unwrap();
    }
    let mut stub = server.stub().await;
    for token in ["../etc", "a/b", ".hidden", "not a name"] {
        let err = stub
            .list_journals(ListJournalsRequest {
                page_size: 0,
                page_token: token.into(),
            })
            .await
            .expect_err(token);
        assert_eq!(err.code(), Code::InvalidArgument, "{token}: {err:?}");
        assert!(err.message().contains("page_token"), "{}", err.message());
    }
    let err = stub
        .list_journals(ListJournalsRequest {
            page_size: 1001,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1000"), "{}", err.message());

    // Pages of one: each token is where the next page starts.
    let first = client.list_journals(1, None).await.unwrap();
    assert_eq!(first.journals[0].name, "a");
    let token = first.next_page_token.expect("more pages");
    let second = client.list_journals(1, Some(&token)).await.unwrap();
    assert_eq!(second.journals[0].name, "b");
    let third = client
        .list_journals(1, second.next_page_token.as_deref())
        .await
        .unwrap();
    assert_eq!(third.journals[0].name, "c");
    assert_eq!(third.next_page_token, None, "the last page says so");
}

#[tokio::test]
async fn a_token_limited_to_some_journals_lists_only_those_and_one_without_read_none() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("tokens"),
        "admin-token-0123456789\n\
         orders-reader-0123456 rights=read journals=orders,audit\n\
         writer-token-01234567 rights=append\n",
    )
    .unwrap();
    let mut config = Config::with_data_dir(tmp.path().join("data"));
    config.auth_tokens = Some(tmp.path().join("tokens"));
    let server = TestServer::start_with(config).await;
    let as_token = |token: &str| {
        ministore_client::ClientBuilder::new(server.url())
            .bearer_token(token)
            .connect()
    };
    let admin = as_token("admin-token-0123456789").await.unwrap();
    for name in ["audit", "orders", "payments", "secrets"] {
        admin.append(name, &1).await.unwrap();
    }
    let all: Vec<String> = admin
        .list_all_journals()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(all, ["audit", "orders", "payments", "secrets"]);

    let reader = as_token("orders-reader-0123456").await.unwrap();
    // Pages of one, so the token of a page never leads to a journal the token does not see.
    let mut seen = Vec::new();
    let mut token = None;
    for _ in 0..10 {
        let page = reader.list_journals(1, token.as_deref()).await.unwrap();
        seen.extend(page.journals.into_iter().map(|j| j.name));
        token = page.next_page_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["audit", "orders"]);

    let writer = as_token("writer-token-01234567").await.unwrap();
    let err = writer.list_journals(0, None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
}
