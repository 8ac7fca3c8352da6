#!/bin/sh
# Builds ngx_http_mosn_module.so for OpenResty, against OpenResty's own
# nginx: the nginx tree bundled in the OpenResty source release of the same
# version as the openresty binary. OpenResty patches nginx, so a module is
# built against its patched headers, not against plain nginx of the same
# number. The build itself is nginx_module/build.sh (configure --with-compat
# --add-dynamic-module), which writes output/.
#
#   docker/build-module-openresty.sh SRC [NGINX_BINARY]
#
# SRC: an unpacked openresty-X.Y.Z.N release (its bundle/nginx-X.Y.Z is
# used), or a plain nginx source tree. NGINX_BINARY, when given (in the
# image: /usr/local/openresty/nginx/sbin/nginx), must be of the sources'
# version and built --with-compat, or nothing is built: such a module would
# be refused at load time, or worse, load with the wrong structures.

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OPENRESTY_SRC_DIR [NGINX_BINARY]" >&2
    exit 2
fi
src=$1
binary=${2:-}

# the nginx tree: bundle/nginx-X.Y.Z of an OpenResty release, or SRC itself
set -- "$src"/bundle/nginx-[0-9]*
if [ -d "$1" ]; then
    if [ $# -ne 1 ]; then
        echo "more than one nginx tree in $src/bundle: $*" >&2
        exit 1
    fi
    nginx_src=$1
elif [ -f "$src/src/core/nginx.h" ]; then
    nginx_src=$src
else
    echo "no nginx sources in $src (want an unpacked openresty-X.Y.Z.N" \
         "release with bundle/nginx-X.Y.Z)" >&2
    exit 1
fi

# what the sources call themselves: "openresty/1.27.1.2" (OpenResty's
# nginx.h appends its fourth number to NGINX_VERSION) or "nginx/1.22.1"
h=$nginx_src/src/core/nginx.h
version=$(sed -n 's/^#define NGINX_VERSION *"\([^"]*\)".*/\1/p' "$h")
ver_line=$(grep '^#define NGINX_VER ' "$h" || true)
name=$(printf '%s\n' "$ver_line" | sed -n 's|.*"\([^"/]*\)/" *NGINX_VERSION.*|\1|p')
suffix=$(printf '%s\n' "$ver_line" | sed -n 's/.*NGINX_VERSION *"\([^"]*\)".*/\1/p')
if [ -z "$version" ] || [ -z "$name" ]; then
    echo "cannot read the version from $h" >&2
    exit 1
fi
source_ver=$name/$version$suffix

if [ -n "$binary" ]; then
    info=$("$binary" -V 2>&1) || {
        echo "$binary -V failed: $info" >&2
        exit 1
    }
    binary_ver=$(printf '%s\n' "$info" | sed -n 's/^nginx version: \([^ ]*\).*/\1/p')
    if [ "$binary_ver" != "$source_ver" ]; then
        echo "$binary is $binary_ver but the sources in $nginx_src are" \
             "$source_ver: fetch the sources of the binary's version" >&2
        exit 1
    fi
    case $info in
        *--with-compat*) ;;
        *)
            echo "$binary was not built --with-compat: a dynamic module" \
                 "built apart from it will not load" >&2
            exit 1
            ;;
    esac
fi

echo "building the module against $source_ver in $nginx_src"
exec "$root/nginx_module/build.sh" "$nginx_src"
