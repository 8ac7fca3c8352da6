#!/bin/sh
# Builds ngx_http_mosn_module.so out of tree against the nginx sources
# that match the nginx binary (Debian's nginx-dev, or OpenResty's tree),
# and writes output/ with the module and the ring's ABI header.
#
#   nginx_module/build.sh [NGINX_SRC_DIR]

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-/usr/share/nginx/src}
work=$root/build/nginx

if [ ! -x "$src/configure" ]; then
    echo "no nginx sources in $src (apt-get install nginx-dev)" >&2
    exit 1
fi

flags=""
if [ -f "$src/conf_flags" ]; then
    # Debian keeps the flags of its nginx build as a bash array
    flags=$(bash -c ". '$src/conf_flags'; printf '%s ' \"\${NGX_CONF_FLAGS[@]}\"")
fi

# configured once per source tree, flags and module config; after that
# nginx's own Makefile recompiles only the files that changed
configured="$src $root $flags $(cksum < "$root/nginx_module/config")"
if [ "$(cat "$work/.configured" 2>/dev/null)" != "$configured" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    cp -r "$src/." "$work/"
    (
        cd "$work"
        # shellcheck disable=SC2086
        ./configure $flags --with-compat \
            --add-dynamic-module="$root/nginx_module" >configure.log 2>&1
    ) || {
        tail -30 "$work/configure.log" >&2
        exit 1
    }
    echo "$configured" > "$work/.configured"
fi
mkdir -p "$root/output"

cd "$work"
make -j2 -f objs/Makefile modules >make.log 2>&1 || { grep -E -A3 "error|Error" make.log >&2; exit 1; }

if grep -E "warning:" make.log >&2; then
    echo "the module must build without warnings" >&2
    exit 1
fi

# a running nginx maps the old file: replace it, never overwrite it
cp objs/ngx_http_mosn_module.so "$root/output/.ngx_http_mosn_module.so.new"
mv -f "$root/output/.ngx_http_mosn_module.so.new" \
      "$root/output/ngx_http_mosn_module.so"
cp "$root/shm_ring/shm_ring.h" "$root/output/"
echo "output/ngx_http_mosn_module.so output/shm_ring.h"
