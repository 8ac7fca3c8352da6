# Compiled, a connection, its answer and the pool are extension types: the
# parser's callbacks and each request read and set their fields without
# dictionary lookups.  httpclient.py stays the source.

from pyworker.deadlines cimport Deadlines


cdef class HttpPool


cdef class _Answer:
    cdef public int status
    cdef public list headers, body
    cdef public Py_ssize_t size, limit


cdef class _Connection:
    cdef public HttpPool pool
    cdef public object transport, parser, waiter
    cdef public _Answer answer
    cdef public bint got_bytes, closed, head_only, until_eof
    cdef public int framing

    cpdef _done(self, keep)


cdef class HttpPool:
    cdef public object host, port, ssl, host_header, loop
    cdef public object idle, waiters
    cdef public Deadlines deadlines
    cdef public Py_ssize_t max_connections, open
    cdef public bint closing

    cpdef _Connection _idle_connection(self)
    cpdef bint _queued(self)
    cpdef object _next_waiter(self)
    cpdef _pass_on(self, conn)
    cpdef _release(self, _Connection conn, keep)
