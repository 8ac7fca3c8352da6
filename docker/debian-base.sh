#!/bin/sh
# Makes the base image debian:SUITE-slim in buildah's local storage from
# Debian's mirror, for a machine that reaches the mirror but no container
# registry: debootstrap --variant=minbase, trimmed the way Debian's slim
# images are (no documentation, man pages or translations, now or in later
# installs), with apt pointed at the suite, its updates and its security
# archive. The root filesystem is kept as a tarball, so a second image (or
# a wiped storage) costs an import, not a debootstrap.
#
#   docker/debian-base.sh [SUITE] [IMAGE]
#
#   SUITE   default bookworm
#   IMAGE   default localhost/debian:SUITE-slim
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security),
# BASE_CACHE (default build/image of this tree; holds debian-SUITE.tar).
# Needs root, debootstrap and buildah.

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-bookworm}
image=${2:-localhost/debian:$suite-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache=${BASE_CACHE:-$root/build/image}
tarball=$cache/debian-$suite.tar

for tool in debootstrap buildah; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: $tool is missing (apt-get install $tool)" >&2
        exit 1
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "$0: debootstrap and buildah mount need root" >&2
    exit 1
fi

slim() {   # the trims of Debian's slim images, for this tree and later
    rootfs=$1
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
# as in Debian's slim images: no documentation but the copyright files
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    # a layer is written once, when its step ends: dpkg's fsyncs buy nothing
    echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright \
        -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    for dir in man info locale groff lintian linda; do
        rm -rf "${rootfs:?}/usr/share/$dir"/*
    done
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
# downloaded packages are not kept in an image's layers
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # the engine provides these at run time; nothing of this host stays
    : >"$rootfs/etc/hostname"
    rm -f "$rootfs/etc/resolv.conf"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
           "$rootfs"/tmp/* "$rootfs"/dev/*
}

if [ ! -f "$tarball" ]; then
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap --variant=minbase $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || {
        tail -20 "$cache/debootstrap.log" >&2
        exit 1
    }
    slim "$rootfs"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.new" .
    mv -f "$tarball.new" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
fi

container=$(buildah from scratch)
trap 'buildah rm "$container" >/dev/null 2>&1 || true' EXIT
mount=$(buildah mount "$container")
tar --numeric-owner -C "$mount" -xpf "$tarball"
buildah umount "$container" >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd bash "$container"
buildah commit --quiet --rm --format docker "$container" "$image" >/dev/null
trap - EXIT
echo "$image: Debian $suite from $tarball"
