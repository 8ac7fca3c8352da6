"""What every benchmark report states besides its figures: the command
that produced it, as a reader repeats it from the checkout, and the
machine it ran on."""

import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path


def command(module, argv=None):
    """`python -m MODULE ARGS`: argv as given (sys.argv[1:] by default)."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(
        ["python -m " + module] + ([shlex.join(argv)] if argv else [])
    )


def first_line(argv):
    """The first line a command prints (a version), or "unknown"."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (done.stdout + done.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine(nginx="nginx", wrk="wrk", **tools):
    """Cores, CPU, kernel, Python and the versions of nginx, wrk and any
    other tool named (name=argv that prints its version)."""
    info = {
        "nproc": first_line(["nproc"]),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "nginx": first_line([nginx, "-v"]),
        "wrk": first_line([wrk, "-v"]).split(" [")[0],
        "python": platform.python_version(),
    }
    for name, argv in tools.items():
        info[name] = first_line(argv)
    return info


def write(out, name, text, doc, indent=2):
    """NAME.md (text) and NAME.json (doc) into the directory out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=indent) + "\n")
    (out / f"{name}.md").write_text(text)


def table(columns, rows):
    """A Markdown table's lines: the columns' names, then a line per row
    (its cells, or the line itself)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + [
        row
        if isinstance(row, str)
        else "| " + " | ".join(map(str, row)) + " |"
        for row in rows
    ]


def medians(rows, keys):
    """key -> the median of rows[i][key], for each of keys."""
    return {k: statistics.median(row[k] for row in rows) for k in keys}
