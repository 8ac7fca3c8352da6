"""The endpoint table in pure Python: shm_endpoints.c, function by function.
The seqlock needs only ordered loads and stores (x86-64 TSO, see
shm_ring.fallback); the round-robin counters' atomic add is a load and a
store here, so a fallback reader racing a C reader may repeat or skip a
turn.
"""

from shm_ring.abi import (
    ENDPOINT,
    EPA_ENDPOINTS,
    EPA_GENERATION,
    EPA_HEAD,
    EPA_NAME,
    EPA_NAME_LEN,
    EPA_NENDPOINTS,
    EPA_RR,
    EPA_SEQ,
    EPA_SITES,
    EP_ANY,
    EP_APPS,
    EP_APP_NAME_MAX,
    EP_APP_SIZE,
    EP_BUSY,
    EP_INET,
    EP_INET6,
    EP_MAX,
    EP_NONE,
    EP_RR_ANY,
    EP_SITE,
    EP_SITES,
    EP_SITE_ENTRY,
    EP_SITE_MAX,
)
from shm_ring.codec import RingError


EP_SPINS = 1000


def _ep_read_begin(rg, a):
    for _ in range(EP_SPINS):
        seq = rg.ld32(a + EPA_SEQ)
        if not seq & 1:
            return seq
    return None


def _ep_read_end(rg, a, seq):
    return rg.ld32(a + EPA_SEQ) == seq


def _ep_snapshot(rg, i):
    """A stable copy of entry i's bytes, or None (a writer died in the
    middle of a write)."""
    a = rg.ep_app(i)
    for _ in range(EP_SPINS):
        seq = _ep_read_begin(rg, a)
        if seq is None:
            return None
        raw = bytes(rg._mm[a : a + EP_APP_SIZE])
        if _ep_read_end(rg, a, seq):
            return raw
    return None


def _ep_parse(raw):
    """mosn_endpoints_read()'s checks on a copy: a dict, or None if it is
    not a valid table."""
    _, generation, n, name_len, name = EPA_HEAD.unpack_from(raw)
    if n > EP_MAX or name_len >= EP_APP_NAME_MAX:
        return None
    sites = []
    for i in range(EP_SITES):
        first, count, nlen, sname = EP_SITE_ENTRY.unpack_from(
            raw, EPA_SITES + EP_SITE_ENTRY.size * i
        )
        if nlen >= EP_SITE_MAX or first + count > n:
            return None
        sites.append((first, count, nlen, sname[:nlen]))
    endpoints = []
    for i in range(n):
        family, site, port, flags, addr = ENDPOINT.unpack_from(
            raw, EPA_ENDPOINTS + ENDPOINT.size * i
        )
        if family not in (EP_INET, EP_INET6) or port == 0 or site >= EP_SITES:
            return None
        endpoints.append((family, site, port, flags, addr))
    return {
        "generation": generation,
        "name": name[:name_len],
        "sites": sites,
        "endpoints": endpoints,
    }


def _endpoints_read(rg, i):
    raw = _ep_snapshot(rg, i)
    return None if raw is None else _ep_parse(raw)


def _endpoints_find(rg, name):
    """mosn_endpoints_find(): the index, -1 if no entry has the name, -2
    if none has and an entry could not be read."""
    if not 0 < len(name) < EP_APP_NAME_MAX:
        return -1
    unread = False
    for i in range(EP_APPS):
        a = rg.ep_app(i)
        for _ in range(EP_SPINS):
            seq = _ep_read_begin(rg, a)
            if seq is None:
                unread = True
                break
            found = (
                rg.ld32(a + EPA_NAME_LEN) == len(name)
                and bytes(rg._mm[a + EPA_NAME : a + EPA_NAME + len(name)])
                == name
            )
            if _ep_read_end(rg, a, seq):
                if found:
                    return i
                break
        else:
            unread = True
    return -2 if unread else -1


def _endpoints_count(rg, name):
    """(endpoints, generation); (0, 0) for no such app, (-1, 0) if busy."""
    idx = _endpoints_find(rg, name)
    for _ in range(EP_SPINS):
        if idx == -1:
            return 0, 0
        if idx < 0:
            return -1, 0
        raw = _ep_snapshot(rg, idx)
        if raw is None:
            return -1, 0
        _, gen, n, name_len, got = EPA_HEAD.unpack_from(raw)
        if got[:name_len] != name or name_len != len(name):
            idx = _endpoints_find(rg, name)
            continue
        return (n, gen) if n <= EP_MAX else (-1, 0)
    return -1, 0


def _ep_fetch_add(rg, off):
    v = rg.ld32(off)
    rg.st32(off, v + 1)
    return v


def _ep_same(a, b):
    """mosn_endpoint_same() on (family, 16 address bytes, port)."""
    n = 4 if a[0] == EP_INET else 16
    return a[0] == b[0] and a[2] == b[2] and a[1][:n] == b[1][:n]


def _ep_round(rg, a, eps, first, count, rr, tried):
    if count == 0:
        return None
    start = _ep_fetch_add(rg, a + EPA_RR + 4 * rr)
    for k in range(count):
        family, _, port, _, addr = eps[first + (start + k) % count]
        ep = (family, addr, port)
        if not any(_ep_same(ep, t) for t in tried):
            return ep
    return None


def _endpoints_pick(rg, name, site, tried):
    """(MOSN_EP_* result, (family, addr, port) or None)."""
    idx = _endpoints_find(rg, name)
    for _ in range(EP_SPINS):
        if idx == -1:
            return EP_NONE, None
        if idx < 0:
            return EP_BUSY, None
        snap = _endpoints_read(rg, idx)
        if snap is None:
            return EP_BUSY, None
        if snap["name"] != name:
            idx = _endpoints_find(rg, name)
            continue
        a = rg.ep_app(idx)
        eps = snap["endpoints"]
        if 0 < len(site) < EP_SITE_MAX:
            for i, (first, count, _, sname) in enumerate(snap["sites"]):
                if sname == site and len(sname) == len(site):
                    ep = _ep_round(rg, a, eps, first, count, i, tried)
                    if ep is not None:
                        return EP_SITE, ep
                    break
        ep = _ep_round(rg, a, eps, 0, len(eps), EP_RR_ANY, tried)
        return (EP_ANY, ep) if ep is not None else (EP_NONE, None)
    return EP_BUSY, None


def _endpoints_set(rg, name, specs):
    """mosn_endpoints_set(): specs are codec.endpoint_spec() tuples;
    returns the app's entry index."""
    idx = free_app = empty_app = -1
    for i in range(EP_APPS):
        a = rg.ep_app(i)
        name_len = rg.ld32(a + EPA_NAME_LEN)
        if (
            name_len == len(name)
            and bytes(rg._mm[a + EPA_NAME : a + EPA_NAME + name_len]) == name
        ):
            idx = i
            break
        if name_len == 0 and free_app < 0:
            free_app = i
        if rg.ld32(a + EPA_NENDPOINTS) == 0 and empty_app < 0:
            empty_app = i
    if idx < 0:
        if free_app < 0:
            free_app = empty_app
        if free_app < 0:
            raise RingError(
                'app "%s": the endpoint table is full (%d apps)'
                % (name.decode("utf-8", "replace"), EP_APPS)
            )
        idx = free_app
    a = rg.ep_app(idx)
    same_app = (
        rg.ld32(a + EPA_NAME_LEN) == len(name)
        and bytes(rg._mm[a + EPA_NAME : a + EPA_NAME + len(name)]) == name
    )
    # sites keep their entries (and so their round-robin counters)
    sites = []
    for i in range(EP_SITES):
        first, count, nlen, sname = EP_SITE_ENTRY.unpack_from(
            rg._mm, a + EPA_SITES + EP_SITE_ENTRY.size * i
        )
        # a scribbled entry is made unused again, as in C
        sites.append(
            sname[:nlen] if same_app and 0 < nlen < EP_SITE_MAX else b""
        )
    used = [False] * EP_SITES
    order = []
    for k, (_, _, _, site) in enumerate(specs):
        s = sites.index(site) if site in sites else -1
        if s >= 0 and used[s]:
            continue
        if s < 0:
            if b"" in sites:
                s = sites.index(b"")
            else:
                later = {spec[3] for spec in specs[k:]}
                s = next(
                    (
                        i
                        for i in range(EP_SITES)
                        if not used[i] and sites[i] not in later
                    ),
                    -1,
                )
            if s < 0:
                raise RingError(
                    'app "%s": more than %d sites'
                    % (name.decode("utf-8", "replace"), EP_SITES)
                )
            sites[s] = site
        used[s] = True
        order.append(s)
    table = bytearray(EP_SITE_ENTRY.size * EP_SITES)
    eps = bytearray(ENDPOINT.size * EP_MAX)
    placed = {}
    pos = 0
    for s in order:
        first = pos
        for family, addr, port, site in specs:
            if site == sites[s]:
                ENDPOINT.pack_into(
                    eps, ENDPOINT.size * pos, family, s, port, 0, addr
                )
                pos += 1
        placed[s] = (first, pos - first)
    for i in range(EP_SITES):
        first, count = placed.get(i, (0, 0))
        EP_SITE_ENTRY.pack_into(
            table,
            EP_SITE_ENTRY.size * i,
            first,
            count,
            len(sites[i]),
            sites[i],
        )
    # the write: seq odd, the entry, generation, seq even
    seq = rg.ld32(a + EPA_SEQ) | 1
    rg.st32(a + EPA_SEQ, seq)
    rg.st32(a + EPA_NENDPOINTS, len(specs))
    rg._mm[a + EPA_SITES : a + EPA_SITES + len(table)] = table
    rg._mm[a + EPA_ENDPOINTS : a + EPA_ENDPOINTS + len(eps)] = eps
    if not same_app:
        rg._mm[a + EPA_NAME : a + EPA_NAME + EP_APP_NAME_MAX] = name.ljust(
            EP_APP_NAME_MAX, b"\0"
        )
        rg.st32(a + EPA_NAME_LEN, len(name))
    rg.st32(a + EPA_GENERATION, rg.ld32(a + EPA_GENERATION) + 1)
    rg.st32(a + EPA_SEQ, seq + 1)
    return idx
