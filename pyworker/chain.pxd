# Compiled, Chain is an extension type: its per-request state is read
# without attribute lookups.  chain.py stays the source.
cimport cython

from pyworker.api cimport StreamReceiverFilterHandler
from pyworker.verdict cimport metadata_is_plain


cdef class Chain:
    cdef public object name, filters, limits, has_senders, decode_body
    cdef public bint is_async, sends_async
    cdef tuple _receivers, _receiver_names, _senders, _sender_names
    cdef tuple _receiver_awaits, _sender_awaits
    cdef StreamReceiverFilterHandler _handler
    cdef object _send_handler, _observe
    cdef list _counts
    cdef Py_ssize_t _seen, _ended, _folded, _sample_mask

    @cython.locals(seen=Py_ssize_t, i=Py_ssize_t,
                   handler=StreamReceiverFilterHandler)
    cpdef decide(self, ctx, headers, buf=*, trailers=*)
