"""A ministore follower in Python that outlives server restarts: docs/python.md shows its code.

Usage: follower.py ADDR JOURNAL COUNT   (with the stubs generated from proto/ on PYTHONPATH)

Follows JOURNAL from its first record and prints each record as one JSON line,
{"seq": N, "record": <the record>}, flushed, until it has printed COUNT records.
tests/python_client.rs runs it while it kills and restarts the server, and checks it saw
every record once, in order.
"""

import json
import sys

import grpc

from ministore.v1 import journal_pb2 as pb
from ministore.v1 import journal_pb2_grpc as pb_grpc

from producer import connect

import time

def follow_forever(journal, name, handle, from_seq=1):
    delay = 0.05
    while True:
        try:
            stream = journal.Stream(pb.StreamRequest(journal=name, from_seq=from_seq, follow=True))
            for event in stream:
                delay = 0.05
                if event.WhichOneof("event") == "record":
                    handle(event.record.seq, json.loads(event.record.payload))
                    from_seq = event.record.seq + 1
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.OUT_OF_RANGE:
                trailers = dict(err.trailing_metadata() or ())
                from_seq = int(trailers.get("ministore-first-seq", from_seq))
            elif err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


class Done(Exception):
    """Raised by the handler once COUNT records were printed: ends the follower."""


def main():
    addr, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    journal = pb_grpc.JournalStub(connect(addr))
    printed = 0

    def handle(seq, record):
        nonlocal printed
        print(json.dumps({"seq": seq, "record": record}), flush=True)
        printed += 1
        if printed == count:
            raise Done()

    try:
        follow_forever(journal, name, handle)
    except Done:
        pass


if __name__ == "__main__":
    main()
