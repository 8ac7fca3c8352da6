# Compiled, the hijack handler is an extension type, so the chain checks
# and resets it without attribute lookups.  api.py stays the source.

cdef class StreamReceiverFilterHandler:
    cdef public object hijacked, status, headers, body
