"""A raw HTTP/1.1 exchange on a socket, for tests of what servers do on the wire (keep-alive, refused bodies)."""

from __future__ import annotations

import socket


def read_response(s: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (head and Content-Length body) from a raw socket; b"" on EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            v
            for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body
