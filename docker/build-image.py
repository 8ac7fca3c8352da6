#!/usr/bin/env python3
"""Builds an image from a Dockerfile of docker/, with the engine there is.

    docker/build-image.py DOCKERFILE TAG [--build-arg NAME=VALUE]...
                          [--target STAGE] [--no-cache]
                          [--engine auto|docker|buildah]

The context is the repository root and the same Dockerfile serves both
engines:

- docker, where `docker info` answers: `docker build` with BuildKit (which
  reads DOCKERFILE.dockerignore itself);
- buildah otherwise (`buildah bud`, chroot isolation, Docker image format
  so that HEALTHCHECK is kept, cached layers). A base image missing from
  buildah's storage is pulled; where no registry has it and it is Debian's
  (debian:SUITE-slim), docker/debian-base.sh makes it with debootstrap.

pip inside the build uses this host's package index settings: the values of
`pip config list` (index-url, extra-index-url, trusted-host, proxy,
timeout, retries) and its trust store (pip's `cert`, else the system's) go
in as build secrets, which RUN steps see under /run/secrets and no layer
keeps. Settings naming a path of this host (file:// indexes, find-links
directories) are left out: the build cannot read them. Proxy variables of
the environment (HTTP_PROXY, ...) reach the RUN steps as the engines'
predefined build arguments, which no image records either.
"""

import argparse
import ast
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_BASE = os.path.join(ROOT, "docker", "debian-base.sh")
# what the Dockerfiles mount: RUN --mount=type=secret,id=ID -> /run/secrets/ID
PIP_CONF_ID = "pip.conf"
PIP_CERT_ID = "pip-cert.pem"
# pip settings about reaching an index; the rest is the build's business
PIP_KEYS = (
    "index-url",
    "extra-index-url",
    "trusted-host",
    "proxy",
    "timeout",
    "retries",
    "find-links",
    "no-index",
)
# pip config sections that apply to `pip install`, weakest first
PIP_SECTIONS = ("global", "install", ":env:")
PROXY_VARS = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
)
SYSTEM_TRUST = "/etc/ssl/certs/ca-certificates.crt"


def fail(message):
    sys.exit(f"build-image: {message}")


# --- the host's pip settings -----------------------------------------------


def pip_config(python):
    """{key: value} of `pip config list` as `pip install` sees it."""
    try:
        proc = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError:
        return {}
    if proc.returncode != 0:
        return {}
    found = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^(:env:|[\w-]+)\.([\w-]+)=(.*)$", line)
        if not match or match.group(1) not in PIP_SECTIONS:
            continue
        section, key, value = match.groups()
        key = "timeout" if key == "default-timeout" else key
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
        found.setdefault(key, {})[section] = value
    return {
        key: by[max(by, key=PIP_SECTIONS.index)] for key, by in found.items()
    }


def on_this_host(word):
    """A file:// URL or a path: nothing the build can read."""
    return word.startswith(("file:", "/", ".", "~"))


def pip_secrets(python, out):
    """Writes out/pip.conf and out/pip-cert.pem; returns what went in."""
    config = pip_config(python)
    lines, passed, left_out = ["[global]"], [], []
    for key in PIP_KEYS:
        if key not in config:
            continue
        words = str(config[key]).split()
        kept = [w for w in words if not on_this_host(w)]
        left_out += [f"{key} {w}" for w in words if on_this_host(w)]
        if kept:
            lines.append(f"{key} = {' '.join(kept)}")
            passed.append(key)
    cert = (
        config.get("cert")
        or os.environ.get("SSL_CERT_FILE")
        or ssl.get_default_verify_paths().cafile
        or SYSTEM_TRUST
    )
    cert_out = os.path.join(out, PIP_CERT_ID)
    if os.path.isfile(cert):
        shutil.copyfile(cert, cert_out)
        lines.append(f"cert = /run/secrets/{PIP_CERT_ID}")
        passed.append(f"cert ({cert})")
    else:
        open(cert_out, "w").close()
    with open(os.path.join(out, PIP_CONF_ID), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(
        "pip settings passed as build secrets: "
        + (", ".join(passed) or "none")
    )
    for item in left_out:
        print(f"  left out (a path on this host): {item}")
    return [
        (PIP_CONF_ID, os.path.join(out, PIP_CONF_ID)),
        (PIP_CERT_ID, cert_out),
    ]


# --- the Dockerfile's bases ---------------------------------------------------


def base_images(dockerfile, build_args):
    """The images the FROM lines name, after ARG defaults and overrides."""
    args, stages, bases = {}, set(), []
    with open(dockerfile) as f:
        text = re.sub(r"\\\n", " ", f.read())
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0].upper() == "ARG" and not stages and not bases:
            name, _, default = words[1].partition("=")
            args.setdefault(name, default)
        elif words[0].upper() == "FROM":
            image = re.sub(
                r"\$\{?(\w+)\}?",
                lambda m: build_args.get(m.group(1), args.get(m.group(1), "")),
                [w for w in words[1:] if not w.startswith("--")][0],
            )
            if len(words) >= 4 and words[-2].upper() == "AS":
                stages.add(words[-1])
            if (
                image not in stages
                and image != "scratch"
                and image not in bases
            ):
                bases.append(image)
    return bases


def ensure_base(image):
    """The base in buildah's storage: there, pulled, or made by debootstrap."""
    have = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], capture_output=True
    )
    if have.returncode == 0:
        return
    print(f"{image}: not in buildah's storage, pulling")
    try:
        pull = subprocess.run(
            ["buildah", "pull", "--quiet", image],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if pull.returncode == 0:
            return
        why = pull.stderr.strip().splitlines()[-1:] or ["failed"]
    except subprocess.TimeoutExpired:
        why = ["timed out"]
    match = re.fullmatch(
        r"(?:docker\.io/(?:library/)?)?debian:(\w+)-slim", image
    )
    if not match:
        fail(
            f"no registry has {image} ({why[0]}), and only Debian's "
            f"slim bases can be made here"
        )
    print(
        f"{image}: no registry has it ({why[0]}); making it with debootstrap"
    )
    subprocess.run(
        [
            DEBIAN_BASE,
            match.group(1),
            f"localhost/debian:{match.group(1)}-slim",
        ],
        check=True,
    )


# --- the build ----------------------------------------------------------------


def docker_answers():
    if not shutil.which("docker"):
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=30
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


def engine_of(choice):
    if choice == "docker" or (choice == "auto" and docker_answers()):
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    if choice == "buildah":
        fail("buildah is missing (apt-get install buildah)")
    fail(
        "no Docker engine answers and buildah is missing "
        "(apt-get install buildah debootstrap)"
    )


def build_command(
    engine, dockerfile, tag, build_args, secrets, target=None, no_cache=False
):
    rel = os.path.relpath(dockerfile, ROOT)
    secret_args = [f"--secret=id={i},src={p}" for i, p in secrets]
    arg_args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    if target:
        arg_args.append(f"--target={target}")
    if no_cache:
        arg_args.append("--no-cache")
    if engine == "docker":
        proxies = [
            f"--build-arg={n}={os.environ[n]}"
            for v in PROXY_VARS
            for n in (v, v.lower())
            if n in os.environ
        ]
        return [
            "docker",
            "build",
            "-f",
            rel,
            *secret_args,
            *arg_args,
            *proxies,
            "-t",
            tag,
            ".",
        ]
    isolation = os.environ.get("BUILDAH_ISOLATION", "chroot")
    return [
        "buildah",
        "bud",
        "--format",
        "docker",
        "--layers",
        "--jobs=2",
        "--pull=never",
        f"--isolation={isolation}",
        "--ignorefile",
        rel + ".dockerignore",
        "-f",
        rel,
        *secret_args,
        *arg_args,
        "-t",
        tag,
        ".",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dockerfile")
    parser.add_argument("tag")
    parser.add_argument(
        "--build-arg", action="append", default=[], metavar="NAME=VALUE"
    )
    parser.add_argument(
        "--target", metavar="STAGE", help="build up to this stage only"
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run every step again (the base is kept)",
    )
    parser.add_argument(
        "--engine",
        choices=("auto", "docker", "buildah"),
        default=os.environ.get("IMAGE_ENGINE", "auto"),
    )
    parser.add_argument(
        "--pip-python",
        default=sys.executable,
        help="the Python whose pip settings the build uses "
        "(default: this one)",
    )
    opts = parser.parse_args(argv)
    dockerfile = os.path.abspath(opts.dockerfile)
    if not os.path.isfile(dockerfile):
        fail(f"no {opts.dockerfile}")
    build_args = dict(a.partition("=")[::2] for a in opts.build_arg)

    engine = engine_of(opts.engine)
    print(f"engine: {engine}")
    if engine == "buildah":
        if os.geteuid() != 0:
            fail("buildah builds here need root (rootful storage, chroot)")
        for image in base_images(dockerfile, build_args):
            ensure_base(image)
    with tempfile.TemporaryDirectory(prefix="pip-secrets.") as out:
        secrets = pip_secrets(opts.pip_python, out)
        command = build_command(
            engine,
            dockerfile,
            opts.tag,
            build_args,
            secrets,
            opts.target,
            opts.no_cache,
        )
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        print("+ " + " ".join(command), flush=True)
        status = subprocess.run(command, cwd=ROOT, env=env).returncode
    if status != 0:
        fail(f"{engine} failed ({status})")
    print(f"built {opts.tag} with {engine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
