"""The region's header is the ABI: a region of another ABI version, of
the wrong size or with a layout that does not follow from its sizes is
refused at attach, loudly; and the pure-Python layout is the C layout."""

import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from shm_ring import abi
from shm_ring.codec import RingError

ABI_OFF, REGION_SIZE_OFF, SLOTS_OFF_OFF = 8, 16, 72
HEADER_SIZE = 704  # sizeof(mosn_shm_header_t)
# the installed package's copy of the header: what the binding was built on
INCLUDE = os.path.dirname(os.path.abspath(abi.__file__))


def path_of(name):
    return "/dev/shm" + name


def poke(name, off, fmt, value):
    with open(path_of(name), "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def image(name):
    with open(path_of(name), "rb") as f:
        return f.read()


def refused(impl, name):
    """The attach error and the image check error, which must agree."""
    with pytest.raises(RingError) as attach:
        impl.Region.attach(name)
    with pytest.raises(RingError) as check:
        impl.Region.check_bytes(image(name))
    assert str(attach.value) == str(check.value)
    return str(attach.value)


def test_good_region_accepted(impl, make_region, region_name):
    make_region()
    impl.Region.check_bytes(image(region_name))
    impl.Region.attach(region_name).close()


def test_other_abi_version_refused(impl, make_region, region_name):
    make_region()
    poke(region_name, ABI_OFF, "<I", impl.ABI_VERSION + 1)
    why = refused(impl, region_name)
    assert why.startswith(
        "region speaks ring ABI version %d, this build "
        "speaks version %d" % (impl.ABI_VERSION + 1, impl.ABI_VERSION)
    )
    assert "rebuild" in why


@pytest.mark.parametrize("delta", [4096, 1, -4096, -1])
def test_wrong_size_refused(impl, make_region, region_name, delta):
    size = make_region().size
    os.truncate(path_of(region_name), size + delta)
    assert refused(impl, region_name) == (
        "region is %d bytes but its header says %d bytes"
        % (size + delta, size)
    )


def test_header_size_mismatch_refused(impl, make_region, region_name):
    size = make_region().size
    poke(region_name, REGION_SIZE_OFF, "<Q", size + 4096)
    assert refused(impl, region_name) == (
        "region is %d bytes but its header says %d bytes" % (size, size + 4096)
    )


def test_truncated_below_header_refused(impl, make_region, region_name):
    make_region()
    os.truncate(path_of(region_name), 100)
    assert refused(impl, region_name) == (
        "region is 100 bytes, smaller than its header (%d bytes)" % HEADER_SIZE
    )


def test_empty_region_refused(impl, make_region, region_name):
    make_region()
    os.truncate(path_of(region_name), 0)
    with pytest.raises(RingError, match='region ".*" is empty'):
        impl.Region.attach(region_name)


def test_missing_magic_refused(impl, make_region, region_name):
    make_region()
    poke(region_name, 0, "<Q", 0x1234)
    assert refused(impl, region_name) == (
        "region has no ring magic (found 0x1234)"
    )


def test_layout_not_following_sizes_refused(impl, make_region, region_name):
    make_region()
    with open(path_of(region_name), "rb") as f:
        f.seek(SLOTS_OFF_OFF)
        (slots_off,) = struct.unpack("<Q", f.read(8))
    poke(region_name, SLOTS_OFF_OFF, "<Q", slots_off + 4096)
    assert refused(impl, region_name) == (
        "region layout does not match its sizes"
    )


def test_other_endpoint_table_refused(impl, make_region, region_name):
    """A region whose endpoint table is not this build's (other sizes of
    the same ABI version) is refused as loudly as another ABI."""
    make_region()
    poke(region_name, 696, "<I", 8)  # ep_apps
    why = refused(impl, region_name)
    assert why.startswith("region endpoint table (8 apps of 7744 bytes")
    assert "rebuild" in why


def test_bad_sizes_in_header_refused(impl, make_region, region_name):
    make_region()
    poke(region_name, 32, "<I", 3)  # slots
    assert refused(impl, region_name).startswith(
        "slot count 3 is not a power of two"
    )


@pytest.mark.parametrize(
    "sizes",
    [
        dict(nproducers=1, nconsumers=1, slots=2, slot_size=1024),
        dict(nproducers=3, nconsumers=5, slots=64, slot_size=4096),
        dict(nproducers=64, nconsumers=64, slots=16, slot_size=1088),
    ],
)
def test_python_layout_matches_c(cython_impl, python_impl, region_name, sizes):
    """A region the C code lays out reads the same in both, and the
    fallback's layout computation gives the C header's offsets."""
    from shm_ring.fallback import region as fallback

    r = cython_impl.Region.create(region_name, **sizes)
    h = fallback._unpack_header(image(region_name))
    layout = fallback._layout(
        sizes["nproducers"],
        sizes["nconsumers"],
        sizes["slots"],
        sizes["slot_size"],
    )
    assert {k: h[k] for k in layout} == layout
    assert layout["region_size"] == r.size
    py = python_impl.Region.attach(region_name)
    assert (py.nproducers, py.nconsumers, py.slots, py.slot_size, py.size) == (
        r.nproducers,
        r.nconsumers,
        r.slots,
        r.slot_size,
        r.size,
    )
    assert py.stats() == r.stats()
    py.close()
    r.close()


OFFSETS_C = r"""
#include <stdio.h>
#include <stddef.h>
#include "shm_ring.h"
#define F(t, f) printf("\"%s.%s\": %zu,\n", #t, #f, offsetof(t, f))
#define S(t) printf("\"sizeof.%s\": %zu,\n", #t, sizeof(t))
int main(void) {
    printf("{\n");
    S(mosn_shm_header_t); S(mosn_producer_t); S(mosn_consumer_t);
    S(mosn_slot_t); S(mosn_req_t); S(mosn_verdict_t); S(mosn_record_t);
    S(mosn_header_entry_t); S(mosn_endpoint_t); S(mosn_ep_site_t);
    S(mosn_ep_app_t);
    F(mosn_shm_header_t, magic); F(mosn_shm_header_t, abi_version);
    F(mosn_shm_header_t, region_size);
    F(mosn_shm_header_t, supervisor_pid);
    F(mosn_shm_header_t, consumer_epoch); F(mosn_shm_header_t, name);
    F(mosn_shm_header_t, config_path); F(mosn_shm_header_t, slots_off);
    F(mosn_shm_header_t, endpoints_off); F(mosn_shm_header_t, ep_apps);
    F(mosn_shm_header_t, ep_app_size);
    F(mosn_ep_app_t, seq); F(mosn_ep_app_t, generation);
    F(mosn_ep_app_t, nendpoints); F(mosn_ep_app_t, name_len);
    F(mosn_ep_app_t, name); F(mosn_ep_app_t, rr); F(mosn_ep_app_t, sites);
    F(mosn_ep_app_t, endpoints);
    F(mosn_ep_site_t, first); F(mosn_ep_site_t, count);
    F(mosn_ep_site_t, name_len); F(mosn_ep_site_t, name);
    F(mosn_endpoint_t, family); F(mosn_endpoint_t, site);
    F(mosn_endpoint_t, port); F(mosn_endpoint_t, flags);
    F(mosn_endpoint_t, addr);
    printf("\"MOSN_EP_APPS\": %d, \"MOSN_EP_MAX\": %d, "
           "\"MOSN_EP_SITES\": %d, \"MOSN_EP_APP_NAME_MAX\": %d, "
           "\"MOSN_EP_SITE_MAX\": %d,\n", MOSN_EP_APPS, MOSN_EP_MAX,
           MOSN_EP_SITES, MOSN_EP_APP_NAME_MAX, MOSN_EP_SITE_MAX);
    F(mosn_producer_t, owner); F(mosn_producer_t, starttime);
    F(mosn_producer_t, epoch); F(mosn_producer_t, need_wakeup);
    F(mosn_producer_t, in_use); F(mosn_producer_t, submitted);
    F(mosn_producer_t, completed); F(mosn_producer_t, stale);
    F(mosn_producer_t, requeued); F(mosn_producer_t, timeouts);
    F(mosn_producer_t, fallbacks); F(mosn_producer_t, futex_wakes);
    F(mosn_producer_t, doorbells); F(mosn_producer_t, cost_ns);
    F(mosn_producer_t, waiting); F(mosn_producer_t, queued);
    F(mosn_producer_t, queue_full); F(mosn_producer_t, notify_fd);
    F(mosn_producer_t, forged); F(mosn_producer_t, refused);
    F(mosn_consumer_t, state); F(mosn_consumer_t, incarnation);
    F(mosn_consumer_t, pid); F(mosn_consumer_t, sleeping);
    F(mosn_consumer_t, starttime); F(mosn_consumer_t, futex);
    F(mosn_consumer_t, taken); F(mosn_consumer_t, completed);
    F(mosn_consumer_t, batches); F(mosn_consumer_t, sleeps);
    F(mosn_consumer_t, doorbells); F(mosn_consumer_t, errors);
    F(mosn_consumer_t, abandons);
    F(mosn_ring_t, head); F(mosn_ring_t, tail); F(mosn_ring_t, entries);
    F(mosn_slot_t, state); F(mosn_slot_t, request_id);
    F(mosn_slot_t, submit_ns); F(mosn_slot_t, req_len);
    F(mosn_slot_t, verdict_off); F(mosn_slot_t, verdict_len);
    F(mosn_slot_t, abandoned); F(mosn_slot_t, deadline_ns);
    F(mosn_slot_t, data);
    printf("\"end\": 0}\n");
    return 0;
}
"""


def compiled(tmp_path, program):
    """What a C program compiled against the installed shm_ring.h prints,
    as JSON."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "abi.c"
    src.write_text(program)
    subprocess.run(
        [cc, "-I", INCLUDE, "-o", str(tmp_path / "abi"), str(src)], check=True
    )
    return json.loads(
        subprocess.run(
            [str(tmp_path / "abi")], check=True, capture_output=True, text=True
        ).stdout
    )


def test_python_offsets_match_the_header(tmp_path):
    """Every offset the pure-Python side uses, against offsetof() of
    shm_ring.h."""
    f = abi
    c = compiled(tmp_path, OFFSETS_C)
    ours = {
        "sizeof.mosn_shm_header_t": f.HEADER.size,
        "sizeof.mosn_producer_t": f.PRODUCER_SIZE,
        "sizeof.mosn_consumer_t": f.CONSUMER_SIZE,
        "sizeof.mosn_slot_t": f.SLOT_HEADER_SIZE,
        "sizeof.mosn_req_t": f.REQ.size,
        "sizeof.mosn_verdict_t": f.VERDICT.size,
        "sizeof.mosn_record_t": f.RECORD.size,
        "sizeof.mosn_header_entry_t": f.HEADER_ENTRY.size,
        "sizeof.mosn_endpoint_t": f.ENDPOINT.size,
        "sizeof.mosn_ep_site_t": f.EP_SITE_ENTRY.size,
        "sizeof.mosn_ep_app_t": f.EP_APP_SIZE,
        "mosn_shm_header_t.endpoints_off": f.H_ENDPOINTS_OFF,
        "mosn_shm_header_t.ep_apps": f.H_EP_APPS,
        "mosn_shm_header_t.ep_app_size": f.H_EP_APP_SIZE,
        "mosn_ep_app_t.seq": f.EPA_SEQ,
        "mosn_ep_app_t.generation": f.EPA_GENERATION,
        "mosn_ep_app_t.nendpoints": f.EPA_NENDPOINTS,
        "mosn_ep_app_t.name_len": f.EPA_NAME_LEN,
        "mosn_ep_app_t.name": f.EPA_NAME,
        "mosn_ep_app_t.rr": f.EPA_RR,
        "mosn_ep_app_t.sites": f.EPA_SITES,
        "mosn_ep_app_t.endpoints": f.EPA_ENDPOINTS,
        # struct EP_SITE is (first, count, name_len, name)
        "mosn_ep_site_t.first": 0,
        "mosn_ep_site_t.count": 2,
        "mosn_ep_site_t.name_len": 4,
        "mosn_ep_site_t.name": 8,
        # struct ENDPOINT is (family, site, port, flags, addr)
        "mosn_endpoint_t.family": 0,
        "mosn_endpoint_t.site": 1,
        "mosn_endpoint_t.port": 2,
        "mosn_endpoint_t.flags": 4,
        "mosn_endpoint_t.addr": 8,
        "MOSN_EP_APPS": f.EP_APPS,
        "MOSN_EP_MAX": f.EP_MAX,
        "MOSN_EP_SITES": f.EP_SITES,
        "MOSN_EP_APP_NAME_MAX": f.EP_APP_NAME_MAX,
        "MOSN_EP_SITE_MAX": f.EP_SITE_MAX,
        "mosn_shm_header_t.magic": f.H_MAGIC,
        "mosn_shm_header_t.abi_version": f.H_ABI,
        "mosn_shm_header_t.region_size": f.H_REGION_SIZE,
        "mosn_shm_header_t.supervisor_pid": f.H_SUPERVISOR_PID,
        "mosn_shm_header_t.consumer_epoch": f.H_CONSUMER_EPOCH,
        "mosn_shm_header_t.name": f.H_NAME,
        "mosn_shm_header_t.config_path": f.H_CONFIG_PATH,
        "mosn_shm_header_t.slots_off": SLOTS_OFF_OFF,
        "mosn_producer_t.owner": f.P_OWNER,
        "mosn_producer_t.starttime": f.P_STARTTIME,
        "mosn_producer_t.epoch": f.P_EPOCH,
        "mosn_producer_t.need_wakeup": f.P_NEED_WAKEUP,
        "mosn_producer_t.in_use": f.P_IN_USE,
        "mosn_producer_t.submitted": f.P_SUBMITTED,
        "mosn_producer_t.completed": f.P_COMPLETED,
        "mosn_producer_t.stale": f.P_STALE,
        "mosn_producer_t.requeued": f.P_REQUEUED,
        "mosn_producer_t.timeouts": f.P_TIMEOUTS,
        "mosn_producer_t.fallbacks": f.P_FALLBACKS,
        "mosn_producer_t.futex_wakes": f.P_FUTEX_WAKES,
        "mosn_producer_t.doorbells": f.P_DOORBELLS,
        "mosn_producer_t.cost_ns": f.P_COST_NS,
        "mosn_producer_t.waiting": f.P_WAITING,
        "mosn_producer_t.queued": f.P_QUEUED,
        "mosn_producer_t.queue_full": f.P_QUEUE_FULL,
        "mosn_producer_t.notify_fd": f.P_NOTIFY_FD,
        "mosn_producer_t.forged": f.P_FORGED,
        "mosn_producer_t.refused": f.P_REFUSED,
        "mosn_consumer_t.state": f.C_STATE,
        "mosn_consumer_t.incarnation": f.C_INCARNATION,
        "mosn_consumer_t.pid": f.C_PID,
        "mosn_consumer_t.sleeping": f.C_SLEEPING,
        "mosn_consumer_t.starttime": f.C_STARTTIME,
        "mosn_consumer_t.futex": f.C_FUTEX,
        "mosn_consumer_t.taken": f.C_TAKEN,
        "mosn_consumer_t.completed": f.C_COMPLETED,
        "mosn_consumer_t.batches": f.C_BATCHES,
        "mosn_consumer_t.sleeps": f.C_SLEEPS,
        "mosn_consumer_t.doorbells": f.C_DOORBELLS,
        "mosn_consumer_t.errors": f.C_ERRORS,
        "mosn_consumer_t.abandons": f.C_ABANDONS,
        "mosn_ring_t.head": f.R_HEAD,
        "mosn_ring_t.tail": f.R_TAIL,
        "mosn_ring_t.entries": f.R_ENTRIES,
        "mosn_slot_t.state": f.S_STATE,
        "mosn_slot_t.request_id": f.S_REQUEST_ID,
        "mosn_slot_t.submit_ns": f.S_SUBMIT_NS,
        "mosn_slot_t.req_len": f.S_REQ_LEN,
        "mosn_slot_t.verdict_off": f.S_VERDICT_OFF,
        "mosn_slot_t.verdict_len": f.S_VERDICT_LEN,
        "mosn_slot_t.abandoned": f.S_ABANDONED,
        "mosn_slot_t.deadline_ns": f.S_DEADLINE_NS,
        "mosn_slot_t.data": f.S_DATA,
        "end": 0,
    }
    assert c == ours


def header_defines():
    """The object-like #defines of shm_ring.h, without their MOSN_."""
    with open(os.path.join(INCLUDE, "shm_ring.h")) as f:
        text = f.read()
    return re.findall(r"^#define MOSN_(\w+)[ \t]", text, re.M)


def test_every_number_of_the_header_is_the_python_one(tmp_path):
    """abi.py is shm_ring.h for the pure-Python side: each #define of the
    header is there under its name without MOSN_, with the same value;
    a number added to the header or changed in one place fails here."""
    names = header_defines()
    assert "ACTION_CONTINUE" in names and "RING_ABI_VERSION" in names
    lines = []
    for name in names:
        fmt = (
            '"\\"%s\\": \\"%%s\\",\\n"'
            if name.endswith("_SUFFIX")
            else '"\\"%s\\": %%lld,\\n"'
        ) % name
        cast = "" if name.endswith("_SUFFIX") else "(long long) "
        lines.append("    printf(%s, %sMOSN_%s);" % (fmt, cast, name))
    program = (
        '#include <stdio.h>\n#include "shm_ring.h"\n'
        'int main(void) {\n    printf("{\\n");\n%s\n'
        '    printf("\\"end\\": 0}\\n");\n    return 0;\n}\n'
        % "\n".join(lines)
    )
    c = compiled(tmp_path, program)
    c.pop("end")
    missing = sorted(set(c) - set(vars(abi)))
    assert not missing, "shm_ring.h defines these, abi.py does not"
    assert {name: getattr(abi, name) for name in c} == c


def test_the_abi_header_is_the_layout_alone():
    """shm_ring.h holds what both languages share, no function of the C
    core (those are shm_core.h's)."""
    with open(os.path.join(INCLUDE, "shm_ring.h")) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    assert re.findall(r"^[A-Za-z][\w \t*]*\bmosn_\w+\s*\(", text, re.M) == []
    assert "mosn_region_t" not in text
