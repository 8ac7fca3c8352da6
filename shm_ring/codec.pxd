# Compiled, a verdict is an extension type: the chain makes one per request
# and the ring reads its fields as struct members.  codec.py stays the
# source.

cdef class Verdict:
    cdef public object action, status, upstream, metadata
    cdef public object request_set, request_remove, response_add
    cdef public object reply_headers, reply_body, log
    cdef public object response_set, response_remove, run_senders
    cdef public object response_body, decode_body
