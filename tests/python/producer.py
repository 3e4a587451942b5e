"""A ministore producer in Python that retries safely: docs/python.md shows its code.

Usage: producer.py ADDR JOURNAL NAME COUNT   (with the stubs generated from proto/ on PYTHONPATH)

Appends COUNT records {"id": <uuid4>, "producer": NAME, "n": 0..COUNT} to JOURNAL, one
after the other, each under its own idempotency key (its id), retrying on UNAVAILABLE and
DEADLINE_EXCEEDED with bounded, jittered backoff. For each record, once it is acknowledged,
it prints one JSON line, {"id": ..., "seq": N, "duplicate": bool}, and flushes it.
tests/python_client.rs runs eight of these while it kills and restarts the server, and
checks every line against what the journal holds. Any failure no retry can fix ends it
with a traceback and exit status 1.

tests/python/client.py imports `append_with_retries` and `append_if_last` from here and
checks them against the server one by one.
"""

import json
import random
import sys
import time
import uuid

import grpc

from ministore.v1 import journal_pb2 as pb
from ministore.v1 import journal_pb2_grpc as pb_grpc


def connect(addr):
    # gRPC waits up to 2 minutes between reconnection attempts once a server has gone
    # away; a producer wants to be back within a second of the server.
    return grpc.insecure_channel(
        addr,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    )


# What a retry can fix: the server is away (restarting, unreachable) or its answer did not
# come in time. Anything else (INVALID_ARGUMENT, ALREADY_EXISTS, ...) would fail again.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def append_with_retries(journal, name, payload, key, timeout=5.0, give_up_after=60.0):
    """Appends `payload` (JSON text as bytes) to journal `name` under the idempotency key
    `key`, retrying until it is acknowledged. Returns (seq, duplicate). Raises
    grpc.RpcError for a failure no retry can fix, or once `give_up_after` seconds passed."""
    request = pb.AppendRequest(journal=name, payload=payload, idempotency_key=key)
    give_up_at = time.monotonic() + give_up_after
    backoff = 0.05
    while True:
        try:
            reply = journal.Append(request, timeout=timeout)
            # duplicate: an earlier attempt was written, and this is its seq. Success.
            return reply.seq, reply.duplicate
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE or time.monotonic() + backoff > give_up_at:
                raise
        # Full jitter: producers cut off together do not all come back at once.
        time.sleep(random.uniform(0, backoff))
        backoff = min(backoff * 2, 2.0)


def produce(journal, name, producer, count):
    for n in range(count):
        # One key per logical record, made once with the record: every retry of it sends
        # the same key and the same bytes, so it is stored once, whatever failed.
        record_id = str(uuid.uuid4())
        payload = json.dumps({"id": record_id, "producer": producer, "n": n}).encode()
        seq, duplicate = append_with_retries(journal, name, payload, key=record_id)
        print(json.dumps({"id": record_id, "seq": seq, "duplicate": duplicate}), flush=True)


class Conflict(Exception):
    """The journal is not where an append expected it: its last seq is `last_seq`."""

    def __init__(self, last_seq):
        super().__init__(f"the journal's last seq is {last_seq}")
        self.last_seq = last_seq


def append_if_last(journal, name, payload, expected_last_seq, timeout=5.0):
    """Appends `payload` only if the journal's last seq is `expected_last_seq` (0: it has
    no records yet) and returns its seq; otherwise nothing is written and it raises
    Conflict with the journal's last seq, from the ABORTED status's trailer."""
    request = pb.AppendRequest(journal=name, payload=payload, expected_last_seq=expected_last_seq)
    try:
        return journal.Append(request, timeout=timeout).seq
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        trailers = dict(err.trailing_metadata() or ())
        raise Conflict(int(trailers["ministore-last-seq"])) from None


def main():
    if len(sys.argv) != 5:
        print("usage: producer.py ADDR JOURNAL NAME COUNT", file=sys.stderr)
        sys.exit(2)
    addr, name, producer, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with connect(addr) as channel:
        produce(pb_grpc.JournalStub(channel), name, producer, count)


if __name__ == "__main__":
    main()
