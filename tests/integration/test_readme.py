"""The newcomer's path: `make run` as the README says, then the README's
curl session the moment port 2990 accepts, answer for answer as the
README prints it; Ctrl-C on `make run` leaves nothing behind, and a second
`make run` right after starts cleanly.

These bind the example's fixed ports (2990, 3450-3453, 34901, 34903): they
hold the lock tests/example_ports.py takes for them, and a test fails,
naming the port, if something else has one.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from example_ports import the_example_ports
from gateway import ROOT, pids_of, wait_for
from readme import curl, readme_session, same

pytestmark = pytest.mark.slow

PORTS = (2990, 3450, 3451, 3452, 3453, 34901, 34903)
SHM = "mosn_example"
DEFAULT_VENV = "/opt/mosn-gateway"
# longer than any build: make run builds what is out of date first
START_TIMEOUT = 600


def make_command():
    """`make run` as the README says; with this suite's venv if it is not
    the default one."""
    cmd = ["make", "-C", ROOT, "run"]
    if sys.prefix != DEFAULT_VENV:
        cmd.append("VENV=" + sys.prefix)
    return cmd


def check_ports_free():
    for port in PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                pytest.fail(
                    "port %d is taken (%s): the example cannot run "
                    "here; stop what holds it" % (port, exc)
                )


def accepting(port=2990):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
        return True
    except OSError:
        return False


class MakeRun:
    """`make run` in a terminal of its own: Ctrl-C reaches its whole
    foreground process group, as a terminal's would."""

    def __init__(self, tmp_path):
        self.out_path = tmp_path / ("make-run-%d.out" % time.monotonic_ns())
        self.out = open(self.out_path, "w+")
        # a user's shell: the suite's own nginx and module choice are not
        # the README's (and nginx reads $NGINX as inherited sockets)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NGINX", "MOSN_MODULE")
        }
        self.proc = subprocess.Popen(
            make_command(),
            stdout=self.out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.started = time.monotonic()

    def output(self):
        self.out.flush()
        return self.out_path.read_text()

    def wait_accepting(self):
        """Seconds until port 2990 accepted; polls every millisecond."""
        deadline = self.started + START_TIMEOUT
        while time.monotonic() < deadline:
            if accepting():
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                pytest.fail(
                    "make run exited with %d:\n%s"
                    % (self.proc.returncode, self.output())
                )
            time.sleep(0.001)
        self.ctrl_c()
        pytest.fail(
            "port 2990 did not accept in %d s:\n%s"
            % (START_TIMEOUT, self.output())
        )

    def ctrl_c(self, timeout=15):
        """SIGINT to the process group; the exit code of make."""
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(
                "make run did not stop on Ctrl-C in %d s:\n%s"
                % (timeout, self.output())
            )


def session_pids(sid):
    """Live processes of session sid (a terminal's, here make's)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


def gateway_leftovers(runs=()):
    """Processes, shared memory and ports of the example still there."""
    left = []
    for run in runs:
        left += ["process %d" % p for p in session_pids(run.proc.pid)]
    left += ["process %d" % p for p in pids_of("--shm /" + SHM)]
    left += [
        "/dev/shm/" + n
        for n in os.listdir("/dev/shm")
        if n == SHM or n.startswith(SHM + ".")
    ]
    left += ["port %d" % p for p in PORTS if accepting(p)]
    return left


@pytest.fixture
def example_ports():
    with the_example_ports():
        check_ports_free()
        assert not gateway_leftovers(), gateway_leftovers()
        runs = []
        yield runs
        for run in runs:
            if run.proc.poll() is None:
                run.ctrl_c()
        assert wait_for(lambda: not gateway_leftovers(runs), 10), (
            gateway_leftovers(runs)
        )


def test_the_readme_session_right_after_make_run(tmp_path, example_ports):
    session = readme_session()
    run = MakeRun(tmp_path)
    example_ports.append(run)
    took = run.wait_accepting()
    # at once, as a newcomer pasting the README would
    answers = [(cmd, expected, curl(cmd)) for cmd, expected in session]
    print("make run accepted after %.2f s" % took)
    wrong = [
        (cmd, expected, actual)
        for cmd, expected, actual in answers
        if not same(expected, actual)
    ]
    assert not wrong, (
        "README answers that differ (command, README, "
        "actual):\n%r\nmake run:\n%s" % (wrong, run.output())
    )
    assert run.ctrl_c() is not None


def test_make_run_does_no_work_when_nothing_changed():
    """Everything built: `make run` only starts nginx (no install, no
    compile), and build-l7 has nothing to do."""
    venv = [] if sys.prefix == DEFAULT_VENV else ["VENV=" + sys.prefix]
    for target in ("build-l7", "python"):
        subprocess.run(
            ["make", "-C", ROOT, "-s", target] + venv,
            check=True,
            capture_output=True,
            timeout=600,
        )
    dry = subprocess.run(
        ["make", "-C", ROOT, "-n", "run"] + venv,
        capture_output=True,
        text=True,
        check=True,
    )
    work = [
        line
        for line in dry.stdout.splitlines()
        if "pip install" in line or "build.sh" in line or "-m venv" in line
    ]
    assert not work, dry.stdout
    assert (
        subprocess.run(
            ["make", "-C", ROOT, "-q", "build-l7"] + venv
        ).returncode
        == 0
    )


def test_ctrl_c_stops_everything_and_make_run_starts_again(
    tmp_path, example_ports
):
    for _ in range(2):
        run = MakeRun(tmp_path)
        example_ports.append(run)
        run.wait_accepting()
        # serving, Python workers included
        assert wait_for(lambda: pids_of("pyworker worker --shm /" + SHM), 30)
        assert wait_for(
            lambda: curl("curl localhost:2990/echo") == "hello from echo", 30
        ), run.output()
        run.ctrl_c()
        assert wait_for(lambda: not gateway_leftovers([run]), 5), (
            gateway_leftovers([run]),
            run.output(),
        )
