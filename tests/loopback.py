"""HTTP servers on a free 127.0.0.1 port, for the tests: receivers, file sites, hubs, broken hosts."""

from __future__ import annotations

import http.server
import threading
from typing import Any, Self


class Quiet:
    """Mixed into a request handler: no access log lines in the test output."""

    def log_message(self, *args: Any) -> None:
        pass


class LoopbackServer:
    """Answers with `handler` from a background thread until `close()` (or the end of a `with`)."""

    def __init__(self, handler: Any):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
