"""The Debian image, built and run: `make build-image-debian` with buildah
(the base made by debootstrap where no registry has it), the gateway
started inside it by the image's own command and config on the host's
network, the README's curl session run against it from the host, the
image's HEALTHCHECK run inside it, its STOPSIGNAL delivered, the container
removed. pip's settings and trust store reach the build as secrets, and no
layer of the image or of its build stage keeps them.

The example binds fixed ports (2990, 3450-3453, admin 34901 and 34903): the
test holds the lock every test running the example takes (tests/
example_ports.py) and fails, saying which, if one is taken all the same.
Nothing of the container outlives the test: every process whose root is
the container's root filesystem is killed on the way out, and the test
checks that none is left, no port of the example is bound and no region
remains. `podman run` cannot set rlimits
on this kind of machine, so the container runs under `buildah run
--isolation chroot --network host`, which shares the host's PID space
(the test sees the container's processes in /proc) and /dev/shm.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid

import pytest

from example_ports import taken_ports, the_example_ports
from readme import curl, readme_session, same

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
IMAGE = "mosn-gateway"
TAG = IMAGE + ":debian"
BUILD_STAGE_TAG = IMAGE + ":debian-build"
REGION = "/dev/shm/mosn_example"
SECRET_NAMES = ("pip.conf", "pip-cert.pem")

pytestmark = [
    pytest.mark.skipif(
        shutil.which("buildah") is None,
        reason="buildah is missing (make setup installs it)",
    ),
    # the first test builds the image: minutes, not the suite's 300 s
    pytest.mark.timeout(2400),
]

# a harmless pip setting only this run passes: found in a layer, it leaked
CANARY = f"leak-canary-{uuid.uuid4().hex[:12]}.invalid"


def run(argv, timeout=120, **kwargs):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def buildah(*args, timeout=120):
    proc = run(["buildah", *args], timeout=timeout)
    assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr}"
    return proc.stdout


# --- the build ----------------------------------------------------------------


@pytest.fixture(scope="module")
def image():
    """`make build-image-debian` with buildah, and its build stage tagged
    apart (the layer cache makes that second build a matter of seconds).
    Returns the image's Docker config."""
    if os.geteuid() != 0:
        pytest.fail("buildah builds and runs here as root (CI runs as root)")
    env = dict(os.environ, IMAGE_ENGINE="buildah", PIP_TRUSTED_HOST=CANARY)
    proc = run(
        [
            "make",
            "-C",
            ROOT,
            "build-image-debian",
            f"IMAGE={IMAGE}",
            f"VENV={sys.prefix}",
        ],
        timeout=2100,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "engine: buildah" in proc.stdout
    assert "pip settings passed as build secrets:" in proc.stdout
    assert "trusted-host" in proc.stdout and "cert (" in proc.stdout
    stage = run(
        [
            sys.executable,
            os.path.join(ROOT, "docker", "build-image.py"),
            "docker/Dockerfile.debian",
            BUILD_STAGE_TAG,
            "--target",
            "build",
            "--engine",
            "buildah",
        ],
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    assert stage.returncode == 0, (stage.stdout + stage.stderr)[-6000:]
    return json.loads(buildah("inspect", "--type", "image", TAG))["Docker"][
        "config"
    ]


def test_image_config(image):
    """The image's metadata survived the build (Docker format: the OCI
    format drops HEALTHCHECK)."""
    assert image["Cmd"] == [
        "nginx",
        "-p",
        "/srv/gateway/",
        "-c",
        "conf/nginx.conf",
        "-g",
        "daemon off;",
    ]
    assert image["WorkingDir"] == "/srv/gateway"
    assert image["StopSignal"] == "SIGQUIT"
    assert image["Healthcheck"]["Test"] == [
        "CMD",
        "/usr/local/bin/mosn-healthcheck",
    ]
    assert "2990/tcp" in image["ExposedPorts"]
    assert image.get("User", "") in ("", "root")  # the master binds 2990


# --- no secret in any layer -------------------------------------------------


def layers(tag, where):
    """{digest: path} of the layer tarballs of tag, pushed uncompressed."""
    out = os.path.join(where, tag.replace(":", "_"))
    buildah(
        "push",
        "--quiet",
        "--disable-compression",
        tag,
        f"dir:{out}",
        timeout=900,
    )
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    return {
        layer["digest"]: os.path.join(out, layer["digest"].split(":")[1])
        for layer in manifest["layers"]
    }


def secrets_in(layer, needles):
    """What of the secrets a layer tarball holds: mount points or copies of
    the secret files by name, and any file containing one of needles."""
    found = []
    with tarfile.open(layer) as tar:
        for member in tar:
            name = member.name.lstrip("./")
            base = os.path.basename(name)
            if (
                name.startswith("run/secrets/")
                or base in SECRET_NAMES
                or name
                in (
                    "etc/pip.conf",
                    "root/.config/pip/pip.conf",
                    "root/.pip/pip.conf",
                    "etc/xdg/pip/pip.conf",
                )
            ):
                found.append(f"{name}: a secret's name")
            if not member.isfile() or member.size == 0:
                continue
            data = tar.extractfile(member).read()
            found += [
                f"{name}: {label}"
                for label, needle in needles
                if needle in data
            ]
    return found


def test_secrets_scanner_finds_a_leak(tmp_path):
    """The layer scan can fail: a layer that copied the secrets is caught
    by name, and by content under any other name."""
    layer = tmp_path / "layer.tar"
    conf = tmp_path / "conf"
    conf.write_bytes(f"[global]\ntrusted-host = {CANARY}\n".encode())
    with tarfile.open(layer, "w") as tar:
        tar.add(conf, arcname="run/secrets/pip.conf")
        tar.add(conf, arcname="opt/venv/innocent.txt")
    found = secrets_in(str(layer), [("canary", CANARY.encode())])
    assert "run/secrets/pip.conf: a secret's name" in found
    assert "opt/venv/innocent.txt: canary" in found


def test_no_layer_keeps_the_pip_secrets(image, tmp_path):
    """Neither the image nor its build stage (where pip ran with the
    secrets mounted) has a secret's file or mount point in any layer, nor
    a file holding this run's canary setting or the trust store passed.
    (The canary proves most where the pip step ran in this build, as on a
    clean machine; a cached step was checked by the run that made it.)"""
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    needles = [("this run's pip setting", CANARY.encode())]
    if os.path.isfile(cert):
        needles.append(("the trust store passed", open(cert, "rb").read()))
    leaks, seen = [], set()
    for tag in (TAG, BUILD_STAGE_TAG):
        found = layers(tag, str(tmp_path))
        assert len(found) >= 5, f"{tag}: {len(found)} layers"
        for digest, layer in found.items():
            if digest not in seen:  # the base is in both
                seen.add(digest)
                leaks += [
                    f"{tag} {digest[:19]}: {leak}"
                    for leak in secrets_in(layer, needles)
                ]
    assert not leaks, "\n".join(leaks)


# --- the gateway in the image -------------------------------------------------


def proc_table():
    """{pid: (ppid, uid, cmdline)} of the live processes."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/status") as f:
                uid = next(
                    int(line.split()[1])
                    for line in f
                    if line.startswith("Uid:")
                )
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), uid, cmd.strip())
    return table


def descendants(pid, table):
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (pp, _, _) in table.items() if pp == parent]
        out += children
        todo += children
    return out


def main_process(runner_pid):
    """The container's first process: the child of buildah-chroot-exec
    (what `docker stop` would signal as PID 1)."""
    table = proc_table()
    for pid in descendants(runner_pid, table):
        parent = table[pid][0]
        if table.get(parent, (0, 0, ""))[2].startswith("buildah-chroot-exec"):
            return pid
    return None


def processes_in(root):
    """The processes whose root directory is root: the container's, even
    those a dead master left behind (re-parented, out of its tree)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.path.realpath(f"/proc/{entry}/root") == root:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_the_example_runs_in_the_image(image, tmp_path):
    """buildah run of the image's own command: the README's curl session
    from the host, the HEALTHCHECK inside, the workers as www-data, the
    STOPSIGNAL a clean stop, the container removed, nothing left behind."""
    with the_example_ports():
        assert not os.path.exists(REGION), (
            f"{REGION} exists: another example gateway runs on this machine"
        )
        name = f"mosn-gateway-test-{uuid.uuid4().hex[:8]}"
        buildah("from", "--pull=never", "--name", name, TAG)
        try:
            left = run_the_example(image, name, tmp_path)
        finally:
            removed = run(["buildah", "rm", name])
        assert not left, f"left behind by the container: {left}"
        assert removed.returncode == 0, removed.stderr
        assert name not in buildah(
            "containers", "--format", "{{.ContainerName}}"
        )
        assert not taken_ports(), taken_ports()


def session(sid):
    """The live processes of session sid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry))
    return found


def root_of_session(sid):
    """The container's root: that of any process of the runner's session
    inside it (buildah run binds the container's files at a new path for
    each run)."""
    for pid in session(sid):
        try:
            root = os.path.realpath(f"/proc/{pid}/root")
        except OSError:
            continue
        if root != "/":
            return root
    return None


def leftovers(sid, container_root):
    """What a container's gateway may leave: processes of the runner's
    session or in the container's root, the example's ports bound, its
    region."""
    left = [f"process {p}" for p in session(sid)]
    if container_root:
        left += [f"process {p}" for p in processes_in(container_root)]
    left += [f"port {p}" for p in taken_ports()]
    left += [
        path
        for path in (REGION, REGION + ".stats", REGION + ".wake")
        if os.path.exists(path)
    ]
    return left


def run_the_example(image, name, tmp_path):
    """Runs the image's command in container name, checks it, stops it.
    Returns what was left behind after the cleanup (nothing, or a
    list that says what)."""
    health = image["Healthcheck"]["Test"]
    assert health[0] == "CMD"
    run_args = [
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--workingdir",
        image["WorkingDir"],
        name,
        "--",
    ]
    # the container's stdout and stderr; read through another file object,
    # as a seek on this one would move the writer's offset too
    console = open(tmp_path / "console.log", "w")

    def logged():
        return (tmp_path / "console.log").read_text(errors="replace")

    # a session of its own: the runner and the nginx processes; the Python
    # supervisor makes its own session, so the cleanup goes by root too
    runner = subprocess.Popen(
        run_args + image["Cmd"],
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    master = container_root = None

    def check_health():
        return run(run_args + health[1:], timeout=60)

    def healthy():
        return check_health().returncode == 0

    try:
        # healthy within the check's start period and retries, and then some
        hc = image["Healthcheck"]
        deadline = (
            time.monotonic()
            + 30
            + (hc["StartPeriod"] + hc["Retries"] * hc["Interval"]) / 1e9
        )
        # healthy, and by this container's gateway: one that cannot bind
        # (another gateway took the example's ports) says so at once
        while not healthy() or "[emerg]" in logged():
            container_root = container_root or root_of_session(runner.pid)
            assert "[emerg]" not in logged(), (
                "the gateway in the container cannot start:\n" + logged()
            )
            assert runner.poll() is None, (
                f"the gateway exited ({runner.returncode}):\n" + logged()
            )
            assert time.monotonic() < deadline, (
                "never healthy:\n" + logged()[-4000:]
            )
            time.sleep(0.5)
        master = main_process(runner.pid)
        assert master is not None, "no process under buildah-chroot-exec"
        container_root = os.path.realpath(f"/proc/{master}/root")
        assert container_root != "/"
        table = proc_table()
        assert re.match(
            r"nginx: master process \S*nginx -p /srv/gateway/ ",
            table[master][2],
        ), table[master][2]

        # the README's curl session, from the host, answer for answer
        answers = [
            (cmd, expected, curl(cmd)) for cmd, expected in readme_session()
        ]
        wrong = [a for a in answers if not same(a[1], a[2])]
        assert len(answers) >= 7 and not wrong, (
            "README answers that differ (command, README, actual):\n%r" % wrong
        )

        # the admin API and the metrics answer from the host; they serve
        # only once the admin process has dropped root, checked below
        def answers(url):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        for url in (
            "http://127.0.0.1:34901/api/v1/stats",
            "http://127.0.0.1:34903/metrics",
        ):
            deadline = time.monotonic() + 30
            while not answers(url):
                assert time.monotonic() < deadline, f"{url}: no answer"
                time.sleep(0.2)

        # nginx's and Python's workers run as www-data (uid from the
        # image's own /etc/passwd, seen through the master's root: the
        # container's files are mounted where only it sees them); only the master and the supervisor,
        # which spawns the workers, keep root
        with open(f"/proc/{master}/root/etc/passwd") as f:
            www = next(
                int(line.split(":")[2])
                for line in f
                if line.startswith("www-data:")
            )
        assert www != 0
        table = proc_table()
        tree = {p: table[p] for p in descendants(master, table)}
        roles = {}
        for pid, (_, uid, cmd) in tree.items():
            roles.setdefault(
                "nginx worker"
                if cmd.startswith("nginx: worker")
                else "python " + cmd.split(" -m pyworker ")[1].split()[0]
                if " -m pyworker " in cmd
                else cmd,
                [],
            ).append(uid)
        assert len(roles.get("nginx worker", [])) == 2, roles
        assert len(roles.get("python worker", [])) == 2, roles
        for role in ("nginx worker", "python worker"):
            assert set(roles[role]) == {www}, (role, roles)
        assert all(
            uid == www
            for role, uids in roles.items()
            if role != "python serve"
            for uid in uids
        ), roles

        # the STOPSIGNAL to the container's first process: a graceful quit
        # that ends the container with status 0 and leaves nothing behind
        os.kill(master, getattr(signal, image["StopSignal"]))
        assert runner.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while processes_in(container_root):
            assert time.monotonic() < deadline, "processes left after stop"
            time.sleep(0.2)
        assert not os.path.exists(REGION)
        # the check itself ran and found nobody at the gateway's port
        stopped = check_health()
        assert (
            stopped.returncode == 1
            and "http://127.0.0.1:2990/echo: " in stopped.stderr
        ), stopped
        console_log = logged()
        assert "start worker process" in console_log  # error.log
        assert re.search(
            r'"GET / HTTP/1\.1" 200 127\.0\.0\.1:3452 '
            r"mosn=filtered .* unit=s2",
            console_log,
        )  # access.log
    finally:
        # whatever failed, nothing of the container outlives the test: its
        # processes, those of the runner's session (nginx's, even orphaned)
        # and those in its root (the Python pool, which has a session of
        # its own), killed until none is left (a master killed first
        # respawns nothing, but one may be forking as it dies: repeat)
        container_root = container_root or root_of_session(runner.pid)
        killed, deadline = False, time.monotonic() + 15
        while time.monotonic() < deadline:
            alive = set(session(runner.pid))
            alive |= set(descendants(runner.pid, proc_table()))
            if container_root:
                alive |= set(processes_in(container_root))
            if not alive:
                break
            killed = True
            for pid in sorted(alive, key=lambda p: p != master):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        runner.wait()
        console.close()
        if killed:  # the gateway could not remove its region
            for path in (REGION, REGION + ".stats", REGION + ".wake"):
                shutil.rmtree(path, ignore_errors=True)
                if os.path.lexists(path):
                    os.unlink(path)
    return leftovers(runner.pid, container_root)
