"""A real HTTP server on loopback for tests: serves files from a dict, counts the requests,
and stops when its `with` block ends, also when the test fails.

    with serve({"/w.h5": data}) as srv:
        srv.url("/w.h5"); srv.hits["/w.h5"]

It can misbehave the way real servers do: `faults={"/a.jpg": ["500", "reset", "slow"]}`
answers the first requests of a path with those, in order ("ok": served as usual), then
serves it; `status={"/p":
403}` answers a path with that status every time; `delay_s` adds latency to every request.
Byte ranges (`Range: bytes=a-b`) and HEAD are served, as object stores do.
"""
import re
import socket
import struct
import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

SLOW_S = 30  # a "slow" answer: longer than any request timeout a test sets


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the test reads the counts, not a log
        pass

    def _answer(self, head: bool):
        srv = self.server
        path = unquote(self.path.split("?", 1)[0])  # as a real server: %20 is a space
        with srv.lock:
            srv.hits[path] += 1
            queue = srv.faults.get(path)
            fault = queue.pop(0) if queue else None
        if fault == "ok":  # this request is served as usual
            fault = None
        if srv.delay_s:
            time.sleep(srv.delay_s)
        if fault == "reset":  # the connection dropped mid-request: RST, no answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if fault == "slow":
            time.sleep(SLOW_S)
            return
        status = int(fault) if fault else srv.status.get(path)
        body = srv.files.get(path)
        if status is None and body is None:
            status = 404
        if status is not None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, len(body)
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(len(body), int(m.group(2)) + 1) if m.group(2) else len(body)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if not head:
            self.wfile.write(body[start:end])

    def do_GET(self):
        self._answer(head=False)

    def do_HEAD(self):
        self._answer(head=True)


@contextmanager
def serve(files, faults=None, status=None, delay_s=0.0):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.files, server.hits = dict(files), Counter()
    server.faults = {k: list(v) for k, v in (faults or {}).items()}
    server.status = dict(status or {})
    server.delay_s = delay_s
    server.lock = threading.Lock()
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
