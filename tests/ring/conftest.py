"""Fixtures of the ring tests: the implementation under test (the Cython
binding or the pure-Python fallback) and regions that do not outlive a
test."""

import os
import shutil
import uuid

import pytest

from ringload import IMPLS, load_impl


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    """The module under test: shm_ring._ring or shm_ring.fallback."""
    return load_impl(request.param)


@pytest.fixture
def cython_impl():
    return load_impl("cython")


@pytest.fixture
def python_impl():
    return load_impl("python")


@pytest.fixture
def region_name():
    """A name no other test uses; its region is unlinked afterwards."""
    name = "/mosn-ring-test-%d-%s" % (os.getpid(), uuid.uuid4().hex[:10])
    yield name
    unlink_region(name)


def unlink_region(name):
    """The region's name and its wake-up directory, if left."""
    try:
        os.unlink("/dev/shm" + name)
    except FileNotFoundError:
        pass
    shutil.rmtree("/dev/shm" + name + ".wake", ignore_errors=True)


@pytest.fixture
def make_region(impl, region_name):
    """make_region(**sizes): a region created by `impl`, closed after."""
    made = []

    def make(nproducers=2, nconsumers=2, slots=8, slot_size=4096):
        r = impl.Region.create(
            region_name,
            nproducers=nproducers,
            nconsumers=nconsumers,
            slots=slots,
            slot_size=slot_size,
        )
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
