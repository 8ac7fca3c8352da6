# Compiled, the header map is an extension type: the per-request checks
# of its edits are plain field reads.  headers.py stays the source.

cdef class HeaderMap:
    cdef public object _pairs, _index, _overlay, edits
