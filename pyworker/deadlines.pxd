# Compiled, Deadlines is an extension type: its fields are read without
# dictionary lookups on every add and discard.  deadlines.py stays the
# source.

cdef class Deadlines:
    cdef public object loop, expire, swept, timer
    cdef public double tick
    cdef public dict buckets

    cpdef object add(self, item, double deadline)
    cpdef discard(self, item, key)
