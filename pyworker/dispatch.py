"""From a request slot to a verdict: the per-request glue between the ring
and a chain.  Compiled with Cython when built; plain Python otherwise."""

from pyworker.api import Context
from pyworker.headers import RequestHeaders
from pyworker.verdict import Verdict


class SlotHeaders(RequestHeaders):
    """Request headers read in place from the slot, one lookup per ask."""

    __slots__ = ("_req",)

    def __init__(self, req):
        self._req = req
        self._pairs = ()
        self._index = None
        self._overlay = None
        self.edits = []

    def _source_get_all(self, lname):
        return self._req.header_get_all(lname)

    def _source_items(self):
        return self._req.header_items()


def _from_request(field):
    return property(lambda self: getattr(self._req, field),
                    doc="the request's %s, read from the slot" % field)


class SlotContext(Context):
    """A Context whose request fields are decoded only if a filter reads
    them; valid while its request is being filtered."""

    __slots__ = ("_req",)

    method = _from_request("method")
    path = _from_request("path")
    query = _from_request("query")
    remote_addr = _from_request("remote_addr")
    protocol = _from_request("protocol")

    def __init__(self, req, listener):
        self._req = req
        self.request_id = req.request_id
        self.listener = listener
        self.metadata = {}
        self.upstream = None
        self.response_headers = []
        self.vars = {}


class Dispatcher:
    """Runs the chain a record names (its nginx location's listener): the
    receiver filters on a request record, the sender filters on a
    response record."""

    __slots__ = ("chains", "stats")

    def __init__(self, chains, stats=None):
        self.chains = chains
        self.stats = stats

    def __call__(self, req):
        listener = req.chain
        chain = self.chains.get(listener)
        if chain is None:
            return Verdict.error("no listener %r in the MOSN config" % listener)
        ctx = SlotContext(req, listener)
        if req.is_response:
            if not chain.has_senders:
                # the config changed between the phases: nothing to run
                return None
            return chain.run_send(ctx, req.status, SlotHeaders(req))
        verdict = chain.run(ctx, SlotHeaders(req), req.body)
        if self.stats is not None:
            self.stats.request(listener, verdict.action)
        return verdict
