"""The shared-memory ring between nginx workers and Python workers.

The Cython binding is used when built; the pure-Python reference in
fallback/ serves otherwise, or when SHM_RING_PURE=1 asks for it.
"""

import os

from shm_ring.codec import (
    PENDING,
    RingError,
    Verdict,
    decode_request,
    decode_verdict,
    encode_request,
    encode_verdict,
)

if os.environ.get("SHM_RING_PURE") == "1":
    from shm_ring.fallback import (
        ABI_VERSION,
        IMPLEMENTATION,
        Consumer,
        Producer,
        Region,
        proc_alive,
        validate_verdict,
    )
else:
    try:
        from shm_ring._ring import (
            ABI_VERSION,
            IMPLEMENTATION,
            Consumer,
            Producer,
            Region,
            proc_alive,
            validate_verdict,
        )
    except ImportError:
        from shm_ring.fallback import (
            ABI_VERSION,
            IMPLEMENTATION,
            Consumer,
            Producer,
            Region,
            proc_alive,
            validate_verdict,
        )

__all__ = [
    "ABI_VERSION",
    "IMPLEMENTATION",
    "PENDING",
    "Consumer",
    "Producer",
    "Region",
    "RingError",
    "Verdict",
    "decode_request",
    "decode_verdict",
    "encode_request",
    "encode_verdict",
    "proc_alive",
    "validate_verdict",
]
