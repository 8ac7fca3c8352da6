"""From a request slot to a verdict: the per-request glue between the ring
and a chain.  Compiled with Cython when built; plain Python otherwise."""

from pyworker.api import Context
from pyworker.headers import RequestHeaders
from pyworker.verdict import Verdict


class SlotHeaders(RequestHeaders):
    """Request headers read in place from the slot, one lookup per ask."""

    __slots__ = ("_req",)

    def __init__(self, req):
        RequestHeaders.__init__(self)
        self._req = req

    def _source_get_all(self, lname):
        return self._req.header_get_all(lname)

    def _source_items(self):
        return self._req.header_items()


class Dispatcher:
    """Runs the chain a request names (its nginx location's listener)."""

    __slots__ = ("chains", "stats")

    def __init__(self, chains, stats=None):
        self.chains = chains
        self.stats = stats

    def __call__(self, req):
        listener = req.chain
        chain = self.chains.get(listener)
        if chain is None:
            return Verdict.error("no listener %r in the MOSN config" % listener)
        ctx = Context(req.request_id, req.method, req.path, req.query,
                      req.remote_addr, req.protocol, listener)
        verdict = chain.run(ctx, SlotHeaders(req), req.body)
        if self.stats is not None:
            self.stats.request(listener, verdict.action)
        return verdict
