"""Size and build time of the Debian image, as `make test` builds it on a
machine with no container registry in reach: the base made by debootstrap,
then the Dockerfile built by buildah.

    python -m bench.image_bench [--runs N] [--out bench/results/image.md]

As root, with buildah and debootstrap (make setup installs them). It
times:

1. the base from nothing: docker/debian-base.sh with an empty cache
   (debootstrap --variant=minbase from Debian's mirror, the slim trims, the
   import into buildah's storage), then its import alone from the cached
   root filesystem;
2. N builds of docker/Dockerfile.debian with no layer cache
   (`docker/build-image.py ... --no-cache`), each step's share read from
   buildah's output as it comes;
3. a build with nothing changed (every step cached), as a second
   `make build-image-debian` runs;

and measures the image, its build stage and its base: the sum of their
layers as tar files (what the storage holds) and gzip-compressed (what a
registry would store and a pull would fetch).

With --sizes-only it builds nothing and measures the images as `make
build-image-debian` and the image tests left them (mosn-gateway:debian and
mosn-gateway:debian-build): sizes do not move with the machine's load.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "docker", "build-image.py")
BASE = os.path.join(ROOT, "docker", "debian-base.sh")
DOCKERFILE = "docker/Dockerfile.debian"
TAG = "mosn-gateway:bench"
STAGE_TAG = "mosn-gateway:bench-build"
BASE_TAG = "localhost/debian:bookworm-slim"
TARBALL = os.path.join(ROOT, "build", "image", "debian-bookworm.tar")
STEP = re.compile(r"^\[(\d+)/(\d+)\] STEP (\d+)/(\d+): (.*)$")


def sh(argv, **kwargs):
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, **kwargs
    ).stdout


def timed(argv):
    """(seconds, [(seconds since start, line)]) of a command's output."""
    start = time.monotonic()
    lines = []
    with subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            lines.append((time.monotonic() - start, line.rstrip("\n")))
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(
            f"{' '.join(argv)} failed:\n"
            + "\n".join(line for _, line in lines[-40:])
        )
    return elapsed, lines


def steps(lines, elapsed):
    """[(stage, step, instruction, started, took)] of a buildah build. A
    step lasts until its stage's next step; a stage's last step, until
    anything else happens (the other stage going on, the commit)."""
    events = []  # (at, stage or None, step, instruction)
    for at, line in lines:
        match = STEP.match(line)
        if match:
            events.append(
                (
                    at,
                    int(match.group(1)),
                    int(match.group(3)),
                    " ".join(match.group(5).split()),
                )
            )
        elif "COMMIT" in line:
            events.append((at, None, None, line))
    out = []
    for i, (at, stage, step, what) in enumerate(events):
        if stage is None:
            continue
        rest = events[i + 1 :]
        same = [e[0] for e in rest if e[1] == stage]
        end = same[0] if same else (rest[0][0] if rest else elapsed)
        out.append((stage, step, what[:90], at, end - at))
    return out


def layer_sizes(tag, where):
    """([tar bytes], [gzip bytes]) of the image's layers, in order."""
    sizes = []
    for compress in (False, True):
        out = os.path.join(where, re.sub(r"[/:]", "_", tag) + f"-{compress}")
        sh(
            ["buildah", "push", "--quiet"]
            + ([] if compress else ["--disable-compression"])
            + [tag, f"dir:{out}"]
        )
        manifest = json.load(open(os.path.join(out, "manifest.json")))
        sizes.append([layer["size"] for layer in manifest["layers"]])
        shutil.rmtree(out)
    return sizes


def machine():
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        "?",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "debian": open("/etc/debian_version").read().strip(),
        "buildah": sh(["buildah", "--version"]).strip(),
        "debootstrap": sh(
            ["dpkg-query", "-W", "-f", "${Version}", "debootstrap"]
        ),
        "mem_gib": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        ),
    }


def load():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", type=int, default=2, help="builds with no cache (default 2)"
    )
    parser.add_argument(
        "--out", default=os.path.join(ROOT, "bench", "results", "image.md")
    )
    parser.add_argument(
        "--sizes-only",
        action="store_true",
        help="build nothing: measure the images the image tests built",
    )
    args = parser.parse_args()
    if args.sizes_only:
        return sizes_only(args)
    if os.geteuid() != 0:
        sys.exit("bench/image_bench.py runs as root (buildah, debootstrap)")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    facts = machine()
    loads = [load()]

    # 1. the base, from nothing and then from its cached root filesystem
    subprocess.run(["buildah", "rmi", BASE_TAG], capture_output=True)
    if os.path.exists(TARBALL):
        os.unlink(TARBALL)
    base_cold, _ = timed([BASE])
    subprocess.run(["buildah", "rmi", BASE_TAG], capture_output=True)
    base_warm, _ = timed([BASE])
    loads.append(load())

    # 2. the image with no layer cache, N times; 3. with every step cached
    cold = []
    for _ in range(args.runs):
        cold.append(
            timed(
                [
                    sys.executable,
                    BUILD,
                    DOCKERFILE,
                    TAG,
                    "--engine",
                    "buildah",
                    "--no-cache",
                ]
            )
        )
        loads.append(load())
    warm, warm_lines = timed(
        [sys.executable, BUILD, DOCKERFILE, TAG, "--engine", "buildah"]
    )
    assert sum("Using cache" in line for _, line in warm_lines) >= 10, (
        "the second build did not use the cache"
    )
    timed(
        [
            sys.executable,
            BUILD,
            DOCKERFILE,
            STAGE_TAG,
            "--engine",
            "buildah",
            "--target",
            "build",
        ]
    )
    loads.append(load())

    sizes, history = measure(TAG, STAGE_TAG)
    for tag in (TAG, STAGE_TAG):
        subprocess.run(["buildah", "untag", tag], capture_output=True)

    medians = statistics.median(t for t, _ in cold)
    lines = [
        "# The Debian image: size and build time",
        "",
        "Command: `python -m bench.image_bench"
        + (f" --runs {args.runs}" if args.runs != 2 else "")
        + "` (as root)  ",
        f"Date: {started}  ",
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), "
        f"{facts['mem_gib']} GiB, Linux {facts['kernel']}, Debian "
        f"{facts['debian']}, {facts['buildah']}, debootstrap "
        f"{facts['debootstrap']}; no container registry in reach, Debian's "
        f"mirror and PyPI through the network  ",
        f"Load average (1, 5, 15 min) before and after each phase: "
        f"{' | '.join(loads)}",
        "",
        "The machine is shared with other work: the times are wall-clock "
        "and move with its load; the sizes do not.",
        "",
        "## Build time",
        "",
        "| phase | seconds |",
        "| --- | ---: |",
        f"| the base from nothing: debootstrap, slim trims, import "
        f"(`docker/debian-base.sh`) | {base_cold:.0f} |",
        f"| the base from its cached root filesystem (import only) | "
        f"{base_warm:.0f} |",
    ]
    for i, (t, _) in enumerate(cold, 1):
        lines.append(
            f"| the image, no layer cache, run {i} "
            f"(`docker/build-image.py {DOCKERFILE} ... --no-cache`) "
            f"| {t:.0f} |"
        )
    lines += [
        f"| the image, no layer cache, median | {medians:.0f} |",
        f"| the image again, nothing changed (every step cached) | "
        f"{warm:.0f} |",
        f"| a clean machine in all (`make build-image-debian`: the base "
        f"from nothing, then the image) | {base_cold + medians:.0f} |",
        "",
        "Where the time goes (the no-cache run nearest the median; the "
        "stages run side by side, `--jobs=2`, so shares overlap):",
        "",
        "| stage | step | started (s) | took (s) |",
        "| --- | --- | ---: | ---: |",
    ]
    nearest = min(cold, key=lambda c: abs(c[0] - medians))
    names = {1: "build", 2: "runtime"}
    for stage, step, what, at, took in steps(nearest[1], nearest[0]):
        if took >= 1:
            wait = (
                " (waits for the build stage)"
                if what.startswith("COPY --from=")
                else ""
            )
            lines.append(
                f"| {names.get(stage, stage)} | {step}: "
                f"`{what}`{wait} | {at:.0f} | {took:.0f} |"
            )
    lines += size_report(sizes, history)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def measure(tag, stage_tag):
    """({name: ([tar bytes], [gzip bytes])}, the image's history)."""
    with tempfile.TemporaryDirectory() as where:
        sizes = {
            name: layer_sizes(t, where)
            for name, t in (
                ("mosn-gateway:debian", tag),
                ("its build stage (`--target build`, not shipped)", stage_tag),
                ("debian:bookworm-slim (debootstrap)", BASE_TAG),
            )
        }
    history = json.loads(sh(["buildah", "inspect", "--type", "image", tag]))[
        "Docker"
    ]["history"]
    return sizes, history


def sizes_only(args):
    tag, stage_tag = "mosn-gateway:debian", "mosn-gateway:debian-build"
    for t in (tag, stage_tag, BASE_TAG):
        if (
            subprocess.run(
                ["buildah", "inspect", "--type", "image", t],
                capture_output=True,
            ).returncode
            != 0
        ):
            sys.exit(f"no {t}: run the image tests (make test-image) first")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    facts = machine()
    sizes, history = measure(tag, stage_tag)
    lines = [
        "# The Debian image: size",
        "",
        "Command: `python -m bench.image_bench --sizes-only` (as root), after "
        "`make test-image` built the image and its build stage  ",
        f"Date: {started}  ",
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), "
        f"{facts['mem_gib']} GiB, Linux {facts['kernel']}, Debian "
        f"{facts['debian']}, {facts['buildah']}, debootstrap "
        f"{facts['debootstrap']}",
    ] + size_report(sizes, history)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def size_report(sizes, history):
    lines = [
        "",
        "## Size",
        "",
        "Sums of the layers: as tar files (what the local storage holds) "
        "and gzip-compressed (what a registry stores and a pull fetches).",
        "",
        "| image | layers | tar | gzip |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, (raw, gz) in sizes.items():
        lines.append(
            f"| {name} | {len(raw)} | {mib(sum(raw))} | {mib(sum(gz))} |"
        )
    lines += [
        "",
        "The image's layers (`mosn-gateway:debian`):",
        "",
        "| layer | tar | gzip |",
        "| --- | ---: | ---: |",
    ]
    made = [e for e in history if not e.get("empty_layer")]
    raw, gz = sizes["mosn-gateway:debian"]
    for entry, r, g in zip(made, raw, gz):
        what = " ".join(entry.get("created_by", "").split())
        what = what.replace("/bin/sh -c #(nop) ", "").replace(
            "/bin/sh -c ", "RUN "
        )
        what = "the base (debootstrap)" if what == "/bin/sh" else what
        lines.append(f"| `{what[:90]}` | {mib(r)} | {mib(g)} |")
    return lines


if __name__ == "__main__":
    main()
