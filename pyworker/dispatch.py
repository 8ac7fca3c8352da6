"""From a request slot to a verdict: the per-request glue between the ring
and a chain.  Compiled with Cython when built; plain Python otherwise."""

from shm_ring import PENDING

from pyworker.api import Context
from pyworker.headers import HeaderMap
from pyworker.metrics import OUTCOMES
from pyworker.verdict import ACTION_CONTINUE, Verdict


class SlotHeaders(HeaderMap):
    """Request headers read in place from the slot, one lookup per ask."""

    __slots__ = ("_req",)

    def __init__(self, req):
        self._req = req
        self._pairs = ()
        self._index = None
        self._overlay = None
        self.edits = []

    def get(self, name, default=None):
        if self._overlay:
            return HeaderMap.get(self, name, default)
        # unedited: the first value straight from the slot, no list
        return self._req.header_get(name, default)

    def _source_get_all(self, lname):
        return self._req.header_get_all(lname)

    def _source_items(self):
        return self._req.header_items()


def _from_request(field):
    return property(
        lambda self: getattr(self._req, field),
        doc="the request's %s, read from the slot" % field,
    )


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
        self.request_id = req.request_id if req is not None else 0
        self.listener = listener
        self.metadata = {}
        self.upstream = None
        self.response_headers = []
        self.vars = {}


class Dispatcher:
    """Runs the chain a record names (its nginx location's listener): the
    receiver filters on a request record, the sender filters on a
    response record.

    A chain of plain filters serves one request at a time, inline, so each
    such listener keeps one context and one header map, reset for every
    request rather than made anew.  A phase whose filters await gets a
    context and a header map of its own per request and is handed to
    ``spawn(req, coroutine, listener)``, which runs it as a task and
    writes its verdict later; the dispatch returns PENDING.  ``chains`` is
    read once per listener.  CONTINUE verdicts made of metadata only are
    counted here and reach ``stats`` at ``fold_counts()``; call it before
    the stats are read.
    """

    __slots__ = ("chains", "stats", "spawn", "_routes")

    def __init__(self, chains, stats=None, spawn=None):
        self.chains = chains
        self.stats = stats
        self.spawn = spawn
        self._routes = {}

    def _route(self, listener):
        chain = self.chains.get(listener)
        if chain is None:
            return None
        route = self._routes[listener] = (
            chain,
            SlotContext(None, listener),
            SlotHeaders(None),
            [0],
        )
        return route

    def fold_counts(self):
        """Adds the CONTINUE verdicts counted since the last call to
        ``stats``."""
        requests = self.stats.requests if self.stats is not None else {}
        for listener, route in self._routes.items():
            counted = route[3]
            if counted[0]:
                key = (listener, OUTCOMES[ACTION_CONTINUE])
                requests[key] = requests.get(key, 0) + counted[0]
                counted[0] = 0

    def __call__(self, req):
        return self._dispatch(req)

    def _dispatch(self, req):
        listener = req.chain
        route = self._routes.get(listener)
        if route is None:
            route = self._route(listener)
            if route is None:
                return Verdict.error(
                    "no listener %r in the MOSN config" % listener
                )
        chain, ctx, headers, continued = route
        if chain.is_async or chain.sends_async:
            return self._dispatch_async(req, chain, listener)
        # what a filter may have changed is fresh for each request
        ctx._req = req
        ctx.request_id = req.request_id
        ctx.listener = listener
        ctx.metadata = {}
        ctx.upstream = None
        ctx.response_headers = []
        ctx.vars = {}
        headers._req = req
        if headers.edits:
            # (every edit is in edits, so an unedited map has no overlay)
            headers._reset()
        if req.is_response:
            if not chain.has_senders:
                # the config changed between the phases: nothing to run
                return None
            ctx.metadata = req.metadata
            return chain.run_send(ctx, req.status, headers, req.body)
        verdict = chain.decide(ctx, headers, req.body)
        if type(verdict) is dict:
            # metadata only: a CONTINUE, counted without a call
            continued[0] += 1
        elif self.stats is not None:
            self.stats.request(listener, verdict.action)
        return verdict

    def _dispatch_async(self, req, chain, listener):
        """A chain with a phase that awaits: its requests may be in flight
        together, so each has its own context and header map."""
        ctx = SlotContext(req, listener)
        headers = SlotHeaders(req)
        if req.is_response:
            if not chain.has_senders:
                return None
            ctx.metadata = req.metadata
            if not chain.sends_async:
                return chain.run_send(ctx, req.status, headers, req.body)
            work = chain.run_send_async(ctx, req.status, headers, req.body)
        else:
            if not chain.is_async:
                verdict = chain.decide(ctx, headers, req.body)
                if self.stats is not None:
                    self.stats.request(listener, verdict_action(verdict))
                return verdict
            work = chain.decide_async(ctx, headers, req.body)
        if self.spawn is None:
            work.close()
            return Verdict.error(
                "chain %r awaits, and this worker runs no "
                "event loop" % listener
            )
        self.spawn(req, work, listener)
        return PENDING


def verdict_action(verdict):
    """The action of what a chain hands back (a metadata dict is a
    CONTINUE)."""
    return ACTION_CONTINUE if type(verdict) is dict else verdict.action
