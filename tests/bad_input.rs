//! Bad input never hurts: one table of hostile or mistaken requests against the real
//! `ministore-server` binary. Each row names the exact gRPC code and a fragment of the
//! message a person can act on; after each row the server still runs, still appends, and
//! the row appended exactly what it should (nothing, for a refusal).

use std::path::Path;

use ministore::proto::journal_client::JournalClient;
use ministore::proto::{
    AppendBatchRequest, AppendRequest, AppendResponse, InfoRequest, ReplayRequest, StreamRequest,
    append_request,
};
use ministore_tests::events::Records;
use ministore_tests::files::{file_names, header};
use ministore_tests::server::ServerProcess;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use prost_types::value::Kind;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// What a row sends.
enum Call {
    Append(AppendRequest),
    Batch(AppendBatchRequest),
    Replay(ReplayRequest),
    Stream(StreamRequest),
    Info(String),
    /// An Append request as raw protobuf bytes, to send what the generated types cannot.
    RawAppend(Vec<u8>),
}

struct Row {
    what: String,
    call: Call,
    code: Code,
    /// Fragments of the status message, or of the summary of a success (see `run`);
    /// `{next}` stands for the next seq of journal `alive`.
    says: Vec<String>,
    /// Records the row appends to journal `alive` when it succeeds.
    adds: u64,
}

impl Row {
    fn adding(self, adds: u64) -> Row {
        Row { adds, ..self }
    }
}

fn row(what: &str, call: Call, code: Code, says: &[&str]) -> Row {
    Row {
        what: what.into(),
        call,
        code,
        says: says.iter().map(|s| s.to_string()).collect(),
        adds: 0,
    }
}

fn append(journal: &str, payload: &[u8]) -> Call {
    Call::Append(AppendRequest {
        journal: journal.into(),
        record: Some(append_request::Record::Payload(payload.to_vec())),
        ..Default::default()
    })
}

fn append_value(value: prost_types::Value) -> Call {
    Call::Append(AppendRequest {
        journal: "alive".into(),
        record: Some(append_request::Record::Value(value)),
        ..Default::default()
    })
}

fn batch(payloads: &[&[u8]], values: Vec<prost_types::Value>) -> Call {
    Call::Batch(AppendBatchRequest {
        journal: "alive".into(),
        payloads: payloads.iter().map(|p| p.to_vec()).collect(),
        values,
        ..Default::default()
    })
}

fn replay(journal: &str, from_seq: u64, limit: u32) -> Call {
    Call::Replay(ReplayRequest {
        journal: journal.into(),
        from_seq,
        limit,
        format: 0,
    })
}

fn stream(journal: &str, from_seq: u64) -> Call {
    Call::Stream(StreamRequest {
        heartbeat_seconds: 0,
        journal: journal.into(),
        from_seq,
        follow: false,
        format: 0,
    })
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// A list holding a list holding ... `depth` deep.
fn nested(depth: usize) -> prost_types::Value {
    (0..depth).fold(number(1.0), |inner, _| prost_types::Value {
        kind: Some(Kind::ListValue(prost_types::ListValue {
            values: vec![inner],
        })),
    })
}

/// An AppendRequest from a newer client: the fields this server knows, then two it does
/// not (a number and a string), as protobuf lets a newer schema add them.
fn append_from_a_newer_client() -> Vec<u8> {
    let mut bytes = AppendRequest {
        journal: "alive".into(),
        record: Some(append_request::Record::Payload(
            br#"{"from":"a newer client"}"#.to_vec(),
        )),
        ..Default::default()
    }
    .encode_to_vec();
    prost::encoding::uint64::encode(99, &7, &mut bytes);
    prost::encoding::string::encode(100, &"priority: high".to_string(), &mut bytes);
    bytes
}

/// Passes bytes through unchanged, for [`Call::RawAppend`].
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Makes the call; a success is summarized as text for the row's fragments to match.
async fn run(channel: &Channel, call: Call) -> Result<String, Status> {
    let mut stub = JournalClient::new(channel.clone());
    Ok(match call {
        Call::Append(request) => format!("seq {}", stub.append(request).await?.into_inner().seq),
        Call::Batch(request) => {
            let reply = stub.append_batch(request).await?.into_inner();
            format!("seqs {}..={}", reply.first_seq, reply.last_seq)
        }
        Call::Replay(request) => {
            let page = stub.replay(request).await?.into_inner();
            format!(
                "{} records from seq {:?}, next_seq {}",
                page.records.len(),
                page.records.first().map(|r| r.seq),
                page.next_seq
            )
        }
        Call::Stream(request) => {
            let mut records = stub.stream(request).await?.into_inner();
            let mut seqs = Vec::new();
            while let Some(record) = records.record().await? {
                seqs.push(record.seq);
            }
            format!("{} records from seq {:?}", seqs.len(), seqs.first())
        }
        Call::Info(journal) => {
            let info = stub.info(InfoRequest { journal }).await?.into_inner();
            format!("first_seq {} last_seq {}", info.first_seq, info.last_seq)
        }
        Call::RawAppend(bytes) => {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let path = PathAndQuery::from_static("/ministore.v1.Journal/Append");
            let reply = grpc
                .unary(tonic::Request::new(bytes), path, RawCodec)
                .await?
                .into_inner();
            let reply = AppendResponse::decode(reply.as_slice()).expect("an AppendResponse");
            format!("seq {}", reply.seq)
        }
    })
}

async fn last_seq(channel: &Channel, journal: &str) -> u64 {
    JournalClient::new(channel.clone())
        .info(InfoRequest {
            journal: journal.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .last_seq
}

/// A journal damaged in its middle (line 3), and a file that is not a journal at all.
const BROKEN: &str = "{\"a\":1}\nnot json\n{\"a\":3}\n";
const FOREIGN: &str = "my notes\n";

fn plant_damaged_files(data: &Path) {
    std::fs::create_dir_all(data.join("broken")).unwrap();
    std::fs::write(
        data.join("broken/journal.jsonl"),
        format!("{}{BROKEN}", header(1)),
    )
    .unwrap();
    std::fs::create_dir_all(data.join("notes")).unwrap();
    std::fs::write(data.join("notes/journal.jsonl"), FOREIGN).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_exact_status_and_never_hurts_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    plant_damaged_files(data);
    let flags = [
        "--max-payload-bytes",
        "4096",
        "--max-bytes-per-segment",
        "65536",
        "--max-segments",
        "4",
    ];
    let mut server = ServerProcess::start(data, &flags);
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ministore_client::Client::connect(server.url())
        .await
        .unwrap();
    client.append("alive", &0).await.unwrap();
    // More records than the default page.
    let small: Vec<u64> = (1..=1500).collect();
    client.append_batch("big", &small).await.unwrap();
    // Big records in small segments: retention has deleted the oldest.
    for i in 0..40 {
        let records: Vec<String> = (0..5)
            .map(|j| format!("{}{}", i * 5 + j, "x".repeat(3000)))
            .collect();
        client.append_batch("retained", &records).await.unwrap();
    }
    let oldest = client.info("retained").await.unwrap().first_seq;
    assert!(oldest > 1, "retention should have deleted old segments");
    let retained = format!("{} records from seq Some({oldest})", 200 - oldest + 1);

    let (long, huge) = ("a".repeat(65), "a".repeat(10_000));
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let deep128 = format!("{}{}", "[".repeat(128), "]".repeat(128));
    let past_the_end = "from_seq 1502 is past the end of journal \"big\": its last record is 1500, so from_seq may be at most 1501";
    let bad_name = "use 1 to 64 characters from A-Z a-z 0-9 . _ - not starting with '.'";
    use Code::{
        DataLoss, FailedPrecondition, InvalidArgument, NotFound, OutOfRange, ResourceExhausted,
    };
    #[rustfmt::skip]
    let rows = vec![
        // Records.
        row("JSON cut short", append("alive", br#"{"a":"#), InvalidArgument, &["payload is not valid JSON: EOF while parsing", "line 1 column 5"]),
        row("two JSON values", append("alive", br#"{"a":1} {"b":2}"#), InvalidArgument, &["payload is not valid JSON: trailing characters at line 1 column 9"]),
        row("non-UTF-8 bytes", append("alive", b"\xff\xfe"), InvalidArgument, &["payload is not valid JSON", "line 1 column 1"]),
        row("non-UTF-8 in a string", append("alive", b"\"\xff\""), InvalidArgument, &["payload is not valid JSON: invalid unicode code point at line 1 column"]),
        row("empty payload", append("alive", b""), InvalidArgument, &["payload is not valid JSON: EOF while parsing a value"]),
        row("no record", Call::Append(AppendRequest { journal: "alive".into(), record: None,
 ..Default::default() }), InvalidArgument, &["has no record: set `payload`"]),
        row("oversize payload", append("alive", &[b' '; 5000]), ResourceExhausted, &["5000 bytes", "limit of 4096 bytes (--max-payload-bytes)"]),
        row("JSON nested 2000 deep (valid, but no format could show it)", append("deep", deep.as_bytes()), InvalidArgument, &["nested deeper than 127 levels"]),
        row("JSON nested 128 deep (serde_json reads back 127)", append("deep", deep128.as_bytes()), InvalidArgument, &["nested deeper than 127 levels"]),
        row("a number out of a double's range", append("alive", b"[1e999]"), InvalidArgument, &["common readers cannot read back", "numbers must fit a double"]),
        row("a lone surrogate escape", append("alive", br#"{"s":"\ud800"}"#), InvalidArgument, &["common readers cannot read back", "lone surrogates"]),
        row("a NaN value", append_value(number(f64::NAN)), InvalidArgument, &["the number NaN, which JSON cannot represent"]),
        row("a value nested 200 deep", append_value(nested(200)), InvalidArgument, &["failed to decode Protobuf message", "recursion limit reached"]),
        row("a bad record in a batch", batch(&[b"1", b"{", b"3"], vec![]), InvalidArgument, &["record 1 of the batch", "payload is not valid JSON: EOF while parsing an object at line 1 column 1"]),
        row("a batch of payloads and values", batch(&[b"1"], vec![number(2.0)]), InvalidArgument, &["sets both `payloads` and `values`; use one"]),
        row("an empty batch", batch(&[], vec![]), InvalidArgument, &["no records: set `payloads` or `values`"]),
        row("unknown fields from a newer client", Call::RawAppend(append_from_a_newer_client()), Code::Ok, &["seq {next}"]).adding(1),
        row("bytes that are not protobuf", Call::RawAppend(vec![0xff; 16]), InvalidArgument, &["failed to decode Protobuf message"]),
        // Journal names: refused before anything touches the disk.
        row("name ..", append("..", b"1"), InvalidArgument, &["invalid journal name \"..\": starts with '.'", bad_name]),
        row("name .", append(".", b"1"), InvalidArgument, &["starts with '.'"]),
        row("name .hidden", append(".hidden", b"1"), InvalidArgument, &["starts with '.'"]),
        row("name /", append("/", b"1"), InvalidArgument, &["invalid journal name \"/\": contains a character outside the allowed set", bad_name]),
        row("name a/b", append("a/b", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name ../../etc/passwd", append("../../etc/passwd", b"1"), InvalidArgument, &["starts with '.'"]),
        row("name with a backslash", append("a\\b", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name with NUL", append("a\0b", b"1"), InvalidArgument, &["\"a\\0b\": contains a character outside the allowed set"]),
        row("name with a newline", append("a\nb", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name of 65 characters", append(&long, b"1"), InvalidArgument, &["longer than 64 characters"]),
        row("name of 10000 characters", append(&huge, b"1"), InvalidArgument, &["longer than 64 characters"]),
        row("name of fullwidth dots", append("\u{ff0e}\u{ff0e}", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name with a fullwidth solidus", append("\u{ff0e}\u{ff0e}\u{ff0f}etc", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name with a right-to-left override", append("log\u{202e}txt.exe", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name with a combining accent", append("e\u{301}", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name with a zero-width space", append("a\u{200b}b", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("name with a Cyrillic a", append("\u{430}live", b"1"), InvalidArgument, &["outside the allowed set"]),
        row("Replay of name ..", replay("..", 0, 0), InvalidArgument, &["invalid journal name"]),
        row("Stream of name a/b", stream("a/b", 0), InvalidArgument, &["invalid journal name"]),
        row("Info of a right-to-left override", Call::Info("\u{202e}".into()), InvalidArgument, &["invalid journal name"]),
        // Pages and positions.
        row("limit 0: the default page", replay("big", 1, 0), Code::Ok, &["1000 records from seq Some(1), next_seq 1001"]),
        row("limit 10000", replay("big", 1, 10_000), Code::Ok, &["1500 records from seq Some(1), next_seq 1501"]),
        row("limit 10001", replay("big", 1, 10_001), InvalidArgument, &["limit 10001 is more than the maximum page of 10000 records; page with next_seq"]),
        row("limit u32::MAX", replay("big", 1, u32::MAX), InvalidArgument, &["limit 4294967295 is more than the maximum page of 10000"]),
        row("from_seq one past the end", replay("big", 1501, 0), Code::Ok, &["0 records from seq None, next_seq 1501"]),
        row("from_seq past the end", replay("big", 1502, 0), OutOfRange, &[past_the_end]),
        row("from_seq u64::MAX", replay("big", u64::MAX, 0), OutOfRange, &["so from_seq may be at most 1501"]),
        row("Stream from past the end", stream("big", 1502), OutOfRange, &[past_the_end]),
        row("from_seq before the oldest retained", replay("retained", 1, 0), Code::Ok, &[&retained]),
        row("from_seq 0", replay("retained", 0, 0), Code::Ok, &[&retained]),
        row("Stream from before the oldest retained", stream("retained", 1), Code::Ok, &[&retained]),
        row("unknown record format in Replay", Call::Replay(ReplayRequest { journal: "big".into(), from_seq: 1, limit: 1, format: 7 }), InvalidArgument, &["unknown record format 7"]),
        row("unknown record format in Stream", Call::Stream(StreamRequest { heartbeat_seconds: 0, journal: "big".into(), from_seq: 1, follow: false, format: 7 }), InvalidArgument, &["unknown record format 7"]),
        row("Replay of a journal never written", replay("missing", 0, 0), NotFound, &["journal \"missing\" does not exist; it is created by its first Append"]),
        row("Stream of a journal never written", stream("missing", 0), NotFound, &["does not exist"]),
        row("Info of a journal never written", Call::Info("missing".into()), NotFound, &["does not exist"]),
        // Damaged files in the data directory.
        row("Append to a corrupt journal", append("broken", b"1"), DataLoss, &["journal.jsonl:3", "move the damaged file out of the data directory"]),
        row("Replay of a corrupt journal", replay("broken", 0, 0), DataLoss, &["journal.jsonl:3"]),
        row("Append to a file that is not a journal", append("notes", b"1"), FailedPrecondition, &["is not a ministore journal", "move the damaged file"]),
    ];

    for row in rows {
        let before = last_seq(&channel, "alive").await;
        let (code, message) = match run(&channel, row.call).await {
            Ok(summary) => (Code::Ok, summary),
            Err(status) => (status.code(), status.message().to_owned()),
        };
        assert_eq!(code, row.code, "{}: {message}", row.what);
        for fragment in &row.says {
            let fragment = fragment.replace("{next}", &(before + 1).to_string());
            assert!(
                message.contains(&fragment),
                "{}: {fragment:?} not in {message:?}",
                row.what
            );
        }
        // The server still runs and appends, right after what the row added.
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "{}: the server exited",
            row.what
        );
        let seq = client.append("alive", &"still serving").await.unwrap();
        assert_eq!(seq, before + row.adds + 1, "{}", row.what);
    }

    // The newer client's record is stored as sent. The refusals created nothing on disk and
    // left the damaged files as they were.
    let stored: Vec<(u64, serde_json::Value)> = client.replay("alive", 1).await.unwrap();
    let newer = serde_json::json!({"from": "a newer client"});
    assert_eq!(
        stored.iter().filter(|(_, v)| *v == newer).count(),
        1,
        "{stored:?}"
    );
    let journals: Vec<String> = file_names(data)
        .into_iter()
        .filter(|f| !f.starts_with('.'))
        .collect();
    assert_eq!(journals, ["alive", "big", "broken", "notes", "retained"]);
    assert_eq!(
        std::fs::read_to_string(data.join("broken/journal.jsonl")).unwrap(),
        format!("{}{BROKEN}", header(1))
    );
    assert_eq!(
        std::fs::read_to_string(data.join("notes/journal.jsonl")).unwrap(),
        FOREIGN
    );
}
