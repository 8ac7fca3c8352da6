"""A small xDS control plane for the tests: a grpcio server implementing
AggregatedDiscoveryService (state of the world) for CDS and EDS, as a
mesh control plane does: a response when a stream first asks for a type,
when the EDS names it asks for change, and when the snapshot changes;
nothing for an ACK or a NACK.  Every request it gets is recorded."""

import queue
import threading
from concurrent import futures

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, struct_pb2

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def eds_cluster(name, service_name=""):
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.eds_cluster_config.service_name = service_name
    return c


def dns_cluster(name):
    return cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STRICT_DNS)


def static_cluster(name, endpoints, site_key="site"):
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.load_assignment.CopyFrom(assignment(name, endpoints, site_key))
    return c


def assignment(name, endpoints, site_key="site", priorities=None):
    """endpoints: [(ip, port, site or None, health)], health 0 = UNKNOWN."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    by_priority = {}
    for i, endpoint in enumerate(endpoints):
        ip, port, site = endpoint[:3]
        health = endpoint[3] if len(endpoint) > 3 else 0
        priority = priorities[i] if priorities else 0
        lb = endpoint_components_pb2.LbEndpoint(health_status=health)
        lb.endpoint.address.CopyFrom(
            address_pb2.Address(
                socket_address=address_pb2.SocketAddress(
                    address=ip, port_value=port
                )
            )
        )
        if site is not None:
            meta = struct_pb2.Struct()
            meta.update({site_key: site})
            lb.metadata.filter_metadata["envoy.lb"].CopyFrom(meta)
        by_priority.setdefault(priority, []).append(lb)
    for priority, lbs in sorted(by_priority.items()):
        cla.endpoints.add(priority=priority).lb_endpoints.extend(lbs)
    return cla


def _pack(message):
    out = any_pb2.Any()
    out.Pack(message)
    return out


class ControlPlane(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, port=0):
        self.lock = threading.Lock()
        self.cds = ("", [])  # version, [Cluster]
        self.eds = ("", {})  # version, {name: CLA}
        self.requests = []  # every request, as received
        self.streams = []
        self.nonce = 0
        self.port = port
        self.server = None

    # -- the snapshot ---------------------------------------------------------

    def set_clusters(self, version, clusters):
        with self.lock:
            self.cds = (version, list(clusters))
            streams = list(self.streams)
        for s in streams:
            s.put(("push", CDS))

    def set_endpoints(self, version, assignments):
        with self.lock:
            self.eds = (version, {a.cluster_name: a for a in assignments})
            streams = list(self.streams)
        for s in streams:
            s.put(("push", EDS))

    # -- life ---------------------------------------------------------------

    def start(self):
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(
            self, self.server
        )
        self.port = self.server.add_insecure_port("127.0.0.1:%d" % self.port)
        self.server.start()
        return self

    def stop(self):
        with self.lock:
            streams, self.streams = list(self.streams), []
        for s in streams:
            s.put(("stop", None))
        self.server.stop(0).wait()

    def recorded(self, type_url):
        with self.lock:
            return [r for r in self.requests if r.type_url == type_url]

    # -- the protocol ---------------------------------------------------------

    def _response(self, type_url, names):
        with self.lock:
            self.nonce += 1
            nonce = str(self.nonce)
            if type_url == CDS:
                version, resources = self.cds
            else:
                version, table = self.eds
                resources = [table[n] for n in names if n in table]
        return discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=[_pack(r) for r in resources],
        )

    def StreamAggregatedResources(self, request_iterator, context):
        events = queue.Queue()
        with self.lock:
            self.streams.append(events)

        def read():
            try:
                for request in request_iterator:
                    events.put(("request", request))
            except grpc.RpcError:
                pass
            events.put(("stop", None))

        threading.Thread(target=read, daemon=True).start()
        asked = {}  # type -> the names last asked for
        sent = {}  # type -> the last nonce sent
        try:
            while True:
                kind, item = events.get()
                if kind == "stop":
                    return
                if kind == "push":
                    if item in asked:
                        response = self._response(item, asked[item])
                        sent[item] = response.nonce
                        yield response
                    continue
                request = item
                with self.lock:
                    self.requests.append(request)
                type_url = request.type_url
                names = list(request.resource_names)
                if (
                    request.response_nonce
                    and request.response_nonce != sent.get(type_url)
                ):
                    continue  # stale: a newer response is out
                first = type_url not in asked
                changed = asked.get(type_url) != names
                asked[type_url] = names
                if first or (type_url == EDS and changed):
                    response = self._response(type_url, names)
                    sent[type_url] = response.nonce
                    yield response
        finally:
            with self.lock:
                if events in self.streams:
                    self.streams.remove(events)
