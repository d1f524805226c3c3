# nginx.bash -- sourced by run.sh and h2.sh: nginx (1 worker) on loopback
# serving a 1,020-byte JSON document from a temporary directory.
#   start_nginx [LISTEN_FLAGS] [HTTP_LINES] [SERVER_LINES]
# sets dir (made here unless the caller made it already; removed at exit,
# nginx stopped) and port. The port comes from
# 20000-32000, below the kernel's ephemeral range, tried a few times: a
# port found free can still be taken before nginx binds it.
start_nginx() {
  local flags=${1:-} http_lines=${2:-} server_lines=${3:-}
  dir=${dir:-$(mktemp -d /tmp/sluice-bench.XXXXXX)}
  trap '/usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -s stop 2>/dev/null; sleep 0.2; rm -rf "$dir"' EXIT
  mkdir -p "$dir/html"
  chmod 755 "$dir" "$dir/html"
  printf '{"symbol":"BTCUSDT","price":97123.5,"pad":"%s"}' "$(head -c 975 /dev/zero | tr '\0' x)" >"$dir/html/doc.json"
  chmod 644 "$dir/html/doc.json"
  port=
  local _
  for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 12000))
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
$http_lines
  types { application/json json; }
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  server {
    listen 127.0.0.1:$port $flags backlog=4096; root $dir/html;
$server_lines
  }
}
CONF
    /usr/sbin/nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>/dev/null && return 0
    port=
  done
  echo "nginx could not bind a port" >&2
  exit 1
}
