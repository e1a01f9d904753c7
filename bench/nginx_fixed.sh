#!/bin/sh
# A local HTTPS endpoint that answers at once with a fixed token: nginx on a
# free loopback port with the test CA's server certificate. For benchmarks
# (token refreshes, API calls) that must measure the client, not a server.
#
#   nginx_fixed.sh start DIR   start nginx with DIR as its prefix (made if
#                              missing); prints shell assignments:
#                                NGINX_URL=https://127.0.0.1:PORT
#                                NGINX_CA=DIR/pki/ca.pem   (trust this)
#                                NGINX_PID=PID
#                              and writes the same to DIR/nginx.env
#   nginx_fixed.sh stop DIR    stop the nginx started in DIR
#
# Every path answers POST and GET alike:
#   /token   200 {"access_token":"ya29.bench-fixed-token","expires_in":3599,
#            "token_type":"Bearer"}
#   /json    200 {"kind":"bench#fixed","items":[]}
#   anything else 404 (JSON)
# Keep-alive is unlimited, access logging off. The PKI comes from
# spec/support/mkcerts.sh (made in DIR/pki on first start). nginx runs in
# the foreground of a background job (daemon off) so the PID is its own.
set -eu

cmd=${1:?usage: nginx_fixed.sh start|stop DIR}
dir=${2:?usage: nginx_fixed.sh start|stop DIR}
here=$(cd "$(dirname "$0")" && pwd -P)
NGINX=${NGINX:-/usr/sbin/nginx}
PYTHON=/usr/bin/python3

case $cmd in
stop)
  [ -f "$dir/nginx.env" ] || exit 0
  pid=$(sed -n 's/^NGINX_PID=//p' "$dir/nginx.env")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
      sleep 0.1; i=$((i + 1))
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/nginx.env"
  exit 0
  ;;
start) ;;
*) echo "nginx_fixed.sh: unknown command $cmd" >&2; exit 2 ;;
esac

mkdir -p "$dir/tmp" "$dir/logs"
dir=$(cd "$dir" && pwd -P)
sh "$here/../spec/support/mkcerts.sh" "$dir/pki"

# nginx's workers run as `nobody` unless told otherwise; as root, keep them
# root so they can read the key in a private temporary directory.
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

free_port() {
  "$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

tries=0
while :; do
  port=$(free_port)
  cat >"$dir/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $dir/pki/server.pem;
    ssl_certificate_key $dir/pki/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    default_type application/json;
    location = /token {
      return 200 '{"access_token":"ya29.bench-fixed-token","expires_in":3599,"token_type":"Bearer"}';
    }
    location = /json {
      return 200 '{"kind":"bench#fixed","items":[]}';
    }
    location / {
      return 404 '{"error":{"code":404,"message":"not found","status":"NOT_FOUND"}}';
    }
  }
}
EOF
  : >"$dir/logs/error.log"
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" >"$dir/logs/stdout.log" 2>&1 &
  pid=$!
  # Ready when the port accepts TLS; gone when the port was taken.
  i=0
  ok=0
  while [ $i -lt 100 ]; do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if curl -s -o /dev/null --cacert "$dir/pki/ca.pem" --max-time 1 \
        "https://127.0.0.1:$port/json" 2>/dev/null; then
      ok=1; break
    fi
    sleep 0.05; i=$((i + 1))
  done
  [ $ok = 1 ] && break
  kill "$pid" 2>/dev/null || true
  tries=$((tries + 1))
  if [ $tries -ge 5 ]; then
    echo "nginx_fixed.sh: nginx did not start:" >&2
    cat "$dir/logs/error.log" "$dir/logs/stdout.log" >&2
    exit 1
  fi
done

{
  echo "NGINX_URL=https://127.0.0.1:$port"
  echo "NGINX_CA=$dir/pki/ca.pem"
  echo "NGINX_PID=$pid"
} | tee "$dir/nginx.env"
