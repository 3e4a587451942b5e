"""A ministore producer on one AppendStream: docs/python.md shows its code.

Usage: stream_producer.py ADDR JOURNAL COUNT [unary]   (stubs generated from proto/ on PYTHONPATH)

Appends COUNT records {"n": 0..COUNT} to JOURNAL, each under its own idempotency key, on one
AppendStream (or, with `unary`, one Append call after the other, for comparison), checks
that the acks come in order with increasing seqs, and prints one JSON line:
{"records": COUNT, "first_seq": N, "last_seq": M, "seconds": S}. tests/python_client.rs
runs it and checks the line against the journal; the benchmark runs both ways and prints
the ratio of their rates.
"""

import json
import sys
import time
import uuid

import grpc

from ministore.v1 import journal_pb2 as pb
from ministore.v1 import journal_pb2_grpc as pb_grpc


def append_all(journal, name, payloads):
    """Appends each of `payloads` (JSON texts as bytes) to journal `name` on one stream,
    and yields (seq, duplicate) for each, in order, as its ack comes: the next requests are
    sent while earlier ones are being committed. Raises RuntimeError naming the request
    that failed, or grpc.RpcError if the stream itself fails (then resend the records not
    yet acknowledged, with the same keys, on a new stream)."""

    def requests():
        for payload, key in payloads:
            yield pb.AppendRequest(journal=name, payload=payload, idempotency_key=key)

    for ack in journal.AppendStream(requests()):
        if ack.HasField("error"):
            raise RuntimeError(f"request {ack.index}: {ack.error.message} (code {ack.error.code})")
        yield ack.seq, ack.duplicate


def append_one_by_one(journal, name, payloads):
    """The same records, one unary Append at a time: the baseline."""
    for payload, key in payloads:
        reply = journal.Append(pb.AppendRequest(journal=name, payload=payload, idempotency_key=key))
        yield reply.seq, reply.duplicate


def main():
    addr, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    unary = len(sys.argv) > 4 and sys.argv[4] == "unary"
    payloads = [
        (json.dumps({"n": n}).encode(), str(uuid.uuid4())) for n in range(count)
    ]
    with grpc.insecure_channel(addr) as channel:
        journal = pb_grpc.JournalStub(channel)
        appender = append_one_by_one if unary else append_all
        started = time.monotonic()
        seqs = [seq for seq, _duplicate in appender(journal, name, payloads)]
        seconds = time.monotonic() - started
    assert len(seqs) == count, f"{len(seqs)} acks for {count} records"
    assert all(b == a + 1 for a, b in zip(seqs, seqs[1:])), "acks out of order"
    print(json.dumps({"records": count, "first_seq": seqs[0], "last_seq": seqs[-1], "seconds": seconds}))


if __name__ == "__main__":
    main()
