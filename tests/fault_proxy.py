"""A loopback HTTP proxy in front of a real server (moto's S3, fake-gcs-server) that fails the
way stores do, on the requests a test names, while a job runs through it; it counts what it did.

    with FaultProxy(srv.endpoint) as px:          # give px.url to the client as its endpoint
        px.add("PUT", "/features/", "503", times=2)   # the next 2 matching requests: 503
        px.add("PUT", "/_commits/", "reset")          # the connection reset (RST), no answer
        px.add("GET", "/manifest", "stall")           # read, never answered (the client times out)
        px.add("PUT", "/errors/", "lose")             # forwarded and done, the answer lost (RST)
        px.add("PUT", "", "403", times=None)          # any status; times=None: every time
        px.strip_conditions = True                    # a store that ignores create-only writes
        px.served("PUT", "/features/", "503")         # how many times that fault was served
        px.clear()                                    # forward everything from now on

A request matches a rule when its method is the rule's and the path substring is in its target
(URL-decoded, query string included: GCS names the object in the query of an upload). Rules are
tried in the order added; a rule's `times` counts down as it is served. Rules can be added,
cleared or changed while the client runs (the proxy takes a lock per request).
`strip_conditions` removes `If-None-Match` and `If-Match` (S3) and the `ifGenerationMatch`,
`ifGenerationNotMatch`, `ifMetagenerationMatch` query parameters (GCS) from every request before
forwarding it, so the server answers as a store that does not honour conditional writes. (Only
against a server that checks no signatures: the headers are signed in SigV4.)

Every request is logged as (method, target, what was done): `forwarded`, `stripped` (forwarded
without its conditions) or the fault's name. A stalled request is held until its rule's
`stall_s` (default 120 s, far past any client timeout a test sets) or until the proxy stops,
whichever comes first; the `with` block stops the proxy and frees every held request, also when
the test fails.
"""
import http.client
import re
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass
from typing import List, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

STALL_S = 120.0
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te",
       "upgrade"}
CONDITION_HEADERS = {"if-none-match", "if-match"}
CONDITION_PARAMS = {"ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch"}


@dataclass
class Rule:
    method: str
    path: str
    fault: str                  # "503" (any status), "reset", "stall", "lose"
    times: Optional[int] = 1    # None: every time
    stall_s: float = STALL_S

    def matches(self, method: str, target: str) -> bool:
        return (self.times is None or self.times > 0) and method == self.method \
            and self.path in target


def _error_body(status: int, target: str) -> Tuple[bytes, str]:
    """What the store itself would answer: GCS's JSON API or S3's XML."""
    reason = http.client.responses.get(status, "Error")
    if target.startswith(("/storage/", "/upload/storage/", "/download/storage/")):
        return (f'{{"error": {{"code": {status}, "message": "{reason} (fault_proxy)"}}}}'
                .encode(), "application/json")
    code = {503: "ServiceUnavailable", 500: "InternalError", 403: "AccessDenied"}.get(
        status, reason.replace(" ", ""))
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>'
            f'{reason} (fault_proxy)</Message></Error>').encode(), "application/xml"


def _strip(target: str, headers: List[Tuple[str, str]]):
    """The request without its conditions; whether there were any."""
    kept = [(k, v) for k, v in headers if k.lower() not in CONDITION_HEADERS]
    parts = urlsplit(target)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept_q = [(k, v) for k, v in query if k not in CONDITION_PARAMS]
    if len(kept_q) != len(query):
        target = parts.path + ("?" + urlencode(kept_q) if kept_q else "")
    return target, kept, len(kept) != len(headers) or len(kept_q) != len(query)


class FaultProxy:
    def __init__(self, upstream: str):
        m = re.match(r"https?://([^:/]+):(\d+)", upstream)
        self.upstream = (m.group(1), int(m.group(2)))
        self.rules: List[Rule] = []
        self.strip_conditions = False
        self.log: List[Tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    while not proxy.stopping.is_set() and proxy._one(self):
                        pass
                except (ConnectionError, OSError):
                    pass   # the client went away (a timeout, a reset of its own)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="fault-proxy")

    # --- what a test calls -------------------------------------------------------------------
    def add(self, method: str, path: str, fault: str, times: Optional[int] = 1,
            stall_s: float = STALL_S) -> Rule:
        if not (fault in ("reset", "stall", "lose") or fault.isdigit()):
            raise ValueError(f"fault {fault!r}: a status code, reset, stall or lose")
        rule = Rule(method.upper(), path, fault, times, stall_s)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()
            self.strip_conditions = False

    def served(self, method: Optional[str] = None, path: str = "",
               what: Optional[str] = None) -> int:
        """How many requests (of this method, with this substring, done this way) there were."""
        with self.lock:
            return sum(1 for m, t, w in self.log
                       if (method is None or m == method) and path in t
                       and (what is None or w == what))

    def requests(self, method: Optional[str] = None, path: str = "") -> List[Tuple[str, str]]:
        with self.lock:
            return [(t, w) for m, t, w in self.log
                    if (method is None or m == method) and path in t]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    # --- one request -------------------------------------------------------------------------
    def _one(self, h) -> bool:
        """Serve one request of the connection; False when the connection is done."""
        line = h.rfile.readline(65537)
        if not line.strip():
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: List[Tuple[str, str]] = []
        while True:
            raw = h.rfile.readline(65537)
            if raw in (b"\r\n", b"\n", b""):
                break
            k, v = raw.decode("latin-1").split(":", 1)
            headers.append((k.strip(), v.strip()))
        low = {k.lower(): v for k, v in headers}
        if low.get("expect", "").lower() == "100-continue":
            h.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            h.wfile.flush()
        body = b""
        if low.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            body = b"".join(chunks)
        elif "content-length" in low:
            body = h.rfile.read(int(low["content-length"]))
        decoded = unquote(target)
        with self.lock:
            rule = next((r for r in self.rules if r.matches(method, decoded)), None)
            if rule is not None and rule.times is not None:
                rule.times -= 1
            strip = self.strip_conditions
            what = rule.fault if rule else "forwarded"
            if strip and (rule is None or rule.fault == "lose"):
                target, headers, stripped = _strip(target, headers)
                what = "stripped" if stripped and rule is None else what
            self.log.append((method, decoded, what))
        keep_alive = low.get("connection", "").lower() != "close"
        if rule is not None and rule.fault == "reset":
            self._reset(h)
            return False
        if rule is not None and rule.fault == "stall":
            self.stopping.wait(rule.stall_s)
            self._reset(h)
            return False
        if rule is not None and rule.fault.isdigit():
            status = int(rule.fault)
            payload, ctype = _error_body(status, decoded)
            self._answer(h, method, status, [("Content-Type", ctype)], payload, keep_alive)
            return keep_alive
        status, reason, resp_headers, data = self._forward(method, target, headers, body)
        if rule is not None and rule.fault == "lose":   # done upstream, the answer never comes
            self._reset(h)
            return False
        self._answer(h, method, status, resp_headers, data, keep_alive, reason)
        return keep_alive

    def _forward(self, method, target, headers, body):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = [(k, v) for k, v in headers if k.lower() not in HOP]
            if body or method in ("PUT", "POST", "PATCH"):
                sent = [(k, v) for k, v in sent if k.lower() != "content-length"]
                sent.append(("Content-Length", str(len(body))))
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in sent:
                conn.putheader(k, v)
            conn.endheaders(body or None)
            r = conn.getresponse()
            data = r.read()
            return r.status, r.reason, r.getheaders(), data
        except OSError as e:
            payload = f"fault_proxy: upstream failed: {e}".encode()
            return 502, "Bad Gateway", [("Content-Type", "text/plain")], payload
        finally:
            conn.close()

    @staticmethod
    def _answer(h, method, status, headers, data, keep_alive, reason=None):
        reason = reason or http.client.responses.get(status, "")
        out = [f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")]
        length = str(len(data))
        for k, v in headers:
            if k.lower() in HOP:
                continue
            if k.lower() == "content-length":
                if method == "HEAD":   # a HEAD answer keeps the size of the object it names
                    length = v
                continue
            out.append(f"{k}: {v}\r\n".encode("latin-1"))
        if status not in (204, 304):
            out.append(f"Content-Length: {length}\r\n".encode())
        out.append(b"Connection: keep-alive\r\n\r\n" if keep_alive else
                   b"Connection: close\r\n\r\n")
        h.wfile.write(b"".join(out) + (b"" if method == "HEAD" else data))
        h.wfile.flush()

    @staticmethod
    def _reset(h) -> None:
        """Close with RST: the peer sees a reset connection, not an orderly end."""
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        except OSError:
            pass
