"""Service discovery from an xDS control plane: CDS and EDS over one ADS
stream (envoy.service.discovery.v3.AggregatedDiscoveryService), state of
the world.

- Each cluster is an app (its name the app name).  An EDS cluster takes
  its endpoints from the ClusterLoadAssignment of its service name (the
  cluster name unless ``eds_cluster_config.service_name`` says
  otherwise); a STATIC cluster from its own ``load_assignment``.  Other
  cluster types (DNS, ORIGINAL_DST) are refused: names are not resolved.
- Each endpoint's site is the string its ``envoy.lb`` filter metadata
  holds under ``site_key`` ("site" by default), as Envoy's subset load
  balancer reads it: ``mosn_subset APP key=...`` works unchanged.
- Endpoints whose health is UNHEALTHY, DRAINING or TIMEOUT are left out;
  of the priorities, the lowest that has an endpoint left is used.
- A response is taken whole or refused whole: an ACK names its
  version_info and nonce; a NACK names the nonce, the last version taken
  and why (error_detail).  A refused response changes nothing.
- When the stream breaks, the table keeps its endpoints; the client
  reconnects, tells the server the versions it has, and subscribes again.
"""

import asyncio
import logging

from pyworker.discovery.servicefile import (
    MAX_APPS,
    ServiceFileError,
    parse_app,
)

log = logging.getLogger("pyworker.discovery")

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LB_METADATA = "envoy.lb"
LEFT_OUT = {2, 3, 4}  # HealthStatus UNHEALTHY, DRAINING, TIMEOUT
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 32 << 20),
]


class Refused(Exception):
    """A response that is NACKed; the text is the error_detail."""


class XdsFollower:
    def __init__(self, spec, table, stats):
        self.spec = spec
        self.table = table
        self.stats = stats
        self.versions = {CDS: "", EDS: ""}  # last accepted, per type
        self.nonces = {CDS: "", EDS: ""}  # last received, per type
        self.clusters = {}  # app -> ("eds", service) | ("static", eps)
        self.assignments = {}  # service name -> endpoints
        self.eds_names = []  # subscribed
        self.queue = None
        self.said = None

    # -- the stream -----------------------------------------------------------

    async def run(self):
        backoff = BACKOFF_MIN
        while True:
            up = False
            try:
                up = await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind = "stream" if self.stats.connected else "connect"
                why = f"{kind}: {_target(self.spec)}: {_reason(exc)}"
                if why != self.said:
                    log.error(
                        "service discovery: xDS %s; keeping the "
                        "endpoints the table has",
                        why,
                    )
                    self.said = why
                self.stats.error(kind)
            finally:
                self.stats.set_connected(False)
                self.stats.flush(force=True)
            backoff = BACKOFF_MIN if up else min(BACKOFF_MAX, backoff * 2)
            await asyncio.sleep(backoff)

    async def _stream(self):
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        channel = grpc.aio.insecure_channel(
            _target(self.spec), options=GRPC_OPTIONS
        )
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            self.queue = asyncio.Queue()
            call = stub.StreamAggregatedResources(self._requests())
            # a new stream: no nonce yet; the versions say what we have
            self.nonces = {CDS: "", EDS: ""}
            self._send(CDS, [])
            if self.eds_names:
                self._send(EDS, self.eds_names)
            async for response in call:
                if not self.stats.connected:
                    (log.warning if self.said else log.info)(
                        "service discovery: xDS stream up at %s",
                        _target(self.spec),
                    )
                    self.said = None
                    self.stats.set_connected(True)
                self.on_response(response)
                self.stats.flush()
            raise ConnectionError("the ADS stream ended")
        finally:
            self.queue = None
            await channel.close(grace=None)

    async def _requests(self):
        queue = self.queue
        while True:
            yield await queue.get()

    def _send(self, type_url, names, error=None, nonce=None):
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2
        from google.rpc import status_pb2

        request = discovery_pb2.DiscoveryRequest(
            version_info=self.versions[type_url],
            node=base_pb2.Node(
                id=self.spec.node_id, cluster=self.spec.node_cluster
            ),
            resource_names=list(names),
            type_url=type_url,
            response_nonce=self.nonces[type_url] if nonce is None else nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(
                status_pb2.Status(code=3, message=error)
            )  # INVALID_ARGUMENT
        if self.queue is not None:
            self.queue.put_nowait(request)

    # -- responses ----------------------------------------------------------

    def on_response(self, response):
        type_url = response.type_url
        if type_url not in (CDS, EDS):
            self._nack(response, f"type {type_url} was not asked for")
            return
        try:
            if type_url == CDS:
                change = self._clusters(response)
            else:
                change = self._assignments(response)
        except Refused as exc:
            self._nack(response, str(exc))
            return
        self.versions[type_url] = response.version_info
        self.nonces[type_url] = response.nonce
        if type_url == CDS:
            clusters = change
            names = sorted(
                {x for kind, x in clusters.values() if kind == "eds"}
            )
            self.clusters = clusters
            self._send(CDS, [])  # ACK
            if names != self.eds_names:
                self.eds_names = names
                self.assignments = {
                    k: v for k, v in self.assignments.items() if k in names
                }
                self._send(EDS, names)  # subscribe
        else:
            self.assignments.update(change)
            self._send(EDS, self.eds_names)  # ACK
        self._apply()

    def _nack(self, response, why):
        type_name = (
            "CDS"
            if response.type_url == CDS
            else "EDS"
            if response.type_url == EDS
            else response.type_url
        )
        log.error(
            "service discovery: xDS %s version %r refused (NACK): "
            "%s; keeping version %r",
            type_name,
            response.version_info,
            why,
            self.versions.get(response.type_url, ""),
        )
        self.stats.error("nack")
        if response.type_url in (CDS, EDS):
            names = [] if response.type_url == CDS else self.eds_names
            self.nonces[response.type_url] = response.nonce
            self._send(response.type_url, names, error=why)

    def _clusters(self, response):
        from envoy.config.cluster.v3 import cluster_pb2

        clusters = {}
        for i, any_ in enumerate(response.resources):
            if any_.type_url != CDS:
                raise Refused(f"resources[{i}] is a {any_.type_url}")
            cluster = cluster_pb2.Cluster()
            any_.Unpack(cluster)
            name = cluster.name
            if name in clusters:
                raise Refused(f"cluster {name!r} is named twice")
            if cluster.WhichOneof("cluster_discovery_type") != "type":
                raise Refused(
                    f"cluster {name!r}: a custom cluster type is not supported"
                )
            if cluster.type == cluster_pb2.Cluster.EDS:
                service = cluster.eds_cluster_config.service_name or name
                clusters[name] = ("eds", service)
                _app_name(name)
            elif cluster.type == cluster_pb2.Cluster.STATIC:
                clusters[name] = (
                    "static",
                    self._endpoints(name, cluster.load_assignment),
                )
            else:
                raise Refused(
                    f"cluster {name!r}: type "
                    f"{cluster_pb2.Cluster.DiscoveryType.Name(cluster.type)}"
                    f" is not supported (EDS or STATIC: names are not "
                    f"resolved)"
                )
        if len(clusters) > MAX_APPS:
            raise Refused(
                f"{len(clusters)} clusters; the endpoint table "
                f"holds {MAX_APPS} apps"
            )
        return clusters

    def _assignments(self, response):
        from envoy.config.endpoint.v3 import endpoint_pb2

        out = {}
        for i, any_ in enumerate(response.resources):
            if any_.type_url != EDS:
                raise Refused(f"resources[{i}] is a {any_.type_url}")
            cla = endpoint_pb2.ClusterLoadAssignment()
            any_.Unpack(cla)
            if cla.cluster_name not in self.eds_names:
                continue  # not asked for: ignored, as Envoy does
            out[cla.cluster_name] = self._endpoints(cla.cluster_name, cla)
        return out

    def _endpoints(self, name, cla):
        """[(ip, port, site)] of a ClusterLoadAssignment; raises Refused."""
        by_priority = {}
        for locality in cla.endpoints:
            for lb in locality.lb_endpoints:
                if lb.health_status in LEFT_OUT:
                    continue
                sock = lb.endpoint.address.socket_address
                where = f"{name}: endpoint {sock.address}:{sock.port_value}"
                meta = lb.metadata.filter_metadata.get(LB_METADATA)
                site = None
                if meta is not None and self.spec.site_key in meta.fields:
                    value = meta.fields[self.spec.site_key]
                    if value.WhichOneof("kind") == "string_value":
                        site = value.string_value
                if not site:
                    raise Refused(
                        f"{where} has no {LB_METADATA} metadata "
                        f"{self.spec.site_key!r} (a string) "
                        f"naming its site"
                    )
                by_priority.setdefault(locality.priority, []).append(
                    {"ip": sock.address, "port": sock.port_value, "site": site}
                )
        servers = by_priority[min(by_priority)] if by_priority else []
        try:
            return parse_app({"app_name": name, "server_list": servers}, name)[
                1
            ]
        except ServiceFileError as exc:
            raise Refused(f"{name}: {exc}") from None

    def _apply(self):
        apps, waiting = {}, set()
        for app, (kind, x) in self.clusters.items():
            if kind == "static":
                apps[app] = x
            elif x in self.assignments:
                apps[app] = self.assignments[x]
            else:
                waiting.add(app)  # its EDS is on the way: keep it
        try:
            self.table.sync(apps, keep=waiting)
        except Exception as exc:
            log.error(
                "service discovery: the endpoint table refused the "
                "xDS clusters: %s",
                exc,
            )
            self.stats.error("table")
        eds = self.versions[EDS]
        self.stats.applied(
            f"cds:{self.versions[CDS]} eds:{eds}",
            int(eds) if eds.isdigit() else None,
        )


def _app_name(name):
    try:
        parse_app({"app_name": name}, name)
    except ServiceFileError as exc:
        raise Refused(f"cluster {name!r}: {exc.reason}") from None


def _target(spec):
    host, port = spec.server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc):
    details = getattr(exc, "details", None)
    text = (
        (details() if callable(details) else None)
        or str(exc)
        or type(exc).__name__
    )
    return " ".join(str(text).split())[:300]
