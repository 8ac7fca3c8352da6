#!/bin/sh
# Lays out the example gateway as an nginx prefix, ready for
#
#   nginx -p DEST -c conf/nginx.conf -g 'daemon off;'
#
# conf/ of this repository, the module in DEST/output/ where conf/nginx.conf
# loads it from, and logs/. Both images run this at build time; the tests run
# it on the host and start what it lays out.
#
#   docker/prepare-prefix.sh DEST [--module SO] [--listen ADDR] [--user USER]
#                                 [--console-logs]
#
#   --module SO     the module to install (default: output/ngx_http_mosn_module.so)
#   --listen ADDR   the address of the gateway's port 2990; default: every
#                   interface (the demo sites stay on 127.0.0.1)
#   --user USER     nginx's `user`: its workers, and so the Python workers,
#                   run as USER when nginx starts as root
#   --console-logs  error.log to stderr and access.log to stdout, for a
#                   container's log driver

set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
usage="usage: $0 DEST [--module SO] [--listen ADDR] [--user USER] [--console-logs]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
dest=$1
shift
module=$root/output/ngx_http_mosn_module.so
listen=
user=
console=
while [ $# -gt 0 ]; do
    case $1 in
        --module) module=${2:?$usage}; shift 2 ;;
        --listen) listen=${2:?$usage}; shift 2 ;;
        --user) user=${2:?$usage}; shift 2 ;;
        --console-logs) console=1; shift ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done

if [ ! -f "$module" ]; then
    echo "no module at $module (nginx_module/build.sh builds it)" >&2
    exit 1
fi
if [ -n "$user" ] && ! id "$user" >/dev/null 2>&1; then
    echo "no user $user on this system" >&2
    exit 1
fi

mkdir -p "$dest/conf" "$dest/output" "$dest/logs"
cp "$root/conf/nginx.conf" "$root/conf/mosn.json" "$dest/conf/"
# a new file renamed into place: a running nginx keeps the module it mapped
cp "$module" "$dest/output/.ngx_http_mosn_module.so.new"
mv -f "$dest/output/.ngx_http_mosn_module.so.new" \
      "$dest/output/ngx_http_mosn_module.so"

conf=$dest/conf/nginx.conf
if ! grep -q '^load_module  *output/ngx_http_mosn_module\.so;' "$conf" ||
   ! grep -q '^ *listen  *127\.0\.0\.1:2990;' "$conf"; then
    echo "conf/nginx.conf changed shape: load_module output/... and" \
         "listen 127.0.0.1:2990 are expected" >&2
    exit 1
fi

# the gateway's port on the address asked; the demo sites are not touched
if [ -z "$listen" ]; then
    sed -i 's/^\( *listen  *\)127\.0\.0\.1:2990;/\12990;/' "$conf"
else
    sed -i "s/^\( *listen  *\)127\.0\.0\.1:2990;/\1$listen:2990;/" "$conf"
fi
if [ -n "$user" ]; then
    group=$(id -gn "$user")
    sed -i "/^load_module /a user  $user $group;" "$conf"
    # pyworker opens the MOSN log (logs/mosn-err.log) as USER
    touch "$dest/logs/mosn-err.log"
    chown "$user:$group" "$dest/logs/mosn-err.log"
fi
if [ -n "$console" ]; then
    ln -sf /dev/stderr "$dest/logs/error.log"
    ln -sf /dev/stdout "$dest/logs/access.log"
fi

echo "$dest: conf/nginx.conf conf/mosn.json output/ngx_http_mosn_module.so logs/"
