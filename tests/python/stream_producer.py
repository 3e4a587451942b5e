"""A ministore producer on one AppendStream: docs/python.md shows its code.

Usage: stream_producer.py ADDR JOURNAL COUNT [unary|aio|aio-unary]
(stubs generated from proto/ on PYTHONPATH)

Appends COUNT records {"n": 0..COUNT} to JOURNAL, each under its own idempotency key, on one
AppendStream (or, with `unary`, one Append call after the other, for comparison), with
grpcio's threads API, or its asyncio API with `aio` and `aio-unary`; checks that the acks
come in order with increasing seqs, and prints one JSON line:
{"records": COUNT, "first_seq": N, "last_seq": M, "seconds": S}. tests/python_client.rs
runs it and checks the line against the journal; the benchmark runs both ways and prints
the ratio of their rates.
"""

import asyncio
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


async def append_all_async(journal, name, payloads):
    """The same with grpc.aio: an async generator of (seq, duplicate), in order. The
    requests still come from a plain generator; the acks are read on the event loop."""

    def requests():
        for payload, key in payloads:
            yield pb.AppendRequest(journal=name, payload=payload, idempotency_key=key)

    async for ack in journal.AppendStream(requests()):
        if ack.HasField("error"):
            raise RuntimeError(f"request {ack.index}: {ack.error.message} (code {ack.error.code})")
        yield ack.seq, ack.duplicate


async def append_one_by_one_async(journal, name, payloads):
    """The asyncio baseline: one unary Append at a time."""
    for payload, key in payloads:
        reply = await journal.Append(pb.AppendRequest(journal=name, payload=payload, idempotency_key=key))
        yield reply.seq, reply.duplicate


def run_threads(addr, name, payloads, unary):
    with grpc.insecure_channel(addr) as channel:
        journal = pb_grpc.JournalStub(channel)
        appender = append_one_by_one if unary else append_all
        started = time.monotonic()
        seqs = [seq for seq, _duplicate in appender(journal, name, payloads)]
        return seqs, time.monotonic() - started


async def run_asyncio(addr, name, payloads, unary):
    async with grpc.aio.insecure_channel(addr) as channel:
        journal = pb_grpc.JournalStub(channel)
        appender = append_one_by_one_async if unary else append_all_async
        started = time.monotonic()
        seqs = [seq async for seq, _duplicate in appender(journal, name, payloads)]
        return seqs, time.monotonic() - started


def main():
    addr, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    payloads = [
        (json.dumps({"n": n}).encode(), str(uuid.uuid4())) for n in range(count)
    ]
    if mode.startswith("aio"):
        seqs, seconds = asyncio.run(run_asyncio(addr, name, payloads, mode == "aio-unary"))
    else:
        seqs, seconds = run_threads(addr, name, payloads, mode == "unary")
    assert len(seqs) == count, f"{len(seqs)} acks for {count} records"
    assert all(b == a + 1 for a, b in zip(seqs, seqs[1:])), "acks out of order"
    print(json.dumps({"records": count, "first_seq": seqs[0], "last_seq": seqs[-1], "seconds": seconds}))


if __name__ == "__main__":
    main()
