#!/bin/sh
# Fetches the nginx source of a newer Debian release (trixie: nginx 1.26)
# without touching the system's apt configuration: a private sources list,
# package lists and cache under build/, then `apt-get source
# --download-only`, which checks the tarball against the release's signed
# index.  Only the upstream tarball is used (Debian's packaging is not
# needed, and its .dsc may be gone from the mirror); it is kept, so later
# runs need no network.  Prints the unpacked source directory.
#
#   nginx_module/fetch-nginx.sh [SUITE]        (default: trixie)

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-trixie}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
dir=$root/build/nginx-$suite

found() {
    ls "$dir"/dl/nginx_*.orig.tar.gz 2>/dev/null | head -1
}

tarball=$(found)

if [ -z "$tarball" ]; then
    mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" \
             "$dir/dl"

    cat >"$dir/apt/$suite.sources" <<EOF
Types: deb-src
URIs: $mirror
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

    set -- -q -o "Dir::Etc::sourceparts=$dir/apt" \
           -o Dir::Etc::sourcelist=/dev/null \
           -o "Dir::State::Lists=$dir/apt/lists" \
           -o "Dir::Cache=$dir/apt/cache" \
           -o APT::Sandbox::User=root

    apt-get "$@" update >"$dir/apt/update.log" 2>&1 || {
        cat "$dir/apt/update.log" >&2
        echo "cannot read $suite's source index from $mirror" >&2
        exit 1
    }

    # the .dsc and Debian's packaging may 404: the tarball is what counts,
    # and apt keeps it only if its checksum matches the signed index
    (cd "$dir/dl" && apt-get "$@" source --download-only nginx) \
        >"$dir/apt/source.log" 2>&1 || true

    tarball=$(found)

    if [ -z "$tarball" ]; then
        cat "$dir/apt/source.log" >&2
        echo "no nginx source tarball from $suite" >&2
        exit 1
    fi
fi

version=$(basename "$tarball" | sed 's/^nginx_\(.*\)\.orig\.tar\.gz$/\1/')
src=$dir/nginx-$version

if [ ! -x "$src/configure" ]; then
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xzf "$tarball" -C "$src.tmp" --strip-components=1
    rm -rf "$src"
    mv "$src.tmp" "$src"
fi

echo "$src"
