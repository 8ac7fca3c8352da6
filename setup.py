"""Builds the ring's Cython binding (with its C core) and installs the
Python worker pool and its `pyworker` command."""

import glob
import re

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # a build without Cython installs the pure fallback
    cythonize = None

C_FLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"]

# the one version string is pyworker.__version__ (read, not imported: the
# package needs its own extensions built to import)
with open("pyworker/__init__.py") as f:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', f.read(), re.M).group(1)

extensions = [
    Extension(
        "shm_ring._ring",
        # the C core: every shm_*.c (_ring.c and codec.c are Cython's)
        sources=["shm_ring/_ring.pyx", *sorted(glob.glob("shm_ring/shm_*.c"))],
        include_dirs=["shm_ring"],
        depends=[
            "shm_ring/shm_ring.h",
            "shm_ring/shm_core.h",
            "shm_ring/shm_ring.pxd",
            "shm_ring/codec.pxd",
        ],
        extra_compile_args=C_FLAGS,
    ),
] + [
    # the per-request path, plain Python compiled for speed; the .py files
    # stay the source, and serve as they are where nothing was compiled
    Extension(
        name.replace("/", "."),
        sources=[name + ".py"],
        extra_compile_args=C_FLAGS,
    )
    for name in (
        "shm_ring/codec",
        "pyworker/dispatch",
        "pyworker/inflight",
        "pyworker/deadlines",
        "pyworker/httpclient",
        "pyworker/filters/ext_authz",
        "pyworker/chain",
        "pyworker/metrics",
        "pyworker/headers",
        "pyworker/verdict",
        "pyworker/api",
        "pyworker/filters/metadata",
        "pyworker/drivers/unit",
    )
]

setup(
    name="mosn-nginx-gateway",
    version=VERSION,
    description="MOSN-style Python stream filters for nginx over a "
    "shared-memory ring",
    python_requires=">=3.11",
    packages=[
        "shm_ring",
        "shm_ring.fallback",
        "pyworker",
        "pyworker.filters",
        "pyworker.drivers",
        "pyworker.discovery",
    ],
    # the ring's C sources (what nginx compiles too), not Cython's output
    package_data={
        "shm_ring": [
            "shm_ring.h",
            "shm_core.h",
            "shm_ring.pxd",
            "codec.pxd",
            "shm_*.c",
            "_ring.pyx",
        ]
    },
    ext_modules=cythonize(extensions, language_level=3) if cythonize else [],
    # what runs: the ring needs nothing but its own extension (README,
    # "Dependencies": why neither msgpack nor posix-ipc is one)
    install_requires=[
        "prometheus-client>=0.17,<1",
        # service discovery and filter config from etcd and xDS
        # (pyworker.discovery); imported only by the discovery process
        "hpack>=4,<5",
        "protobuf>=4.25",
        "grpcio>=1.60,<2",
        "xds-protos>=1.60,<2",
        # the ext_authz filter's HTTP parser, the ratelimit filter's Redis
        # reply parser
        "httptools>=0.6,<1",
        "hiredis>=2,<4",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "locust>=2.20",
            "h2>=4",
            "aiohttp>=3.9",
            "atheris>=2.3",
            "ruff>=0.5",
        ],
        # redis: the rate limit bench's comparison with redis-py's client;
        # msgpack: bench/codec_bench.py, the flat layout against it
        "bench": [
            "aiohttp>=3.9",
            "uvloop>=0.19",
            "matplotlib>=3.7",
            "redis>=5.0,<9",
            "msgpack>=1.0,<2",
        ],
        # a faster event loop, used where installed
        "fast": ["uvloop>=0.19"],
    },
    entry_points={
        "console_scripts": ["pyworker = pyworker.__main__:main"],
        "pytest11": ["pyworker = pyworker.testing"],
        # the built-ins are found as third-party filters and drivers are
        # (pyworker.registry): each module registers what it defines
        "pyworker.filters": [
            "echo = pyworker.filters.echo",
            "metadata = pyworker.filters.metadata",
            "ext_authz = pyworker.filters.ext_authz",
            "ratelimit = pyworker.filters.ratelimit",
        ],
        "pyworker.drivers": [
            "unit = pyworker.drivers.unit",
            "env = pyworker.drivers.env",
        ],
    },
)
