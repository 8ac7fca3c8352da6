"""docker/build-image.py without building: which engine it picks, what it
asks of it, the bases it reads from a Dockerfile, and the pip settings it
passes as build secrets. The engines are stand-ins on PATH that record how
they were called; test_image_debian.py builds for real."""

import importlib.util
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
SCRIPT = os.path.join(ROOT, "docker", "build-image.py")


def load():
    spec = importlib.util.spec_from_file_location("build_image", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_image = load()


def stand_in(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def engines(tmp_path):
    """A PATH with stand-in docker and buildah that log their calls (and
    a copy of the secrets they were handed) to tmp_path/calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    record = f"""echo "$(basename "$0") $*" >>{calls}
for a in "$@"; do
    case $a in --secret=id=*,src=*)
        src=${{a#*,src=}}; cp "$src" {tmp_path}/seen-$(basename "$src") ;;
    esac
done
"""
    stand_in(
        bin_dir,
        "docker",
        record
        + """
[ "$1" = info ] && exit ${DOCKER_INFO_STATUS:-0}
exit 0
""",
    )
    stand_in(bin_dir, "buildah", record + "exit 0\n")
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    return env, calls


def build(env, *args):
    return subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "docker/Dockerfile.debian",
            "x:debian",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_docker_where_an_engine_answers(engines, tmp_path):
    env, calls = engines
    env["PIP_INDEX_URL"] = "https://mirror.example/simple"
    proc = build(env)
    assert proc.returncode == 0, proc.stderr
    log = calls.read_text().splitlines()
    assert log[0] == "docker info"
    builds = [c for c in log if c.startswith("docker build")]
    assert len(builds) == 1 and not any(c.startswith("buildah") for c in log)
    words = builds[0].split()
    assert words[-3:] == ["-t", "x:debian", "."]
    assert words[words.index("-f") + 1] == "docker/Dockerfile.debian"
    assert "--secret=id=pip.conf,src=" in builds[0]
    assert "--secret=id=pip-cert.pem,src=" in builds[0]
    conf = (tmp_path / "seen-pip.conf").read_text()
    assert "index-url = https://mirror.example/simple" in conf
    # the secrets live only as long as the build
    for word in words:
        if word.startswith("--secret="):
            assert not os.path.exists(word.split(",src=")[1])


def test_buildah_otherwise_same_dockerfile(engines, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the script builds with buildah as root only")
    env, calls = engines
    env["DOCKER_INFO_STATUS"] = "1"  # a client without an engine
    proc = build(env, "--build-arg", "DEBIAN_TAG=trixie-slim")
    assert proc.returncode == 0, proc.stderr
    log = calls.read_text().splitlines()
    assert log[0] == "docker info"
    # the base is there (the stand-in says so), so no pull, no debootstrap
    assert "buildah inspect --type image debian:trixie-slim" in log
    bud = [c for c in log if c.startswith("buildah bud")]
    assert len(bud) == 1
    words = bud[0].split()
    assert words[words.index("-f") + 1] == "docker/Dockerfile.debian"
    assert (
        words[words.index("--ignorefile") + 1]
        == "docker/Dockerfile.debian.dockerignore"
    )
    for needed in (
        "--format",
        "docker",
        "--isolation=chroot",
        "--pull=never",
        "--layers",
        "--build-arg=DEBIAN_TAG=trixie-slim",
    ):
        assert needed in words
    assert "--secret=id=pip.conf,src=" in bud[0]
    assert words[-3:] == ["-t", "x:debian", "."]


def test_no_engine_is_a_clear_error(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = dict(os.environ, PATH=str(bin_dir))
    proc = subprocess.run(
        [sys.executable, SCRIPT, "docker/Dockerfile.debian", "x:debian"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "no Docker engine answers and buildah is missing" in proc.stderr


def test_base_images_of_the_dockerfiles():
    debian = os.path.join(ROOT, "docker", "Dockerfile.debian")
    assert build_image.base_images(debian, {}) == ["debian:bookworm-slim"]
    assert build_image.base_images(debian, {"DEBIAN_TAG": "trixie-slim"}) == [
        "debian:trixie-slim"
    ]
    openresty = os.path.join(ROOT, "docker", "Dockerfile.openresty")
    assert build_image.base_images(openresty, {}) == [
        "openresty/openresty:1.27.1.2-bookworm"
    ]


def test_pip_secrets_carry_the_index_settings_not_host_paths(
    tmp_path, monkeypatch
):
    cert = tmp_path / "corp-ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nxyz\n")
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # only what follows
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.corp.example/simple")
    monkeypatch.setenv(
        "PIP_EXTRA_INDEX_URL",
        "file:///srv/wheels https://extra.example/simple",
    )
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "pypi.corp.example")
    monkeypatch.setenv("PIP_PROXY", "http://user:pw@proxy.example:3128")
    monkeypatch.setenv("PIP_CERT", str(cert))
    monkeypatch.setenv("PIP_CONSTRAINT", "/etc/constraints.txt")
    out = tmp_path / "out"
    out.mkdir()
    secrets = build_image.pip_secrets(sys.executable, str(out))
    assert [i for i, _ in secrets] == ["pip.conf", "pip-cert.pem"]
    conf = (out / "pip.conf").read_text().splitlines()
    assert conf == [
        "[global]",
        "index-url = https://pypi.corp.example/simple",
        "extra-index-url = https://extra.example/simple",
        "trusted-host = pypi.corp.example",
        "proxy = http://user:pw@proxy.example:3128",
        "cert = /run/secrets/pip-cert.pem",
    ]
    assert (out / "pip-cert.pem").read_text() == cert.read_text()


def test_pip_secrets_without_pip_still_pass_the_trust_store(tmp_path):
    python = tmp_path / "python-without-pip"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    build_image.pip_secrets(str(python), str(out))
    conf = (out / "pip.conf").read_text()
    if os.path.isfile(build_image.SYSTEM_TRUST) or os.environ.get(
        "SSL_CERT_FILE"
    ):
        assert conf == "[global]\ncert = /run/secrets/pip-cert.pem\n"
        assert (out / "pip-cert.pem").stat().st_size > 0
