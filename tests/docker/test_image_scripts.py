"""The images' build steps, on the host.

No Docker engine is needed: each Dockerfile is linted (its COPY sources
exist and pass its .dockerignore, the scripts it runs exist, are executable
and are copied in before they run), and every script it runs is run here
the way the image runs it: nginx_module/build.sh against Debian's nginx
sources, docker/build-module-openresty.sh against an OpenResty-shaped tree,
docker/prepare-prefix.sh, and the image's command on what it lays out,
stopped with the image's STOPSIGNAL, with docker/healthcheck.py probing it.
Builds run in a copy of the tree, so output/ is never touched.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from example_ports import taken_ports, the_example_ports
from gateway import NGINX, wait_for  # $NGINX, or Debian's

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
DOCKER = os.path.join(ROOT, "docker")
NGINX_SRC = "/usr/share/nginx/src"  # Debian's nginx-dev
DOCKERFILES = ("Dockerfile.debian", "Dockerfile.openresty")
SCRIPTS = (
    "docker/build-module-openresty.sh",
    "docker/prepare-prefix.sh",
    "docker/healthcheck.py",
    "docker/build-image.py",
    "docker/debian-base.sh",
    "nginx_module/build.sh",
)
REGION = "mosn_example"


# --- Dockerfile parsing ------------------------------------------------------


def instructions(path):
    """[(INSTRUCTION, arguments)] with continuation lines joined."""
    out, pending = [], ""
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not pending and (
                not line.strip() or line.lstrip().startswith("#")
            ):
                continue
            if line.lstrip().startswith("#"):  # comment inside a RUN
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = pending + line
            pending = ""
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return out


def stages(path):
    """[{"name", "base", "steps": [(INSTRUCTION, arguments)]}]."""
    result = []
    for word, rest in instructions(path):
        if word == "FROM":
            parts = rest.split()
            name = (
                parts[2]
                if len(parts) == 3 and parts[1].upper() == "AS"
                else None
            )
            result.append({"name": name, "base": parts[0], "steps": []})
        elif result:
            result[-1]["steps"].append((word, rest))
    return result


def copy_args(rest):
    """(options, sources, destination) of a COPY instruction."""
    if rest.startswith("["):
        words = json.loads(rest)
    else:
        words = shlex.split(rest)
    options = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return options, paths[:-1], paths[-1]


def ignore_patterns(path):
    patterns = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    negate = line.startswith("!")
                    pattern = os.path.normpath(line.lstrip("!"))
                    patterns.append((negate, pattern_regex(pattern)))
    return patterns


def pattern_regex(pattern):
    """A .dockerignore pattern as a regex: * and ? stop at /, ** does not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(patterns, path):
    """Whether the build context leaves path out (the last match decides;
    a pattern that matches a parent directory matches its contents)."""
    parts = os.path.normpath(path).split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            result = not negate
    return result


def files_under(path):
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]


# --- lint --------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copy_sources_exist_and_reach_the_context(name):
    path = os.path.join(DOCKER, name)
    patterns = ignore_patterns(path + ".dockerignore")
    assert patterns, (
        f"{name}.dockerignore: none (host build output would enter the image)"
    )
    seen = set()
    for stage in stages(path):
        for word, rest in stage["steps"]:
            if word in ("ADD",):
                pytest.fail(f"{name}: ADD {rest} (COPY or a checked download)")
            if word != "COPY":
                continue
            options, sources, _ = copy_args(rest)
            if any(o.startswith("--from=") for o in options):
                continue
            for source in sources:
                seen.add(source)
                full = os.path.join(ROOT, source)
                assert os.path.exists(full), f"{name}: COPY {source}: missing"
                assert not ignored(patterns, source), (
                    f"{name}: COPY {source} is left out by .dockerignore"
                )
    assert seen
    # what the host builds must stay out of the image
    for built in (
        "shm_ring/_ring.c",
        "shm_ring/codec.c",
        "pyworker/dispatch.c",
        "output",
        "build",
        "shm_ring/_ring.cpython-311-x86_64-linux-gnu.so",
        "nginx_module/x.o",
        "pyworker/__pycache__/a.pyc",
        "pyworker/chain.c",
        "pyworker/filters/metadata.c",
    ):
        assert ignored(patterns, built), f"{name}: {built} reaches the image"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_scripts_that_exist_and_are_copied_first(name):
    path = os.path.join(DOCKER, name)
    all_stages = stages(path)
    names = [s["name"] for s in all_stages]
    script = re.compile(r"\b((?:docker|nginx_module)/[\w.-]+\.(?:sh|py))\b")
    for index, stage in enumerate(all_stages):
        copied = []  # repository paths copied into this stage so far
        for word, rest in stage["steps"]:
            if word == "COPY":
                options, sources, _ = copy_args(rest)
                origin = [
                    o.split("=", 1)[1]
                    for o in options
                    if o.startswith("--from=")
                ]
                if origin:
                    assert origin[0] in names[:index], (
                        f"{name}: COPY --from={origin[0]}: no earlier stage"
                    )
                else:
                    copied += [s.rstrip("/") for s in sources]
            for used in script.findall(rest):
                full = os.path.join(ROOT, used)
                assert os.path.isfile(full), f"{name}: {used} missing"
                assert os.access(full, os.X_OK), (
                    f"{name}: {used} is not executable"
                )
                if word in ("RUN", "CMD", "ENTRYPOINT"):
                    assert any(
                        used == c or used.startswith(c + "/") for c in copied
                    ), f"{name}: {word} uses {used} before copying it in"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_the_example_as_documented(name):
    path = os.path.join(DOCKER, name)
    text = open(path).read()
    steps = instructions(path)
    # FROM arguments are declared, with defaults, before the first FROM
    first_from = next(i for i, (w, _) in enumerate(steps) if w == "FROM")
    declared = {
        rest.split("=", 1)[0]
        for w, rest in steps[:first_from]
        if w == "ARG" and "=" in rest
    }
    for word, rest in steps:
        if word == "FROM":
            for arg in re.findall(r"\$\{?(\w+)", rest):
                assert arg in declared, f"{name}: FROM uses ${arg} undeclared"
    final = stages(path)[-1]["steps"]
    words = dict(final)
    assert words.get("EXPOSE") == "2990"
    assert words.get("STOPSIGNAL") == "SIGQUIT"
    assert "mosn-healthcheck" in words.get("HEALTHCHECK", "")
    cmd = json.loads(words["CMD"])
    assert cmd[1:] == [
        "-p",
        "/srv/gateway/",
        "-c",
        "conf/nginx.conf",
        "-g",
        "daemon off;",
    ]
    # non-root workers, console logs, the module checked at build time
    runs = "\n".join(" ".join(rest.split()) for w, rest in steps if w == "RUN")
    assert re.search(
        r"prepare-prefix\.sh /srv/gateway .*--user www-data "
        r"--console-logs",
        runs,
    )
    assert re.search(r"-p /srv/gateway/ -c conf/nginx.conf -t$", runs, re.M)
    assert "USER root" not in text
    if name == "Dockerfile.debian":
        assert all(s["base"].startswith("debian:") for s in stages(path))
        assert "bookworm" in text and "nginx-dev" in text
        assert re.search(r"^nginx_module/build.sh$", runs, re.M)
    else:
        assert all(
            s["base"].startswith("openresty/openresty:")
            and s["base"].endswith("-bookworm")
            for s in stages(path)
        )
        assert re.search(
            r"build-module-openresty\.sh \S*OPENRESTY_VERSION"
            r"\S* /usr/local/openresty/nginx/sbin/nginx",
            runs,
        )


def test_scripts_parse():
    for rel in SCRIPTS:
        path = os.path.join(ROOT, rel)
        assert os.access(path, os.X_OK), f"{rel} is not executable"
        if rel.endswith(".sh"):
            proc = subprocess.run(
                ["sh", "-n", path], capture_output=True, text=True
            )
            assert proc.returncode == 0, f"{rel}: {proc.stderr}"
        else:
            compile(open(path).read(), path, "exec")  # no __pycache__
    if shutil.which("shellcheck"):
        shells = [os.path.join(ROOT, r) for r in SCRIPTS if r.endswith(".sh")]
        proc = subprocess.run(
            ["shellcheck", *shells], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout


def test_makefile_image_targets():
    """Each target builds its Dockerfile through docker/build-image.py
    (Docker or buildah, the same Dockerfile), from the repository root."""
    proc = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            ROOT,
            "build-image",
            "build-moe-image",
            "build-image-debian",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.replace("\\\n", " ").splitlines()
    builds = [
        " ".join(c.split()) for c in commands if "docker/build-image.py" in c
    ]
    assert len(builds) == 2, builds
    assert any(
        b.endswith(
            "docker/build-image.py docker/Dockerfile.openresty "
            "mosn-gateway:openresty --build-arg "
            "OPENRESTY_VERSION=1.27.1.2"
        )
        for b in builds
    )
    assert any(
        b.endswith(
            "docker/build-image.py docker/Dockerfile.debian "
            "mosn-gateway:debian"
        )
        for b in builds
    )


# --- the build scripts, run on the host --------------------------------------


def tree_copy(tmp):
    """The parts of the repository the module build reads, in tmp."""
    for part in ("nginx_module", "shm_ring", "docker", "conf"):
        shutil.copytree(
            os.path.join(ROOT, part),
            os.path.join(tmp, part),
            ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.o", "tests"
            ),
        )
    return tmp


def run(argv, timeout=600, **kwargs):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, **kwargs
    )


@pytest.fixture(scope="module")
def debian_module(tmp_path_factory):
    """nginx_module/build.sh, as the Debian image and `make build-l7` run
    it, on a copy of the tree: the module for Debian's nginx."""
    if not os.path.exists(os.path.join(NGINX_SRC, "configure")):
        pytest.skip("no nginx-dev sources (make setup installs them)")
    tree = tree_copy(str(tmp_path_factory.mktemp("debian-build")))
    proc = run([os.path.join(tree, "nginx_module", "build.sh")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    module = os.path.join(tree, "output", "ngx_http_mosn_module.so")
    assert os.path.exists(module)
    assert os.path.exists(os.path.join(tree, "output", "shm_ring.h"))
    return tree, module


def fake_openresty(tmp, nginx_ver=None, src=NGINX_SRC):
    """An OpenResty-shaped source tree: nginx sources (Debian's less its
    configure flags, or another release's, unbuilt) as bundle/nginx-X.Y.Z,
    optionally renamed in nginx.h the way OpenResty renames its nginx."""
    version = re.search(
        r'NGINX_VERSION\s+"([^"]+)"',
        open(os.path.join(src, "src", "core", "nginx.h")).read(),
    ).group(1)
    bundle = os.path.join(tmp, "bundle", f"nginx-{version}")
    shutil.copytree(
        src,
        bundle,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            "conf_flags", "debian", "objs", "Makefile"
        ),
    )
    if nginx_ver:
        header = os.path.join(bundle, "src", "core", "nginx.h")
        text = re.sub(
            r"#define NGINX_VER .*",
            f"#define NGINX_VER          {nginx_ver}",
            open(header).read(),
        )
        with open(header, "w") as f:
            f.write(text)
    return tmp, version


def loads_module(tree, tmp_path, nginx=NGINX):
    """prepare-prefix.sh lays out a prefix with the module tree built, and
    nginx -t takes it."""
    module = os.path.join(tree, "output", "ngx_http_mosn_module.so")
    prefix = str(tmp_path / "gw")
    proc = run(
        [
            os.path.join(tree, "docker", "prepare-prefix.sh"),
            prefix,
            "--module",
            module,
        ]
    )
    assert proc.returncode == 0, proc.stderr
    nginx_t(prefix, nginx)


def openresty_build(tmp_path, binary, source=NGINX_SRC):
    """build-module-openresty.sh, in a copy of the tree, on a bundle of
    source's nginx against binary: it names the bundle's nginx and
    configures it with --with-compat alone (no conf_flags in a bundle).
    (tree, bundle, version, nginx's ngx_auto_config.h)."""
    tree = tree_copy(str(tmp_path / "tree"))
    src, version = fake_openresty(str(tmp_path / "openresty"), src=source)
    script = os.path.join(tree, "docker", "build-module-openresty.sh")
    proc = run([script, src, binary])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        f"against nginx/{version} in {src}/bundle/nginx-{version}"
        in proc.stdout
    )
    config = open(
        os.path.join(tree, "build", "nginx", "objs", "ngx_auto_config.h")
    ).read()
    configure = re.search(r'NGX_CONFIGURE "([^"]*)"', config).group(1)
    assert configure.split()[0] == "--with-compat", configure
    return tree, src, version, config


@pytest.mark.slow
def test_debian_build_script_makes_a_module_nginx_loads(
    debian_module, tmp_path
):
    tree, _ = debian_module
    loads_module(tree, tmp_path)


@pytest.mark.slow
def test_openresty_build_script_against_a_bundled_nginx(tmp_path):
    """The OpenResty path on the host: the module built against a bundle's
    nginx with nothing but --with-compat loads into a distribution nginx
    built --with-compat with many more flags, as it must into OpenResty."""
    if not os.path.exists(os.path.join(NGINX_SRC, "configure")):
        pytest.skip("no nginx-dev sources (make setup installs them)")
    tree, _, _, config = openresty_build(tmp_path, NGINX)
    assert "#define NGX_COMPAT  1" in config
    loads_module(tree, tmp_path)


@pytest.fixture(scope="module")
def newer_nginx():
    """nginx 1.26 (Debian 13's source, fetched and built under build/ by
    the scripts `make test` runs it with) and its unbuilt source tree."""
    built = run(
        [os.path.join(ROOT, "nginx_module", "build-nginx.sh")], timeout=1200
    )
    assert built.returncode == 0, built.stdout + built.stderr
    binary = built.stdout.split()[-2]
    fetched = run([os.path.join(ROOT, "nginx_module", "fetch-nginx.sh")])
    assert fetched.returncode == 0, fetched.stderr
    return binary, fetched.stdout.split()[-1]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a first run builds nginx 1.26
def test_openresty_build_script_against_nginx_1_26(newer_nginx, tmp_path):
    """The OpenResty path against the newer nginx, nearer OpenResty
    1.27's core than Debian's 1.22: the script checks the 1.26 binary's
    version and --with-compat, builds the module against a bundle of the
    1.26 sources with nothing but --with-compat, and that nginx loads it."""
    binary, source = newer_nginx
    tree, src, version, _ = openresty_build(tmp_path, binary, source)
    assert version.startswith("1.26.")
    loads_module(tree, tmp_path, binary)
    # and Debian's 1.22 refuses it: the script's version check is what
    # keeps such a module from reaching a binary it does not fit
    script = os.path.join(tree, "docker", "build-module-openresty.sh")
    proc = run([script, src, NGINX])
    assert proc.returncode == 1
    assert (
        f"but the sources in {src}/bundle/nginx-{version} are "
        f"nginx/{version}" in proc.stderr
    )


def test_openresty_build_script_refuses_a_mismatched_binary(tmp_path):
    if not os.path.exists(os.path.join(NGINX_SRC, "configure")):
        pytest.skip("no nginx-dev sources (make setup installs them)")
    script = os.path.join(ROOT, "docker", "build-module-openresty.sh")
    # sources that call themselves openresty/X.Y.Z.9, Debian's binary
    src, version = fake_openresty(
        str(tmp_path / "or"), nginx_ver='"openresty/" NGINX_VERSION ".9"'
    )
    proc = run([script, src, NGINX])
    assert proc.returncode == 1
    assert f"is nginx/{version} but the sources" in proc.stderr
    assert f"openresty/{version}.9" in proc.stderr
    # a binary of the right version built without --with-compat
    fake = tmp_path / "openresty-bin"
    fake.write_text(
        "#!/bin/sh\necho 'nginx version: openresty/%s.9' >&2\n"
        "echo 'configure arguments: --prefix=/x' >&2\n" % version
    )
    fake.chmod(0o755)
    proc = run([script, src, str(fake)])
    assert proc.returncode == 1
    assert "not built --with-compat" in proc.stderr
    # no nginx tree at all
    proc = run([script, str(tmp_path / "nothing")])
    assert proc.returncode == 1 and "no nginx sources" in proc.stderr
    assert not os.path.exists(os.path.join(ROOT, "build", "nginx", "bundle"))


# --- the prefix the images run -----------------------------------------------


def nginx_t(prefix, nginx=NGINX):
    proc = run(
        [nginx, "-p", prefix + "/", "-c", "conf/nginx.conf", "-t"], cwd=prefix
    )
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


def test_prepare_prefix_lays_out_the_image_config(tmp_path):
    module = tmp_path / "module.so"
    module.write_bytes(b"not loaded here")
    prefix = tmp_path / "srv"
    proc = run(
        [
            os.path.join(DOCKER, "prepare-prefix.sh"),
            str(prefix),
            "--module",
            str(module),
            "--user",
            "www-data",
            "--console-logs",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    conf = (prefix / "conf" / "nginx.conf").read_text()
    # the gateway on every interface, the demo sites still on loopback
    assert re.search(r"^\s*listen\s+2990;$", conf, re.M)
    assert len(re.findall(r"listen\s+127\.0\.0\.1:345[0-3];", conf)) == 4
    assert re.search(r"^user\s+www-data www-data;$", conf, re.M)
    assert "load_module output/ngx_http_mosn_module.so;" in conf
    assert (
        prefix / "output" / "ngx_http_mosn_module.so"
    ).read_bytes() == b"not loaded here"
    assert os.readlink(prefix / "logs" / "error.log") == "/dev/stderr"
    assert os.readlink(prefix / "logs" / "access.log") == "/dev/stdout"
    assert (prefix / "conf" / "mosn.json").read_text() == open(
        os.path.join(ROOT, "conf", "mosn.json")
    ).read()
    # refusals
    bad = run(
        [
            os.path.join(DOCKER, "prepare-prefix.sh"),
            str(prefix),
            "--module",
            str(tmp_path / "none.so"),
        ]
    )
    assert bad.returncode == 1 and "no module" in bad.stderr
    bad = run(
        [
            os.path.join(DOCKER, "prepare-prefix.sh"),
            str(prefix),
            "--module",
            str(module),
            "--user",
            "no-such-user-here",
        ]
    )
    assert bad.returncode == 1 and "no user" in bad.stderr


def uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None


def processes_with(needle):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = (
                        f.read().replace(b"\0", b" ").decode(errors="replace")
                    )
                with open(f"/proc/{entry}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in cmd and state != "Z":
                found.append(int(entry))
    return found


@pytest.mark.slow
def test_the_image_command_on_a_prepared_prefix(debian_module, tmp_path):
    """What the container does: the prefix prepare-prefix.sh lays out, run
    by the image's CMD in the foreground, probed by its HEALTHCHECK, stopped
    by its STOPSIGNAL. Loopback only: --listen 127.0.0.1."""
    if os.geteuid() != 0:
        pytest.skip("the image's master runs as root (user www-data)")
    with the_example_ports():
        run_the_image_command(debian_module[1], tmp_path)
    # nothing outlives the test: no process of the prefix or the region,
    # no port of the example bound, no region
    assert not processes_with(str(tmp_path / "srv") + "/")
    assert not processes_with(f"/{REGION} ")
    assert not taken_ports(), taken_ports()
    assert not [
        n
        for n in os.listdir("/dev/shm")
        if n == REGION or n.startswith(REGION + ".")
    ]


def run_the_image_command(module, tmp_path):
    prefix = str(tmp_path / "srv")
    os.chmod(str(tmp_path), 0o755)  # the workers (www-data) read conf/
    proc = run(
        [
            os.path.join(DOCKER, "prepare-prefix.sh"),
            prefix,
            "--module",
            module,
            "--listen",
            "127.0.0.1",
            "--user",
            "www-data",
            "--console-logs",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    # the Python of this test run, where the image has /opt/mosn-gateway's
    conf = os.path.join(prefix, "conf", "nginx.conf")
    text = open(conf).read()
    assert "mosn_python    /opt/mosn-gateway/bin/python;" in text
    with open(conf, "w") as f:
        f.write(text.replace("/opt/mosn-gateway/bin/python", sys.executable))
    health = os.path.join(DOCKER, "healthcheck.py")
    console = open(tmp_path / "console.log", "w+")
    # its own process group: a failed test can take all of it down
    master = subprocess.Popen(
        [
            NGINX,
            "-p",
            prefix + "/",
            "-c",
            "conf/nginx.conf",
            "-g",
            "daemon off;",
        ],
        cwd=prefix,
        stdout=console,
        stderr=console,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while run([sys.executable, health]).returncode != 0:
            logged = open(tmp_path / "console.log").read()
            assert master.poll() is None, logged
            assert time.monotonic() < deadline, (
                "never healthy:\n"
                + (
                    "\n".join(
                        line
                        for line in logged.splitlines()
                        if "/echo" not in line
                    )[-3000:]
                )
            )
            time.sleep(0.2)
        request = urllib.request.Request(
            "http://127.0.0.1:2990/", headers={"uid": "200"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.read() == b"site s2 from 3452"

        # non-root workers, nginx's and Python's (the Python supervisor
        # keeps the master's rights to read the config and spawn them; a
        # Python worker reads its config and filters' code with them too,
        # then drops them before it serves: one just started may not have
        # yet)
        www = int(run(["id", "-u", "www-data"]).stdout)

        def users():
            workers = [
                p
                for p in processes_with("nginx: worker process")
                if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]
                == str(master.pid)
            ]
            python = processes_with(f"pyworker worker --shm /{REGION}")
            return (
                len(workers),
                len(python),
                {uid_of(p) for p in workers + python},
            )

        wait_for(lambda: users() == (2, 2, {www}), 10, step=0.1)
        assert users() == (2, 2, {www})

        # the STOPSIGNAL: a graceful quit that leaves nothing behind
        master.send_signal(signal.SIGQUIT)
        assert master.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while processes_with(prefix + "/") or processes_with(f"/{REGION} "):
            assert time.monotonic() < deadline, "processes left after quit"
            time.sleep(0.1)
        assert run([sys.executable, health]).returncode == 1
        # the logs went to the console, as a container's log driver wants
        console.seek(0)
        logged = console.read()
        assert "start worker process" in logged
        assert "GET / HTTP/1.1" in logged  # access.log -> stdout
    finally:
        if master.poll() is None:
            master.send_signal(signal.SIGQUIT)
            try:
                master.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # workers outlive a killed master: its group goes, and the Python
        # pool, which has a session of its own, goes by its command line
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(master.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            left = processes_with(prefix + "/") + processes_with(f"/{REGION} ")
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        master.wait()
        console.close()
