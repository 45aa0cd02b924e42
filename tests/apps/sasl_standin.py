"""A stand-in broker that speaks just enough of the Kafka protocol to see how a client
authenticates: it answers ApiVersions, records the SASL mechanism of a SaslHandshake and
the first authentication message (PLAIN and SCRAM both carry the user name in it), then
hangs up. A client without SASL asks for Metadata instead, which is recorded too.

Used because the embedded broker (Tansu) has no SASL: this shows, on the wire, what each
of Vigil's clients sends, which a configuration check alone could not."""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE, METADATA = 18, 17, 36, 3
# what the stand-in claims to support: enough for a client to go on to authenticate
SUPPORTED = {0: (0, 7), 1: (0, 11), 2: (0, 5), 3: (0, 9), 8: (0, 7), 9: (0, 7), 10: (0, 3)}
SUPPORTED |= {11: (0, 5), 12: (0, 4), 13: (0, 4), 14: (0, 4), 15: (0, 5), 19: (0, 4)}
SUPPORTED |= {API_VERSIONS: (0, 3), SASL_HANDSHAKE: (0, 1), SASL_AUTHENTICATE: (0, 2)}


@dataclass
class Seen:
    """What one connection sent: the API keys in order, the mechanism, the auth bytes."""

    api_keys: list[int] = field(default_factory=list)
    mechanism: str | None = None
    auth: bytes = b""


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _api_versions(version: int) -> bytes:
    if version >= 3:  # flexible: compact array, tagged fields
        body = struct.pack(">h", 0) + _uvarint(len(SUPPORTED) + 1)
        for key, (lo, hi) in sorted(SUPPORTED.items()):
            body += struct.pack(">hhh", key, lo, hi) + _uvarint(0)
        return body + struct.pack(">i", 0) + _uvarint(0)
    body = struct.pack(">hi", 0, len(SUPPORTED))
    for key, (lo, hi) in sorted(SUPPORTED.items()):
        body += struct.pack(">hhh", key, lo, hi)
    return body + (struct.pack(">i", 0) if version >= 1 else b"")


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client hung up")
        data += chunk
    return data


def _frame(conn: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", _recv_exactly(conn, 4))
    return _recv_exactly(conn, size)


class SaslStandin:
    """Listens on a loopback port; ``seen`` holds one :class:`Seen` per connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: list[Seen] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SaslStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.sock.close()

    def authenticated(self) -> list[Seen]:
        return [s for s in self.seen if s.mechanism is not None]

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            seen = Seen()
            self.seen.append(seen)
            threading.Thread(target=self._serve, args=(conn, seen), daemon=True).start()

    def _serve(self, conn: socket.socket, seen: Seen) -> None:
        with conn:
            try:
                while True:
                    request = _frame(conn)
                    if seen.mechanism is not None:  # the first authentication message
                        seen.auth = request
                        return
                    key, version, correlation = struct.unpack(">hhi", request[:8])
                    seen.api_keys.append(key)
                    if key == API_VERSIONS:
                        self._reply(conn, correlation, _api_versions(version))
                    elif key == SASL_HANDSHAKE:
                        (client_len,) = struct.unpack(">h", request[8:10])
                        at = 10 + max(client_len, 0)
                        (n,) = struct.unpack(">h", request[at : at + 2])
                        seen.mechanism = request[at + 2 : at + 2 + n].decode()
                        mechanisms = struct.pack(">hi", 0, 1) + struct.pack(">h", n)
                        self._reply(conn, correlation, mechanisms + seen.mechanism.encode())
                    else:
                        return  # Metadata and the rest: not a broker that serves them
            except (ConnectionError, OSError, struct.error):
                return

    @staticmethod
    def _reply(conn: socket.socket, correlation: int, body: bytes) -> None:
        conn.sendall(struct.pack(">ii", len(body) + 4, correlation) + body)
