# Compiled, a request in flight and the table of them are extension types:
# their fields are struct members, read and set on every request without
# dictionary lookups.  inflight.py stays the source.

from pyworker.deadlines cimport Deadlines


cdef class _Request:
    cdef public object ps, gen, listener, req, task, timer, why, due
    cdef public object deadline_ns, waiting
    cdef public bint answered


cdef class InFlight:
    cdef public object consumer, loop, stats, on_room, on_answer
    cdef public Py_ssize_t limit
    cdef public dict requests
    cdef public set left
    cdef public object _abandons, _watching
    cdef public Deadlines deadlines

    cpdef _ended(self, _Request entry)
    cpdef _answer(self, _Request entry, verdict, why)
    cpdef _room_made(self)
