"""The admin process: MOSN's admin API and the Prometheus endpoint.

Both read what is already there, at request time: the ring's counters in
shared memory (written by nginx and the workers) and the workers' stats
files.  Nothing calls into a worker, so a scrape never slows requests.
"""

import glob
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shm_ring import Region, proc_alive

from pyworker import __version__
from pyworker import config as config_mod
from pyworker.logs import setup_logging
from pyworker.atomic import write_json
from pyworker.metrics import BUCKETS, merge, to_rows
from pyworker.privileges import die_with_parent, drop_privileges

log = logging.getLogger("pyworker.admin")

ARCHIVE = "archive.json"
SUPERVISOR = "supervisor.json"
DISCOVERY = "discovery.json"  # the endpoints' source
DISCOVERY_CONFIG = "discovery-config.json"  # the store's filter config


class Stats:
    """One view over the region and every worker's stats file."""

    def __init__(self, region, stats_dir):
        self.region = region
        self.stats_dir = stats_dir
        self.lock = threading.Lock()

    def _read(self, path):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def workers_total(self):
        """Live workers' counts plus those of every worker that left."""
        with self.lock:
            archive_path = os.path.join(self.stats_dir, ARCHIVE)
            total = merge({}, self._read(archive_path) or {})
            folded = False
            for path in glob.glob(
                os.path.join(self.stats_dir, "worker-*.json")
            ):
                data = self._read(path)
                if data is None:
                    continue
                merge(total, data)
                if not proc_alive(data.get("pid", 0)):
                    # its counts live on in the archive
                    os.unlink(path)
                    folded = True
            if folded:
                write_json(archive_path, to_rows(total))
            return total

    def supervisor(self):
        return self._read(os.path.join(self.stats_dir, SUPERVISOR)) or {}

    def discovery(self):
        """The discovery source's stats, with the filter config's."""
        out = self._read(os.path.join(self.stats_dir, DISCOVERY)) or {}
        config = self._read(os.path.join(self.stats_dir, DISCOVERY_CONFIG))
        if out and out.get("updated") is not None:
            out["seconds_since_update"] = round(
                max(0.0, time.time() - out["updated"]), 3
            )
        if config:
            out["config"] = config
        return out

    def workers(self):
        ring = self.region.stats()
        sup = self.supervisor()
        started = {w["pid"]: w for w in sup.get("workers", ())}
        now = time.time()
        out = []
        for c in ring["consumers"]:
            if c["state"] in ("empty", "dead"):
                continue
            w = started.get(c["pid"], {})
            out.append(
                {
                    "pid": c["pid"],
                    "index": c["index"],
                    "state": c["state"],
                    "uptime_seconds": round(now - w["started"], 3)
                    if "started" in w
                    else None,
                    "in_flight": c["taken"] - c["completed"],
                    "served": c["completed"],
                }
            )
        return out

    def ready(self):
        """(ready, the readiness document): ready when a Python worker and
        an nginx worker are attached.  "requests" says what a request gets
        now: "filtered", "wait" (no worker is live yet but the pool starts
        one: it waits up to mosn_timeout) or "fallback" (none can be
        expected: it takes mosn_fallback at once)."""
        ring = self.region.stats()
        live = [c for c in ring["consumers"] if c["state"] == "live"]
        owned = [p for p in ring["producers"] if p["state"] == "owned"]
        pool = self.region.pool_state
        if live:
            requests = "filtered"
        elif pool in ("failed", "stopped") or not self.region.desired_workers:
            requests = "fallback"
        else:
            requests = "wait"
        ok = bool(live) and bool(owned)
        return ok, {
            "ready": ok,
            "python_workers": len(live),
            "nginx_workers": len(owned),
            "pool": pool,
            "requests": requests,
        }


class Collector:
    """Prometheus metrics, honouring MOSN's stats_matcher exclusions."""

    def __init__(self, stats, matcher):
        self.stats = stats
        self.excluded_keys = set(matcher.exclusion_keys)
        self.excluded_labels = set(matcher.exclusion_labels)

    def _family(self, kind, name, doc, labels):
        if (
            name in self.excluded_keys
            or name.split("_", 1)[-1] in self.excluded_keys
        ):
            return None, ()
        kept = [l for l in labels if l not in self.excluded_labels]
        return kind(name, doc, labels=kept), kept

    def _add(self, fams, kind, name, doc, labels, rows):
        """rows: (label values, value); excluded labels are summed over."""
        fam, kept = self._family(kind, name, doc, labels)
        if fam is None:
            return
        idx = [labels.index(l) for l in kept]
        summed = {}
        for values, value in rows:
            key = tuple(values[i] for i in idx)
            summed[key] = summed.get(key, 0) + value
        for key, value in summed.items():
            fam.add_metric(list(key), value)
        fams.append(fam)

    def collect(self):
        fams = []
        ring = self.stats.region.stats()
        producers = [p for p in ring["producers"] if p["state"] != "free"]
        for field, doc in (
            ("submitted", "requests handed to the Python workers"),
            ("completed", "verdicts received"),
            ("timeouts", "requests that waited past mosn_timeout"),
            ("fallbacks", "requests that took the fallback"),
            (
                "queued",
                "requests that waited in nginx for a slot or a Python worker",
            ),
            (
                "queue_full",
                "requests that took the fallback because "
                "mosn_queue requests already waited",
            ),
            ("requeued", "requests re-queued from a dead worker"),
            ("stale", "late verdicts dropped"),
            ("forged", "completions of slots not in flight, ignored"),
            ("refused", "verdicts refused by the module's checks"),
            ("futex_wakes", "wake-ups of sleeping Python workers"),
            ("doorbells", "wake-ups of nginx workers"),
        ):
            self._add(
                fams,
                CounterMetricFamily,
                "mosn_ring_" + field,
                doc,
                ["producer"],
                [((str(p["index"]),), p[field]) for p in producers],
            )
        self._add(
            fams,
            GaugeMetricFamily,
            "mosn_ring_slots_in_use",
            "slots held by requests in flight",
            ["producer"],
            [((str(p["index"]),), p["in_use"]) for p in producers],
        )
        self._add(
            fams,
            GaugeMetricFamily,
            "mosn_ring_waiting",
            "requests waiting in nginx for a slot or a worker",
            ["producer"],
            [((str(p["index"]),), p["waiting"]) for p in producers],
        )
        self._add(
            fams,
            GaugeMetricFamily,
            "mosn_ring_occupancy",
            "share of a producer's slots in use",
            ["producer"],
            [
                ((str(p["index"]),), p["in_use"] / self.stats.region.slots)
                for p in producers
            ],
        )
        consumers = [c for c in ring["consumers"] if c["state"] != "empty"]
        for field, doc in (
            ("taken", "requests taken by Python workers"),
            ("batches", "batches taken"),
            ("sleeps", "times a Python worker went to sleep"),
        ):
            self._add(
                fams,
                CounterMetricFamily,
                "pyworker_ring_" + field,
                doc,
                ["consumer"],
                [((str(c["index"]),), c[field]) for c in consumers],
            )
        _, ready = self.stats.ready()
        self._add(
            fams,
            GaugeMetricFamily,
            "pyworker_workers",
            "live Python workers",
            [],
            [((), ready["python_workers"])],
        )
        sup = self.stats.supervisor()
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_worker_restarts",
            "Python workers replaced after dying",
            [],
            [((), sup.get("restarts", 0))],
        )

        self._discovery(fams)
        total = self.stats.workers_total()
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_requests",
            "requests by chain and outcome",
            ["chain", "outcome"],
            list(total.get("requests", {}).items()),
        )
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_filter_requests",
            "filter runs by chain, filter and outcome",
            ["chain", "filter", "outcome"],
            list(total.get("filters", {}).items()),
        )
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_driver_errors",
            "metadata drivers that raised",
            ["chain", "filter"],
            list(total.get("driver_errors", {}).items()),
        )
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_async_requests",
            "requests served by filters that await, by how they ended",
            ["chain", "outcome"],
            list(total.get("tasks", {}).items()),
        )
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_filter_events",
            "what filters counted themselves",
            ["chain", "filter", "event"],
            list(total.get("events", {}).items()),
        )
        fam, kept = self._family(
            HistogramMetricFamily,
            "pyworker_filter_duration_seconds",
            "time spent in each filter",
            ["chain", "filter"],
        )
        if fam is not None:
            for (chain, name), hist in total.get("latency", {}).items():
                acc, buckets = 0, []
                for bound, n in zip(BUCKETS + (float("inf"),), hist[:-1]):
                    acc += n
                    buckets.append(
                        ("+Inf" if bound == float("inf") else repr(bound), acc)
                    )
                labels = dict(chain=chain, filter=name)
                fam.add_metric(
                    [labels[l] for l in kept], buckets, sum_value=hist[-1]
                )
            fams.append(fam)
        return fams

    def _discovery(self, fams):
        disc = self.stats.discovery()
        source = disc.get("source")
        if not source:
            return
        self._add(
            fams,
            GaugeMetricFamily,
            "pyworker_discovery_info",
            "the endpoints' source and the last revision applied",
            ["source", "revision"],
            [((source, str(disc.get("revision", ""))), 1)],
        )
        if disc.get("revision_number") is not None:
            self._add(
                fams,
                GaugeMetricFamily,
                "pyworker_discovery_revision",
                "the source's last revision applied",
                ["source"],
                [((source,), disc["revision_number"])],
            )
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_discovery_updates",
            "updates applied",
            ["source"],
            [((source,), disc.get("updates", 0))],
        )
        if "seconds_since_update" in disc:
            self._add(
                fams,
                GaugeMetricFamily,
                "pyworker_discovery_seconds_since_update",
                "seconds since the last update applied",
                ["source"],
                [((source,), disc["seconds_since_update"])],
            )
        self._add(
            fams,
            GaugeMetricFamily,
            "pyworker_discovery_connected",
            "1 while the source is reachable",
            ["source"],
            [((source,), 1 if disc.get("connected") else 0)],
        )
        errors = dict(disc.get("errors") or {})
        config = disc.get("config") or {}
        if config.get("errors"):
            errors["config"] = errors.get("config", 0) + config["errors"]
        self._add(
            fams,
            CounterMetricFamily,
            "pyworker_discovery_errors",
            "errors by kind (connect, stream, compacted, value, "
            "config, nack, table)",
            ["source", "kind"],
            [((source, kind), n) for kind, n in errors.items()],
        )
        if config.get("revision") is not None:
            self._add(
                fams,
                GaugeMetricFamily,
                "pyworker_discovery_config_revision",
                "the store revision of the live filter config",
                ["key"],
                [((config.get("key") or "",), config["revision"])],
            )


class AdminHandler(BaseHTTPRequestHandler):
    server_version = "pyworker-admin/" + __version__

    def _send(self, status, body, ctype="application/json"):
        data = (
            body
            if isinstance(body, bytes)
            else (json.dumps(body, indent=2, default=str) + "\n").encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        admin = self.server.admin
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/api/v1/config_dump":
            return self._send(200, admin.gateway.config_dump())
        if path == "/api/v1/stats":
            return self._send(
                200,
                {
                    "ring": admin.stats.region.stats(),
                    "slots_in_use": admin.stats.region.slots_in_use(),
                    "workers": admin.stats.workers(),
                    "filters": to_rows(admin.stats.workers_total()),
                    "supervisor": admin.stats.supervisor(),
                    "discovery": admin.stats.discovery(),
                },
            )
        if path == "/api/v1/workers":
            return self._send(200, admin.stats.workers())
        if path in ("/api/v1/states", "/ready"):
            ok, doc = admin.stats.ready()
            return self._send(200 if ok else 503, doc)
        if path == "/metrics" and admin.metrics_on_admin:
            return self._send(
                200, generate_latest(admin.registry), CONTENT_TYPE_LATEST
            )
        return self._send(
            404,
            {
                "error": "no such admin path",
                "paths": [
                    "/api/v1/config_dump",
                    "/api/v1/stats",
                    "/api/v1/workers",
                    "/api/v1/states",
                ],
            },
        )

    def log_message(self, fmt, *args):
        log.debug("admin: " + fmt, *args)


class MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        admin = self.server.admin
        if self.path.split("?", 1)[0] != admin.gateway.metrics.prometheus_path:
            self.send_error(404)
            return
        data = generate_latest(admin.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


class Admin:
    def __init__(self, shm, config_path, stats_dir, uid=None, gid=None):
        self.shm = shm
        self.config_path = config_path
        self.stats_dir = stats_dir
        self.uid = uid
        self.gid = gid
        self.metrics_on_admin = False

    def _bind(self, endpoint, handler):
        server = ThreadingHTTPServer((endpoint.host, endpoint.port), handler)
        server.daemon_threads = True
        server.admin = self
        log.info("listening on %s", endpoint)
        return server

    def run(self):
        """Serves until killed; returns 0 at once if nothing is to serve."""
        die_with_parent()
        self.gateway = config_mod.load(self.config_path, log_warnings=False)
        setup_logging(self.gateway, role="admin")
        servers = []
        # bound before the rights are dropped, as nginx binds its ports
        if self.gateway.admin:
            servers.append(self._bind(self.gateway.admin, AdminHandler))
        if self.gateway.metrics.prometheus:
            servers.append(
                self._bind(self.gateway.metrics.prometheus, MetricsHandler)
            )
        if not servers:
            return 0
        drop_privileges(self.uid, self.gid)
        region = Region.attach(self.shm)
        self.stats = Stats(region, self.stats_dir)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(self.stats, self.gateway.metrics))
        for server in servers:
            # never shut down: no need to wake up to look for a request to
            threading.Thread(
                target=server.serve_forever, args=(3600,), daemon=True
            ).start()
        threading.Event().wait()
