"""A static file server on 127.0.0.1 for the cloud AlphaEarth tests, with what real servers do wrong on demand:
`mode` "range" (HTTP Range requests, as object stores serve), "ignore-range" (always the whole file), "truncate"
(ranges cut short of their Content-Length), "stall" (no answer for a minute); `fail_every` > 0 answers every n-th request with 503. It counts the
bytes it sent.

It runs in its own process: GDAL holds the GIL while it opens a file, so a server thread in the test's process
would never answer. `/__control__?mode=...&fail_every=...` sets the behaviour, `/__stats__` reports the counts."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), Handler)
        self.root, self.mode, self.fail_every = Path(root), "range", 0
        self.sent, self.requests, self.lock = Counter(), 0, threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def total_sent(self) -> int:
        return sum(self.sent.values())


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool):
        if self.path.startswith(("/__control__", "/__stats__")):
            return self.control()
        with self.server.lock:
            self.server.requests += 1
            failing = self.server.fail_every and self.server.requests % self.server.fail_every == 0
        path = (self.server.root / self.path.lstrip("/").split("?")[0]).resolve()
        if failing:
            return self.send_error(503)
        if self.server.mode == "stall":
            return time.sleep(60)
        if not path.is_relative_to(self.server.root.resolve()) or not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        wanted = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if wanted and self.server.mode != "ignore-range":
            start, end = int(wanted[1]), min(int(wanted[2] or len(data) - 1), len(data) - 1)
            chunk = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            chunk = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "none" if self.server.mode == "ignore-range" else "bytes")
        self.end_headers()
        if body:
            if self.server.mode == "truncate" and wanted:
                chunk = chunk[: len(chunk) // 2]
            with contextlib.suppress(ConnectionError):
                self.wfile.write(chunk)
            with self.server.lock:
                self.server.sent[path.name] += len(chunk)


    def control(self):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        with self.server.lock:
            self.server.mode = query.get("mode", self.server.mode)
            self.server.fail_every = int(query.get("fail_every", self.server.fail_every))
            body = json.dumps({"sent": self.server.total_sent(), "requests": self.server.requests}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Client:
    """The test's handle on a server process: its URL, its behaviour, its counts."""

    def __init__(self, url: str):
        self.url = url

    def _call(self, **query) -> dict:
        with urllib.request.urlopen(f"{self.url}/__control__?{urllib.parse.urlencode(query)}", timeout=10) as answer:
            return json.loads(answer.read())

    def set(self, mode: str | None = None, fail_every: int | None = None) -> None:
        self._call(**{k: v for k, v in {"mode": mode, "fail_every": fail_every}.items() if v is not None})

    def total_sent(self) -> int:
        return self._call()["sent"]

    def requests(self) -> int:
        return self._call()["requests"]


@contextlib.contextmanager
def serve(root: Path):
    process = subprocess.Popen([sys.executable, __file__, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        client = Client(process.stdout.readline().strip())
        yield client
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    server = FileServer(Path(sys.argv[1]))
    print(server.url, flush=True)
    server.serve_forever()
