# Compiled, Dispatcher is an extension type calling Chain.decide directly.
# dispatch.py stays the source.
cimport cython

from pyworker.chain cimport Chain
from pyworker.headers cimport HeaderMap


cdef class SlotHeaders(HeaderMap):
    cdef public object _req


cdef class Dispatcher:
    cdef public object chains, stats, spawn
    cdef dict _routes

    @cython.locals(route=tuple, chain=Chain, headers=SlotHeaders,
                   continued=list)
    cpdef _dispatch(self, req)
