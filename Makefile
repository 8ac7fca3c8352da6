# The gateway: nginx + ngx_http_mosn_module + the Python worker pool.
#
#   make run         set everything up, then run the example gateway
#   make test        set everything up, then run the whole test suite, and
#                    the integration tests again on a newer nginx
#   make test-newer-nginx  only the latter: nginx 1.26 from Debian 13's
#                    source, built with the module under build/
#   make build-image-debian  the Debian image (docker, or buildah and
#                    debootstrap where no engine runs; docker/README.md)
#   make test-image  only the image tests: that image built and run, the
#                    images' build scripts run on the host
#   make build-l7    build output/ngx_http_mosn_module.so and output/shm_ring.h
#   make bench       the peers benchmark (results in bench/results/)
#   make bench-response  what a sender filter (the response phase) costs,
#                        and one that rewrites the body, beside njs and Lua
#   make bench-concurrency  HTTP/1.1 and HTTP/2 at any concurrency, beside map
#   make bench-async  ext_authz against auth_request and Lua; a Redis limit
#   make fuzz        what nginx reads from shared memory, fuzzed, long
#   make soak        locust against the example gateway (SOAK_TIME=10m)

VENV     ?= /opt/mosn-gateway
PY       := $(VENV)/bin/python
NGINX    ?= /usr/sbin/nginx
APT_PKGS := nginx-core nginx-dev libnginx-mod-http-lua libnginx-mod-http-js \
            libnginx-mod-http-headers-more-filter \
            wrk hyperfine valgrind clang libclang-rt-14-dev curl \
            nghttp2-client redis-server etcd-server etcd-client \
            buildah debootstrap \
            python3 python3-venv python3-dev gcc make procps
FUZZ_RUNS ?= 10000000
SOAK_TIME ?= 10m

.PHONY: setup apt venv build-l7 python python-extras run stop test \
        test-newer-nginx test-fast fuzz fuzz-short bench bench-idle \
        bench-response bench-concurrency bench-async bench-scale soak clean

# Everything below builds only what changed: a stamp per virtual
# environment stands for "this tree's package is installed there", the
# module is rebuilt when its sources change, and both builds are
# incremental themselves (setuptools' build/ and nginx's objs/ are kept).
STAMP      := build/stamp$(subst /,-,$(VENV))
MODULE     := output/ngx_http_mosn_module.so
# the ring's C core (shm_*.c; _ring.c and codec.c are Cython's output)
RING_SRC   := $(wildcard shm_ring/shm_*.c shm_ring/shm_*.h)
MODULE_SRC := $(wildcard nginx_module/*.c nginx_module/*.h) \
              nginx_module/config nginx_module/build.sh \
              $(RING_SRC)
PY_SRC     := setup.py pyproject.toml \
              $(wildcard pyworker/*.py pyworker/*.pxd pyworker/*/*.py \
                         shm_ring/*.py shm_ring/*/*.py shm_ring/*.pyx \
                         shm_ring/*.pxd) \
              $(RING_SRC)

setup: apt python-extras build-l7

apt:
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        -o DPkg::Lock::Timeout=600 $(APT_PKGS); \
	fi

$(PY):
	/usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY) python

# pyproject.toml's build requirements, in the venv: builds reuse build/
$(STAMP).build-deps: pyproject.toml | $(PY)
	@mkdir -p build
	$(PY) -m pip install -q $$($(PY) -c 'import tomllib; print(*tomllib.load( \
	    open("pyproject.toml", "rb"))["build-system"]["requires"])')
	@touch $@

# the package is installed, not linked: the Python workers run as the
# nginx workers' user and must not need to read this tree
$(STAMP).python: $(STAMP).build-deps $(PY_SRC) | $(PY)
	$(PY) -m pip install -q --no-build-isolation ".[fast]"
	@touch $@

# what the tests and benchmarks need besides (make test, make bench)
$(STAMP).extras: $(STAMP).python setup.py
	$(PY) -m pip install -q --no-build-isolation ".[test,bench,fast]"
	@touch $@

python: $(STAMP).python

python-extras: $(STAMP).extras

build-l7: $(MODULE)

$(MODULE): $(MODULE_SRC)
	nginx_module/build.sh
	@touch $@

logs:
	mkdir -p logs

# mosn_python in conf/nginx.conf names the default venv; another one gets
# a copy of the example that names it instead
RUN_CONF := $(if $(filter /opt/mosn-gateway,$(VENV)),conf/nginx.conf,build/run$(subst /,-,$(VENV)).conf)

build/run%.conf: conf/nginx.conf
	@mkdir -p build
	sed -e 's#^\( *mosn_python \+\)[^;]*;#\1$(PY);#' \
	    -e 's#^\( *mosn_config \+\)\([^/][^;]*\);#\1$(CURDIR)/conf/\2;#' \
	    conf/nginx.conf > $@

run: apt $(STAMP).python $(MODULE) $(RUN_CONF) logs
	@echo "gateway on http://127.0.0.1:2990 (Ctrl-C stops it)"
	$(NGINX) -p . -c $(RUN_CONF) -g "daemon off;"

stop:
	-$(NGINX) -p . -c $(RUN_CONF) -s quit

# the suite that the newer nginx (its source from Debian's mirror, kept
# under build/) runs with the module built for it
NEWER_SUITE ?= trixie
TEST_NEWER   = built=$$(nginx_module/build-nginx.sh $(NEWER_SUITE)) && \
               set -- $$built && NGINX=$$1 MOSN_MODULE=$$2 $(VENV)/bin/pytest tests/integration

test: apt $(STAMP).extras $(MODULE)
	$(VENV)/bin/pytest tests
	$(TEST_NEWER)

test-newer-nginx: setup
	$(TEST_NEWER)

test-fast:
	$(VENV)/bin/pytest tests -m "not slow"

fuzz: setup
	PYTHON=$(PY) nice fuzz/run.sh $(FUZZ_RUNS)

fuzz-short: setup
	PYTHON=$(PY) fuzz/run.sh 200000

bench: setup
	$(PY) -m bench.peers_bench

bench-idle: setup
	$(PY) -m bench.idle_bench

bench-response: setup
	$(PY) -m bench.response_bench
	$(PY) -m bench.response_body_bench

bench-async: setup
	$(PY) -m bench.async_bench

bench-concurrency: setup
	$(PY) -m bench.concurrency_bench

bench-scale: setup
	$(PY) -m bench.scale_bench

soak: setup
	$(PY) -m bench.soak_bench --time $(SOAK_TIME)

# every file a build, a run or a test writes into the tree
# (tests/unit/test_clean.py checks it against the files git ignores)
clean:
	rm -rf build dist output *.egg-info .pytest_cache .hypothesis \
	       .ruff_cache shm_ring/_ring.c shm_ring/codec.c shm_ring/*.so \
	       pyworker/*.so pyworker/*.c pyworker/*/*.c pyworker/*/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	[ ! -d logs ] || find logs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

# Images: docker/build-image.py builds with Docker where an engine answers
# and with buildah otherwise, making the Debian base with debootstrap when
# no registry has it; pip in the build gets this host's index settings and
# trust store as build secrets (docker/README.md).
IMAGE             ?= mosn-gateway
OPENRESTY_VERSION ?= 1.27.1.2
# the Python whose pip settings the build uses: the venv's once it exists
IMAGE_PY          = $(if $(wildcard $(PY)),$(PY),python3)

.PHONY: build-image build-moe-image build-image-debian test-image

# the image tests alone (make test runs them too): the Debian image built
# and run, the images' build scripts run on the host
test-image: apt $(STAMP).extras $(MODULE)
	$(VENV)/bin/pytest tests/docker

build-image: apt
	$(IMAGE_PY) docker/build-image.py docker/Dockerfile.openresty \
	    $(IMAGE):openresty --build-arg OPENRESTY_VERSION=$(OPENRESTY_VERSION)

# MOE's name for the same image
build-moe-image: build-image

build-image-debian: apt
	$(IMAGE_PY) docker/build-image.py docker/Dockerfile.debian $(IMAGE):debian
