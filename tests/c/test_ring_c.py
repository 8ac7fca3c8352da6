"""The ring's C core on its own: the C stress test (normal and chaos) and
the verdict decoder under libFuzzer, both built from the tree."""

import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
CLOSING = re.compile(r"^(\d+) passed, (\d+) failed$")


def run(args, timeout, **kw):
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture(scope="module")
def ring_stress():
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    built = run([os.path.join(ROOT, "shm_ring", "tests", "build.sh")], 120)
    assert built.returncode == 0, built.stderr
    return built.stdout.strip().splitlines()[-1]


def check_closing(out):
    lines = out.stdout.strip().splitlines()
    assert lines, out.stderr
    m = CLOSING.match(lines[-1])
    assert m, "no closing line:\n" + out.stdout + out.stderr
    assert int(m.group(2)) == 0, out.stdout
    assert int(m.group(1)) > 0
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout
    return out.stdout


def test_ring_stress(ring_stress):
    out = run(
        [
            ring_stress,
            "--producers",
            "2",
            "--consumers",
            "2",
            "--requests",
            "30000",
            "--timeout",
            "60",
        ],
        90,
    )
    check_closing(out)


def test_ring_stress_small_ring(ring_stress):
    # two slots: the ring is full nearly all the time
    out = run(
        [
            ring_stress,
            "--producers",
            "3",
            "--consumers",
            "2",
            "--requests",
            "10000",
            "--slots",
            "2",
            "--timeout",
            "60",
        ],
        90,
    )
    check_closing(out)


def test_ring_stress_chaos(ring_stress):
    out = run(
        [
            ring_stress,
            "--chaos",
            "--producers",
            "2",
            "--consumers",
            "3",
            "--requests",
            "40000",
            "--slots",
            "16",
            "--seed",
            "7",
            "--timeout",
            "60",
        ],
        90,
    )
    text = check_closing(out)
    assert "consumers killed with -9" in text
    assert "was reaped" in text


FUZZ_TARGETS = ("verdict", "region", "producer", "endpoints", "request")


@pytest.mark.skipif(shutil.which("clang") is None, reason="no clang")
@pytest.mark.parametrize("target", FUZZ_TARGETS)
def test_fuzz_short(target):
    """A short run of each fuzz target (make fuzz runs them long)."""
    out = run(
        [os.path.join(ROOT, "fuzz", "run.sh"), "20000", target],
        300,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(
        r"%s_fuzz: 20000 executions .* no finding" % target, out.stdout
    ), out.stdout


def verdict_corpus(tmp_path):
    """The verdict fuzzer's seeds (fuzz/make_corpus.py), each cut short
    and with bytes changed (seeded, so every run checks the same inputs),
    and whatever the fuzzer kept in build/ from an earlier run."""
    seeds = tmp_path / "seeds"
    made = run(
        [
            sys.executable,
            os.path.join(ROOT, "fuzz", "make_corpus.py"),
            str(seeds),
        ],
        60,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    rng = random.Random(14)
    corpus = {}
    for path in sorted(seeds.iterdir()):
        data = path.read_bytes()
        corpus[path.name] = data
        for cut in sorted({0, 1, len(data) // 2, len(data) - 1}):
            corpus["%s-cut%d" % (path.name, cut)] = data[:cut]
        for i in range(16):
            flipped = bytearray(data)
            at = rng.randrange(len(data))
            flipped[at] = rng.choice((0x00, 0xFF, 0x0A, flipped[at] ^ 0x80))
            corpus["%s-flip%d" % (path.name, i)] = bytes(flipped)
    kept = os.path.join(ROOT, "build", "fuzz", "verdict", "corpus")
    if os.path.isdir(kept):
        for name in sorted(os.listdir(kept)):
            with open(os.path.join(kept, name), "rb") as f:
                corpus["kept-" + name] = f.read()
    return corpus


def test_fuzz_corpus_c_and_python_agree(tmp_path):
    """The C decoder and the pure-Python reference refuse the same
    verdicts, for the same reason, over the fuzzer's corpus."""
    try:
        from shm_ring import _ring
    except ImportError:
        pytest.skip("the Cython binding is not built")
    from shm_ring import codec

    refused = 0
    corpus = verdict_corpus(tmp_path)
    for name, data in corpus.items():
        why = _ring.validate_verdict(data)
        assert why == codec.validate_verdict(data), name
        refused += why is not None
    # both kinds were checked: verdicts taken and verdicts refused
    assert 0 < refused < len(corpus), (refused, len(corpus))


def test_ring_bench_smoke(tmp_path):
    """The ring benchmark runs end to end and writes its report."""
    try:
        from shm_ring import _ring  # noqa: F401
    except ImportError:
        pytest.skip("the Cython binding is not built")
    out = run(
        [
            sys.executable,
            "-m",
            "bench.ring_bench",
            "--reps",
            "1",
            "--latency-count",
            "50",
            "--gap-us",
            "200",
            "--count",
            "20000",
            "--out",
            str(tmp_path),
        ],
        120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with open(tmp_path / "ring.json") as f:
        doc = json.load(f)
    m = doc["medians"]
    assert m["throughput_per_s"] > 0 and m["latency_p50_us"] > 0
    assert (tmp_path / "ring.md").read_text().startswith("# Ring benchmark")
