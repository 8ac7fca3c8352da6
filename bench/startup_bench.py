"""How long `make run` takes, with nothing to rebuild, until the example
gateway accepts on port 2990, and whether the README's first answer is
right at that moment; then Ctrl-C, and how long until nothing of it is left.

    flock /tmp/port2990.lock python -m bench.startup_bench [--runs 5]

Runs from the checkout it lives in, with the virtualenv of the Python that
runs it (`make VENV=...`). The first run may rebuild; it is reported apart
and left out of the medians.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request

from bench import CHECKOUT as ROOT, report
from bench.procs import accepts, taken_ports


def first_answer():
    req = urllib.request.Request(
        "http://127.0.0.1:2990/", headers={"uid": "2"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode().strip()


def one_run(venv, timeout=120):
    if taken_ports():
        sys.exit("the example's ports are taken: stop what holds them")
    start = time.monotonic()
    make = subprocess.Popen(
        ["make", "VENV=" + venv, "run"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while not accepts(2990):
            if make.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError("make run ended or did not accept")
            time.sleep(0.001)
        accept = time.monotonic() - start
        answer = first_answer()
        answered = time.monotonic() - start
    finally:
        # Ctrl-C, as in a terminal: the whole foreground group
        stop = time.monotonic()
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout)
        while taken_ports() and time.monotonic() - stop < timeout:
            time.sleep(0.01)
        stopped = time.monotonic() - stop
    return {
        "accept_s": accept,
        "first_answer_s": answered,
        "first_answer": answer,
        "stopped_s": stopped,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()
    venv = os.path.dirname(os.path.dirname(sys.executable))
    load_before = open("/proc/loadavg").read().split()[:3]
    runs = [one_run(venv) for _ in range(args.runs + 1)]
    load_after = open("/proc/loadavg").read().split()[:3]
    rest = runs[1:]  # the first run may rebuild: not counted
    med = report.medians(rest, ("accept_s", "first_answer_s", "stopped_s"))
    right = sum(r["first_answer"] == "site s1 from 3450" for r in runs)
    lines = [
        "# `make run` with nothing to rebuild",
        "",
        "Command: `flock /tmp/port2990.lock python -m bench.startup_bench "
        "--runs %d`  " % args.runs,
        "Machine: %d CPUs, %s  "
        % (
            os.cpu_count(),
            " ".join(
                subprocess.run(
                    ["nginx", "-v"], capture_output=True, text=True
                ).stderr.split()
            ),
        ),
        "Load average: %s before, %s after  "
        % (" ".join(load_before), " ".join(load_after)),
        "",
        "| run | accepts after s | first answer after s | first answer "
        "| Ctrl-C to ports free s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(runs):
        lines.append(
            "| %s | %.2f | %.2f | %s | %.2f |"
            % (
                "first (may rebuild)" if i == 0 else i,
                r["accept_s"],
                r["first_answer_s"],
                r["first_answer"],
                r["stopped_s"],
            )
        )
    lines += [
        "| **median of %d** | **%.2f** | **%.2f** | %d of %d right "
        "| **%.2f** |"
        % (
            len(rest),
            med["accept_s"],
            med["first_answer_s"],
            right,
            len(runs),
            med["stopped_s"],
        ),
        "",
        "Target: accepts in under 3 s with nothing changed: **%s**; the "
        "first answer is the README's (`site s1 from 3450` for `uid:2`) "
        "in every run: **%s**."
        % (
            "met" if med["accept_s"] < 3 else "missed",
            "yes" if right == len(runs) else "no",
        ),
        "",
    ]
    report.write(
        args.out,
        "startup",
        "\n".join(lines),
        {
            "runs": runs,
            "median": med,
            "load_before": load_before,
            "load_after": load_after,
        },
        indent=1,
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
