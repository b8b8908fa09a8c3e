#!/usr/bin/env python3
"""Deletes a JetStream stream (the benchmark's own), standard library only.

    nats_stream.py NATS_URL STREAM

Speaks the NATS text protocol: one request to $JS.API.STREAM.DELETE.<STREAM>.
A stream that does not exist is fine. Never touches any other stream.
"""

import json
import socket
import sys
import urllib.parse


def main(url, stream):
    if not stream or any(c in stream for c in " .*>\t\r\n"):
        sys.exit(f"nats_stream: bad stream name {stream!r}")
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 5)
    sock.settimeout(5)
    reader = sock.makefile("rb")
    info = reader.readline()
    if not info.startswith(b"INFO"):
        sys.exit(f"nats_stream: unexpected greeting {info[:80]!r}")
    inbox = "_INBOX.keyledger_bench_delete"
    subject = f"$JS.API.STREAM.DELETE.{stream}"
    sock.sendall(
        b'CONNECT {"verbose":false,"pedantic":false,"name":"keyledger-bench"}\r\n'
        + f"SUB {inbox} 1\r\nPUB {subject} {inbox} 0\r\n\r\nPING\r\n".encode()
    )
    while True:
        line = reader.readline()
        if not line:
            sys.exit("nats_stream: connection closed")
        if line.startswith(b"MSG"):
            size = int(line.split()[-1])
            payload = json.loads(reader.read(size + 2)[:size])
            err = payload.get("error")
            if err and err.get("err_code") != 10059:  # 10059: stream not found
                sys.exit(f"nats_stream: {err}")
            deleted = payload.get("success", False)
            print(f"nats_stream: {stream}: {'deleted' if deleted else 'did not exist'}")
            return
        if line.startswith(b"-ERR"):
            sys.exit(f"nats_stream: {line.decode().strip()}")
        if line.startswith(b"PING"):
            sock.sendall(b"PONG\r\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
