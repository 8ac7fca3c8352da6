"""A bounded load on loopback for fault tests: a few threads, each with a
keep-alive connection, for a fixed time; every exchange is recorded."""

import http.client
import re
import threading
import time


class Load:
    def __init__(self, port, threads=6, path="/", headers_for=None):
        self.port = port
        self.threads = threads
        self.path = path
        self.headers_for = headers_for or (lambda i: {"uid": str(i % 250)})
        self.results = []  # (status, seconds, mosn_status)
        self.timeline = []  # (monotonic time answered, status, mosn)
        self.errors = []
        # a keep-alive connection closed by the server just as a request
        # went out: clients retry those (RFC 9112, 9.3.1); counted here
        self.retries = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = []

    def _run(self, n):
        conn = None
        reused = False
        i = n
        while not self._stop.is_set():
            i += self.threads
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(
                        "127.0.0.1", self.port, timeout=10
                    )
                    reused = False
                t0 = time.monotonic()
                conn.request("GET", self.path, headers=self.headers_for(i))
                resp = conn.getresponse()
                resp.read()
                took = time.monotonic() - t0
                with self._lock:
                    mosn = resp.getheader("X-Mosn-Status")
                    self.results.append((resp.status, took, mosn))
                    self.timeline.append((t0 + took, resp.status, mosn))
                reused = True
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (
                ConnectionResetError,
                http.client.RemoteDisconnected,
                BrokenPipeError,
            ) as exc:
                with self._lock:
                    if reused:
                        self.retries += 1
                        i -= self.threads  # the same request again
                    else:
                        self.errors.append(repr(exc))
                conn.close()
                conn = None
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.errors.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def start(self):
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._workers:
            t.join(15)
        return self

    def statuses(self):
        out = {}
        for status, _, mosn in self.results:
            key = (status, mosn)
            out[key] = out.get(key, 0) + 1
        return out

    def filtered_again(self, since, within):
        """When, after since, requests were filtered again for good (the
        first filtered answer after the last unfiltered one), or None if
        that was not within `within` seconds."""
        with self._lock:
            after = [(t, mosn) for t, _, mosn in self.timeline if t >= since]
        last_bad = max(
            (t for t, mosn in after if mosn != "filtered"), default=since
        )
        good = [t for t, mosn in after if mosn == "filtered" and t > last_bad]
        if not good or good[0] - since > within:
            return None
        return good[0] - since

    def describe(self, since):
        """The answers after since, run-length encoded, for a failure."""
        with self._lock:
            after = [
                (t - since, mosn) for t, _, mosn in self.timeline if t >= since
            ]
        out = []
        for t, mosn in after:
            if out and out[-1][1] == mosn:
                out[-1][2] += 1
            else:
                out.append([round(t, 3), mosn, 1])
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def request_times(gw):
    """Server-side times (s) from the `timed` access log: (status, request
    time, $mosn_status, time spent on the upstream)."""
    out = []
    with open(gw.prefix + "/logs/timed.log") as f:
        for line in f:
            status, rt, mosn, upstream = line.split(None, 3)
            # "-" without an upstream, "a, b" after a retry, "a : b" across
            # an internal redirect
            spent = sum(
                float(t)
                for t in re.split(r"[\s,:]+", upstream)
                if t and t != "-"
            )
            out.append((int(status), float(rt), mosn, spent))
    return out
