#!/usr/bin/env bash
# A throw-away PostgreSQL server for tests and trials (never for a ring that matters).
#
#   scripts/postgres.sh start DIR [--port N]   initdb in DIR, start on loopback (a free port unless --port), TLS on
#   scripts/postgres.sh stop DIR [--immediate] stop it (--immediate: as a crash would, no shutdown checkpoint)
#   scripts/postgres.sh restart DIR            start a stopped server again, on the same port
#
# `start` makes a CA of its own and a server certificate for 127.0.0.1 and localhost, so TLS (sslmode=require and
# verify-full) can be tried, and writes DIR/env:
#   DEEPRING_TEST_POSTGRES_URL   the superuser's URL (trusted on loopback, no password)
#   DEEPRING_TEST_POSTGRES_CA    the CA certificate (sslrootcert=) that signed the server's certificate
# Other roles log in with a password (SCRAM-SHA-256). The server runs as the `postgres` user when started by root
# (PostgreSQL refuses to run as root).
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,13p' "$0"; exit 2; }
shift 2
port=""; mode=fast
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --immediate) mode=immediate; shift ;;
    *) echo "postgres.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# The server outlives this script: it must not inherit any descriptor but 0–2 from whoever ran the script (a
# caller waiting for a pipe or socket to close would wait for the server's end).
for fd in /proc/$$/fd/*; do
  fd=${fd##*/}
  [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
done

bindir=""
for b in /usr/lib/postgresql/*/bin; do [ -x "$b/initdb" ] && bindir=$b; done
[ -n "$bindir" ] || { echo "postgres.sh: no PostgreSQL server found (apt-get install postgresql)" >&2; exit 2; }

as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  for _ in $(seq 1 200); do
    local p=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "postgres.sh: no free port found" >&2; exit 1
}

start_server() {
  as_server "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $(cat "$dir/port") -k $dir -c listen_addresses=127.0.0.1" start </dev/null >/dev/null 2>&1
}

case "$cmd" in
  start)
    [ -e "$dir/data" ] && { echo "postgres.sh: $dir/data exists (use restart)" >&2; exit 2; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_server "$bindir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    # Certificates: a CA of this server's own, and the server's certificate signed by it.
    (
      cd "$dir"
      openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=DeepRing test CA" \
        -keyout ca.key -out ca.crt >/dev/null 2>&1
      openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr >/dev/null 2>&1
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > server.ext
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
        -out server.crt >/dev/null 2>&1
      chmod 600 server.key ca.key
      [ "$(id -u)" = 0 ] && chown postgres server.key server.crt
      rm -f server.csr server.ext
    )
    cat >> "$dir/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
max_connections = 200
EOF
    cat > "$dir/data/pg_hba.conf" <<EOF
local all postgres trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
EOF
    started=0
    for _ in 1 2 3 4 5; do
      echo "${port:-$(free_port)}" > "$dir/port"
      if start_server; then started=1; break; fi
      [ -n "$port" ] && break
    done
    [ "$started" = 1 ] || { echo "postgres.sh: the server did not start (see $dir/server.log)" >&2; tail -5 "$dir/server.log" >&2; exit 1; }
    p=$(cat "$dir/port")
    psql -h 127.0.0.1 -p "$p" -U postgres -d postgres -qAtc 'select 1' >/dev/null
    {
      echo "DEEPRING_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$p/postgres"
      echo "DEEPRING_TEST_POSTGRES_CA=$dir/ca.crt"
    } > "$dir/env"
    cat "$dir/env"
    ;;
  restart)
    start_server || { echo "postgres.sh: the server did not start (see $dir/server.log)" >&2; tail -5 "$dir/server.log" >&2; exit 1; }
    ;;
  stop)
    [ -e "$dir/data/postmaster.pid" ] || exit 0
    as_server "$bindir/pg_ctl" -D "$dir/data" -m "$mode" -w -t 60 stop </dev/null >/dev/null
    ;;
  *)
    echo "postgres.sh: unknown command $cmd" >&2; exit 2 ;;
esac
