"""A real HTTP server on loopback for tests: serves files from a dict, counts the requests,
and stops when its `with` block ends, also when the test fails.

    with serve({"/w.h5": data}) as srv:
        srv.url("/w.h5"); srv.hits["/w.h5"]
"""
import threading
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet: the test reads the counts, not a log
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        self.server.hits[path] += 1
        body = self.server.files.get(path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve(files):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.hits = dict(files), Counter()
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
