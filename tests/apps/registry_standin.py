"""An in-process stand-in for a schema registry's REST API (the part `vigil topics`
uses: POST /subjects/<subject>/versions). No real registry runs here: Confluent's is a
Java service fetched from Confluent's own servers, and Karapace is not on PyPI; both
are outside this machine's reach. It keeps what it was sent, gives a schema already held
under a subject the same id (as a registry does), and can be told to refuse."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


class RegistryStandin:
    def __init__(self, refuse: bool = False) -> None:
        self.subjects: dict[str, list[dict[str, Any]]] = {}
        self.auth: list[str | None] = []
        self.refuse = refuse
        self._ids: dict[str, int] = {}
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                    return self._send(404, {"error_code": 404, "message": "not found"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                standin.auth.append(self.headers.get("Authorization"))
                if standin.refuse:
                    return self._send(
                        409, {"error_code": 409, "message": "incompatible with an earlier schema"}
                    )
                subject = unquote(parts[1])
                schema_id = standin._ids.setdefault(body["schema"], len(standin._ids) + 1)
                versions = standin.subjects.setdefault(subject, [])
                if all(v["schema"] != body["schema"] for v in versions):
                    versions.append(body)
                return self._send(200, {"id": schema_id})

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RegistryStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
