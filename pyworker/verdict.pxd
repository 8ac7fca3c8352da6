# Compiled, the chain calls the metadata check as a C function.
# verdict.py stays the source.

cpdef bint metadata_is_plain(metadata) except -1
