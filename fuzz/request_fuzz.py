"""atheris target for the Python workers' request parser (_ring.pyx's
_slot_request and the SlotRequest accessors), over records as the nginx
module writes them and bytes that are not.

    python3 fuzz/request_fuzz.py [libFuzzer flags] CORPUS_DIR

Every accessor a filter can reach is called on a record the parser
accepts; each must return, and raise nothing.  On one input in 16 the
pure-Python parser must agree on what it accepts and on what it reads.
"""

import sys

import atheris

with atheris.instrument_imports():
    from shm_ring import _ring, fallback


def accessors(r):
    return (
        r.chain,
        r.method,
        r.path,
        r.query,
        r.remote_addr,
        r.protocol,
        r.is_response,
        r.status,
        r.metadata,
        r.body,
        r.nheaders,
        r.request_id,
        r.header_items(),
        r.header_get("uid"),
        r.header_get("Host", ""),
        r.header_get_all("cookie"),
        r.header_get("\u00e9t\u00e9"),
    )


def test_one(data):
    r = _ring.parse_request(data)
    if r is not None:
        accessors(r)
    # now and then, the reference parser must agree
    if len(data) % 16 == 0:
        p = fallback.parse_request(data)
        if (r is None) != (p is None):
            raise AssertionError(
                "the parsers disagree on a record of %d bytes" % len(data)
            )
        if r is not None and accessors(r) != accessors(p):
            raise AssertionError("the parsers read the record differently")


def main():
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
