"""The ring in pure Python: a reference implementation of the API of
_ring.pyx over the same shared memory, for machines without the compiled
extension, for tools, and for tests that check one side against the other.

It reads the layout of shm_ring.h (shm_ring.abi) with `struct` at the
offsets the header records, and checks them as mosn_region_check() does.
Each module mirrors the C file of its name, each function the C function
of its name, step by step; read them side by side:

    region.py      shm_region.c     create, check, attach; processes
    producer.py    shm_producer.c   an nginx worker's side
    consumer.py    shm_consumer.c   a Python worker's side
    reaper.py      shm_reaper.c     the supervisor's: consumers, dead peers
    endpoints.py   shm_endpoints.c  the endpoint table
    _ring.py       _ring.pyx        the API: Region, Consumer, Producer

and shm_verdict.c's decoder is shm_ring.codec.decode_verdict().

Memory model.  Shared words are read and written through memoryview casts
of the mapping, so an aligned 32- or 64-bit word is one load or one store,
never torn.  On x86-64 plain loads and stores are ordered enough for the
single-producer/single-consumer rings, which only need the C code's
release stores and acquire loads.  The sleep/wake handshakes (consumer
wait against producer submit, producer arm against consumer flush) also
need the full fences of the C code; `_full_fence()` gets one from a lock
round trip, whose lock-prefixed instructions are a full barrier on x86-64.
On weakly ordered CPUs this package is for single-process use only.

What pure Python cannot do is an atomic read-modify-write.  Where the C
code uses compare-and-swap, exchange or atomic add, this package reads,
checks and stores, and says so at each place:

- channel claim: fallback claimers serialise on an flock of the region
  file, but a C claimer (an nginx worker) does not take that lock, so a
  fallback Producer must not claim while nginx workers may claim on the
  same region.  A fallback Producer is for tests and tools;
- the wake-up exchanges may let two wakers ring where one would do, which
  costs a spare system call and loses nothing;
- the reaper and consumer_retire assume one supervisor, as the C code's
  callers do; a slot the reaper frees is re-read just before the store,
  which narrows but does not close the window the C code's CAS closes.
"""

from shm_ring.fallback._ring import (
    ABI_VERSION,
    IMPLEMENTATION,
    Consumer,
    Producer,
    Region,
    SlotRequest,
    parse_request,
    validate_verdict,
)
from shm_ring.fallback.region import proc_alive

__all__ = [
    "ABI_VERSION",
    "IMPLEMENTATION",
    "Consumer",
    "Producer",
    "Region",
    "SlotRequest",
    "parse_request",
    "proc_alive",
    "validate_verdict",
]
