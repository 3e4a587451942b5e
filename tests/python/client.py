"""A ministore client in Python, run by tests/python_client.rs against the real server.

Usage: client.py ADDR JOURNAL   (with the stubs generated from proto/ on PYTHONPATH)

It appends records as payload bytes and as structured values, appends batches, replays
with paging, follows a live Stream, retries with an idempotency key and appends only if
the journal's last seq is as expected (with producer.py's helpers, beside this file), and
checks error codes. Any mismatch exits 1 with a
message saying what was expected and what came back. On success it prints one JSON line,
{"journal": ..., "records": [{"seq": N, "json": "<stored text>"}, ...]}, for the Rust side
to compare with what it reads itself.
"""

import json
import queue
import sys
import threading

import grpc
from google.protobuf import json_format, struct_pb2

from ministore.v1 import journal_pb2 as pb
from ministore.v1 import journal_pb2_grpc as pb_grpc

import producer

# A bound on failure only: every call here answers in milliseconds.
TIMEOUT = 30


def fail(message):
    print(f"client.py: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def expect(what, got, want):
    if got != want:
        fail(f"{what}: expected {want!r}, got {got!r}")


def value_of(obj):
    """A google.protobuf.Value holding the JSON value `obj`."""
    value = struct_pb2.Value()
    json_format.ParseDict(obj, value)
    return value


def expect_error(what, code, call):
    try:
        call()
    except grpc.RpcError as err:
        expect(f"{what}: status code (message {err.details()!r})", err.code(), code)
        return err.details()
    fail(f"{what}: expected {code}, but the call succeeded")


def main():
    if len(sys.argv) != 3:
        fail("usage: client.py ADDR JOURNAL")
    addr, journal = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        stub = pb_grpc.JournalStub(channel)
        run(stub, journal)


def run(stub, journal):
    # seq -> the JSON text the journal must hold for it (compact, keys as stored).
    stored = {}

    # One record as payload bytes: exact JSON text, whitespace removed on the way in.
    reply = stub.Append(
        pb.AppendRequest(journal=journal, payload=b'{ "user": "alice", "big": 9007199254740993 }'),
        timeout=TIMEOUT,
    )
    expect("seq of the first Append", reply.seq, 1)
    stored[1] = '{"user":"alice","big":9007199254740993}'

    # One record as a structured value (a Struct's keys are stored sorted).
    reply = stub.Append(
        pb.AppendRequest(journal=journal, value=value_of({"user": "bob", "tags": ["a", "b"], "n": 2})),
        timeout=TIMEOUT,
    )
    expect("seq of the Append with a value", reply.seq, 2)
    stored[2] = '{"n":2,"tags":["a","b"],"user":"bob"}'

    # Batches, of payloads and of values: one range each, contiguous.
    reply = stub.AppendBatch(
        pb.AppendBatchRequest(journal=journal, payloads=[b"[1, 2, 3]", b'"text"', b"null"]),
        timeout=TIMEOUT,
    )
    expect("range of the payload batch", (reply.first_seq, reply.last_seq), (3, 5))
    stored.update({3: "[1,2,3]", 4: '"text"', 5: "null"})
    reply = stub.AppendBatch(
        pb.AppendBatchRequest(journal=journal, values=[value_of({"k": 1}), value_of(True)]),
        timeout=TIMEOUT,
    )
    expect("range of the value batch", (reply.first_seq, reply.last_seq), (6, 7))
    stored.update({6: '{"k":1}', 7: "true"})

    # Replay in pages of 2, following next_seq until it passes last_seq.
    pages = []
    from_seq = 0
    while True:
        page = stub.Replay(pb.ReplayRequest(journal=journal, from_seq=from_seq, limit=2), timeout=TIMEOUT)
        pages.append([(r.seq, r.payload.decode()) for r in page.records])
        expect("last_seq of a replay page", page.last_seq, 7)
        if page.next_seq > page.last_seq:
            break
        expect("records in a full page", len(page.records), 2)
        from_seq = page.next_seq
    expect("pages of 2 records", [len(p) for p in pages], [2, 2, 2, 1])
    expect("replayed records", [r for p in pages for r in p], sorted(stored.items()))

    # The value format: the same records as structured values.
    page = stub.Replay(
        pb.ReplayRequest(journal=journal, from_seq=6, format=pb.RECORD_FORMAT_VALUE), timeout=TIMEOUT
    )
    got = [(r.seq, r.WhichOneof("body"), json_format.MessageToDict(r.value)) for r in page.records]
    expect("records 6 and 7 as values", got, [(6, "value", {"k": 1}), (7, "value", True)])

    info = stub.Info(pb.InfoRequest(journal=journal), timeout=TIMEOUT)
    expect("Info", (info.first_seq, info.last_seq, info.segments), (1, 7, 1))

    follow(stub, journal, stored)
    deep_records(stub, journal, stored)
    keys_and_expectations(stub, journal, stored)

    # Errors carry the status code a program can act on; nothing is written.
    detail = expect_error(
        "Append of invalid JSON",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.Append(pb.AppendRequest(journal=journal, payload=b"{oops"), timeout=TIMEOUT),
    )
    if "not valid JSON" not in detail:
        fail(f"the message for invalid JSON does not say so: {detail!r}")
    expect_error(
        "Replay of a journal never written",
        grpc.StatusCode.NOT_FOUND,
        lambda: stub.Replay(pb.ReplayRequest(journal=f"{journal}-unknown"), timeout=TIMEOUT),
    )
    expect_error(
        "Append to a journal named like a path",
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.Append(pb.AppendRequest(journal="../x", value=value_of(1)), timeout=TIMEOUT),
    )
    expect_error(
        "Replay from past the end",
        grpc.StatusCode.OUT_OF_RANGE,
        lambda: stub.Replay(pb.ReplayRequest(journal=journal, from_seq=len(stored) + 2), timeout=TIMEOUT),
    )
    info = stub.Info(pb.InfoRequest(journal=journal), timeout=TIMEOUT)
    expect("last_seq after the failed calls", info.last_seq, len(stored))

    records = [{"seq": seq, "json": text} for seq, text in sorted(stored.items())]
    print(json.dumps({"journal": journal, "records": records}))


def follow(stub, journal, stored):
    """Follows the journal from its last record in a thread; appends while it is open."""
    last = max(stored)
    call = stub.Stream(pb.StreamRequest(journal=journal, from_seq=last, follow=True), timeout=TIMEOUT)
    received = queue.Queue()

    def read():
        try:
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "record":
                    received.put((event.record.seq, event.record.payload.decode()))
                else:
                    received.put((kind, getattr(event, kind).last_seq))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                received.put(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_record(what):
        try:
            item = received.get(timeout=TIMEOUT)
        except queue.Empty:
            fail(f"the following Stream delivered no record {what} within {TIMEOUT} s")
        if isinstance(item, grpc.RpcError):
            fail(f"the following Stream failed: {item.code()} {item.details()!r}")
        return item

    # The record that was already there arriving proves the stream is open: everything
    # appended from now on was appended after the stream started. Then the stream says it
    # has caught up with the journal.
    expect("the first streamed record", next_record("from before the stream"), (last, stored[last]))
    expect("the caught-up event", next_record("caught up"), ("caught_up", last))
    for n in range(3):
        reply = stub.Append(pb.AppendRequest(journal=journal, value=value_of({"live": n})), timeout=TIMEOUT)
        stored[reply.seq] = f'{{"live":{n}}}'
        expect("a streamed record appended while following", next_record("appended while following"),
               (reply.seq, stored[reply.seq]))
    call.cancel()
    reader.join(TIMEOUT)
    if reader.is_alive():
        fail("the Stream did not end after it was cancelled")
    if not received.empty():
        fail(f"the Stream delivered more than was appended: {received.get()!r}")


def deep_records(stub, journal, stored):
    """Every accepted record reads back in the value format with protobuf's default limits:
    one a Value can carry comes as a value, a deeper one as its exact payload."""
    def nested(depth):
        return '{"a":' * depth + '"leaf"' + "}" * depth

    texts = [nested(32), nested(33), "[" * 127 + "]" * 127]
    reply = stub.AppendBatch(
        pb.AppendBatchRequest(journal=journal, payloads=[t.encode() for t in texts]), timeout=TIMEOUT
    )
    first = reply.first_seq
    stored.update({first + i: t for i, t in enumerate(texts)})
    # Python's protobuf refuses messages nested more than 100 deep: a page holding a
    # Value of 33 object levels would fail to decode here, and this call would raise.
    page = stub.Replay(
        pb.ReplayRequest(journal=journal, from_seq=first, format=pb.RECORD_FORMAT_VALUE), timeout=TIMEOUT
    )
    got = [(r.seq, r.WhichOneof("body")) for r in page.records]
    expect("deep records as values or payloads", got, [(first, "value"), (first + 1, "payload"), (first + 2, "payload")])
    expect("the deepest value", json.dumps(json_format.MessageToDict(page.records[0].value), separators=(",", ":")),
           texts[0])
    expect("the deeper records, exact", [r.payload.decode() for r in page.records[1:]], texts[1:])


def keys_and_expectations(stub, journal, stored):
    """The helpers of producer.py that docs/python.md shows: a keyed append retried is
    answered with its first seq; a conditional append is refused with the last seq."""
    seq, duplicate = producer.append_with_retries(stub, journal, b'{"order": 42}', key="order-42")
    expect("duplicate, for the first append with a key", duplicate, False)
    stored[seq] = '{"order":42}'
    expect(
        "a retry of the keyed append",
        producer.append_with_retries(stub, journal, b'{"order": 42}', key="order-42"),
        (seq, True),
    )
    # Not retried: the key names another record, and would again.
    detail = expect_error(
        "the key reused for another record",
        grpc.StatusCode.ALREADY_EXISTS,
        lambda: producer.append_with_retries(stub, journal, b'{"order": 43}', key="order-42"),
    )
    if f"committed at seq {seq}" not in detail:
        fail(f"ALREADY_EXISTS does not name the seq the key was used for: {detail!r}")

    try:
        producer.append_if_last(stub, journal, b'{"late": true}', expected_last_seq=seq - 1)
        fail("an append expecting an old last seq was written")
    except producer.Conflict as conflict:
        expect("the last seq in the ABORTED status's trailer", conflict.last_seq, seq)
    got = producer.append_if_last(stub, journal, b'{"late": false}', expected_last_seq=seq)
    expect("the seq of an append whose expectation held", got, seq + 1)
    stored[got] = '{"late":false}'


if __name__ == "__main__":
    main()
