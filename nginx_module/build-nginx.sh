#!/bin/sh
# Builds a newer nginx (Debian SUITE's source, fetched by fetch-nginx.sh)
# together with ngx_http_mosn_module, so that the module is built and
# tested against more than the system's nginx.  The build tree is kept:
# a second run rebuilds only what changed.  Prints the nginx binary and
# the module, e.g. for the tests:
#
#   set -- $(nginx_module/build-nginx.sh)
#   NGINX=$1 MOSN_MODULE=$2 pytest tests/integration
#
#   nginx_module/build-nginx.sh [SUITE]        (default: trixie)

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-trixie}
src=$("$root/nginx_module/fetch-nginx.sh" "$suite")
out=$root/build/nginx-$suite

# about Debian's own set, with what the tests use
flags="--with-compat --with-threads --with-pcre-jit \
    --error-log-path=stderr \
    --with-http_ssl_module --with-http_v2_module \
    --with-http_realip_module --with-http_auth_request_module \
    --with-http_stub_status_module --with-http_dav_module \
    --with-http_slice_module"

cd "$src"

# configured again when the flags or the module's file list change
stamp="$flags $root $(cksum <"$root/nginx_module/config")"

if [ ! -f objs/Makefile ] || [ "$(cat objs/.mosn-stamp 2>/dev/null)" != \
        "$stamp" ]; then
    # shellcheck disable=SC2086
    ./configure --prefix="$out/prefix" $flags \
        --add-dynamic-module="$root/nginx_module" \
        >"$out/configure.log" 2>&1 || {
        tail -30 "$out/configure.log" >&2
        exit 1
    }
    echo "$stamp" >objs/.mosn-stamp
fi

make -j2 -f objs/Makefile binary modules >"$out/make.log" 2>&1 || {
    grep -E -A3 "error|Error" "$out/make.log" >&2
    exit 1
}

if grep -E "(ngx_http_mosn|shm_[a-z]+)\.[ch].*warning:" \
        "$out/make.log" >&2; then
    echo "the module must build without warnings" >&2
    exit 1
fi

# a running nginx maps the old files: replace them, never overwrite them
mkdir -p "$out/sbin" "$out/modules"
cp objs/nginx "$out/sbin/.nginx.new"
mv -f "$out/sbin/.nginx.new" "$out/sbin/nginx"
cp objs/ngx_http_mosn_module.so "$out/modules/.ngx_http_mosn_module.so.new"
mv -f "$out/modules/.ngx_http_mosn_module.so.new" \
      "$out/modules/ngx_http_mosn_module.so"

echo "$out/sbin/nginx $out/modules/ngx_http_mosn_module.so"
