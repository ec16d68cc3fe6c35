#!/bin/bash
# The acceptance run of the decentralised ring, across "hosts": every party in a network namespace of its own.
#
#   sudo scripts/acceptance-netns.sh            (as root; DEEPRING=binary MNIST=folder COUNT=10000 WORK=/tmp/… to change)
#
# Hosts (namespaces on one bridge, 10.77.0.0/24): `db` runs PostgreSQL (TLS, verify-full, a login role per party,
# SCRAM passwords); `owner` runs `owner serve`; one namespace per block and per spare runs `block serve`; `querent`
# asks all COUNT MNIST test images one at a time. The ring is sealed on the owner's host, then each party gets a copy
# of ONLY its own folder in a private directory (its bundle, its password file, the CA certificate), and the sealed
# folder is deleted. At the end: the querent's logits are compared bit for bit with the plain model's (rebuilt from a
# copy of the model file on this host, through an embedded ring), `ledger audit` runs from the owner's host, and each
# serving process's open files (/proc/PID/fd) are listed and checked to lie inside its own directory.
# FAULTS=1: during the stream, kill -9 a block, then the owner, then the database server (pg_ctl -m immediate), each
# started again; the querent asks a failed query again (--retries 5), and the same checks must hold at the end.
# Everything it made — namespaces, bridge, server, processes — is removed on exit, however it ends.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "acceptance-netns.sh: run as root (it makes network namespaces)" >&2; exit 2; }
B=$(realpath "${DEEPRING:-.build/release/deepring}")
D=$(realpath "${MNIST:-../shared/data/mnist}")
N=${COUNT:-10000}
W=${WORK:-/tmp/deepring-acceptance}
NET=10.77.0
BR=drbr0
PGBIN=""; for b in /usr/lib/postgresql/*/bin; do [ -x "$b/initdb" ] && PGBIN=$b; done
[ -n "$PGBIN" ] || { echo "acceptance-netns.sh: no PostgreSQL server (apt-get install postgresql)" >&2; exit 2; }
[ -x "$B" ] || { echo "acceptance-netns.sh: $B is missing (swift build -c release)" >&2; exit 2; }

spaces=()
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  [ -e "$W/db/data/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/db/data" -m fast -w stop >/dev/null 2>&1
  for s in "${spaces[@]}"; do ip netns pids "dr-$s" 2>/dev/null | xargs -r kill -KILL; ip netns del "dr-$s" 2>/dev/null; done
  ip link del $BR 2>/dev/null
}
trap cleanup EXIT

step() { echo "[$(date +%T)] $*"; }

# --- hosts -----------------------------------------------------------------------------------------------------
host() {   # host NAME NUMBER: a namespace with one address on the bridge
  local n=$1 k=$2
  ip netns add "dr-$n"; spaces+=("$n")
  ip link add "drh$k" type veth peer name eth0 netns "dr-$n"
  ip link set "drh$k" master $BR up
  ip -n "dr-$n" addr add "$NET.$k/24" dev eth0
  ip -n "dr-$n" link set eth0 up
  ip -n "dr-$n" link set lo up
  mkdir -p "$W/hosts/$n"; chmod 700 "$W/hosts/$n"
}
on() { local n=$1; shift; ip netns exec "dr-$n" env DEEPRING_HOME="$W/hosts/$n/home" "$@"; }

rm -rf "$W"; mkdir -p "$W/hosts"
ip link del $BR 2>/dev/null || true
ip link add $BR type bridge; ip link set $BR up
host db 1; host owner 2; host querent 3

# --- the database host -------------------------------------------------------------------------------------------
step "PostgreSQL on $NET.1 (TLS, a certificate for that address)"
mkdir -p "$W/db"; chown postgres "$W/db"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/db/data" -A trust -U postgres >/dev/null
( cd "$W/db"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=DeepRing acceptance CA" -keyout ca.key -out ca.crt >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$NET.1" -keyout server.key -out server.csr >/dev/null 2>&1
  printf 'subjectAltName=IP:%s.1\n' $NET > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt >/dev/null 2>&1
  chmod 600 server.key ca.key; chown postgres server.key server.crt; rm -f server.csr server.ext )
cat >> "$W/db/data/postgresql.conf" <<EOF
ssl = on
ssl_cert_file = '$W/db/server.crt'
ssl_key_file = '$W/db/server.key'
max_connections = 200
EOF
cat > "$W/db/data/pg_hba.conf" <<EOF
local all postgres trust
hostssl all all $NET.0/24 scram-sha-256
EOF
ip netns exec dr-db runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/db/data" -l "$W/db/server.log" -w -t 60 \
  -o "-p 5432 -k $W/db -c listen_addresses=$NET.1" start </dev/null >/dev/null
admin() { psql -h "$W/db" -U postgres -d "${1:-postgres}" -qAt -v ON_ERROR_STOP=1 -c "$2"; }
admin postgres "CREATE DATABASE ring"
secret() { head -c 18 /dev/urandom | base64 | tr '+/' '-_'; }
tls="sslmode=verify-full&sslrootcert="
url() { echo "postgres://$1@$NET.1:5432/ring?${tls}$W/hosts/$2/ca.crt"; }
login() {   # login ROLE HOST GROUP: a login role for one party, its password in that host's folder only
  local pw; pw=$(secret)
  admin ring "CREATE ROLE \"$1\" LOGIN PASSWORD '$pw'${3:+ IN ROLE $3}"
  (umask 077; echo "$pw" > "$W/hosts/$2/password"); cp "$W/db/ca.crt" "$W/hosts/$2/ca.crt"
}
# The database's administrator runs `ledger init` (here from the owner's host, over TLS, as the superuser with a
# password); the owner then serves with a member's login of its own.
apw=$(secret); admin postgres "ALTER ROLE postgres PASSWORD '$apw'"
(umask 077; echo "$apw" > "$W/admin-password")
mkdir -p "$W/hosts/owner/home"
login ownerrole owner ""
on owner "$B" ledger init --ledger "$(url postgres owner)" --password-file "$W/admin-password" | tail -1
admin ring "GRANT deepring_member TO ownerrole; GRANT pg_signal_backend TO ownerrole"   # the watchdog (README)

# --- seal on the owner's host --------------------------------------------------------------------------------------
step "train (1 epoch) and seal, on the owner's host"
mkdir -p "$W/model"
"$B" train --model mlp --dataset mnist --data "$D" --epochs 1 --out "$W/model/mlp.safetensors" 2>&1 | tail -1
on owner "$B" seal "$W/model/mlp.safetensors" --ring "$W/hosts/owner/sealed" --spares 1 \
  --ledger "$(url ownerrole owner)" --password-file "$W/hosts/owner/password" > "$W/seal.out"
fp=$(grep -o 'SHA256:[A-Za-z0-9+/=]*' "$W/seal.out" | head -1)
echo "  owner key $fp (the querent pins it)"
S="$W/hosts/owner/sealed"
blocks=$(ls "$S/blocks"); spares=$(ls "$S/spares")

# --- each party gets its own folder, and nothing else --------------------------------------------------------------
k=10
for id in $blocks; do
  host "b-${id:0:8}" $k; k=$((k + 1))
  cp -a "$S/blocks/$id" "$W/hosts/b-${id:0:8}/$id"
  login "block_${id:0:8}" "b-${id:0:8}" deepring_member
done
for id in $spares; do
  host "s-${id:0:8}" $k; k=$((k + 1))
  cp -a "$S/spares/$id" "$W/hosts/s-${id:0:8}/$id"
  login "spare_${id:0:8}" "s-${id:0:8}" deepring_member
done
mkdir -p "$W/hosts/owner/ring"
cp -a "$S/owner" "$S/ring.json" "$W/hosts/owner/ring/"
cp "$S/ring.json" "$W/hosts/querent/ring.json"
login alice querent deepring_querent
rm -rf "$S"   # the sealed folder is gone: every process has only its own copy

# --- start every party in its own namespace -----------------------------------------------------------------------
step "start the owner, $(echo $blocks | wc -w) blocks and $(echo $spares | wc -w) spare, each in its own namespace"
declare -A cmd
serve() {   # serve HOST ROLE-ARGS...: remember how the host's process starts, and start it
  local n=$1; shift
  cmd[$n]=$(printf '%q ' "$@")
  start "$n"
}
start() {   # (again, after a kill -9: the same command on the same folder)
  local n=$1
  eval "on $n \"\$B\" ${cmd[$n]} --password-file \"$W/hosts/$n/password\"" >> "$W/hosts/$n/serve.log" 2>&1 &
  pids+=($!)
}
serve owner owner serve --ring "$W/hosts/owner/ring" --ledger "$(url ownerrole owner)"
for id in $blocks; do serve "b-${id:0:8}" block serve --dir "$W/hosts/b-${id:0:8}/$id" --ledger "$(url "block_${id:0:8}" "b-${id:0:8}")"; done
for id in $spares; do serve "s-${id:0:8}" block serve --spare --dir "$W/hosts/s-${id:0:8}/$id" --ledger "$(url "spare_${id:0:8}" "s-${id:0:8}")"; done
sleep 3

# --- the querent, on a host of its own -----------------------------------------------------------------------------
step "querent on $NET.3: $N MNIST test images, one per query"
mkdir -p "$W/hosts/querent/home"
retries=0; [ -n "${FAULTS:-}" ] && retries=5
t0=$(date +%s.%N)
on querent "$B" query --ring "$W/hosts/querent/ring.json" --ledger "$(url alice querent)" \
  --password-file "$W/hosts/querent/password" --owner-key "$fp" --dataset mnist --data "$D" --count "$N" --batch 1 \
  --json --timeout 60 --retries "$retries" > "$W/querent.json" 2> "$W/querent.err" &
querent=$!
if [ -n "${FAULTS:-}" ]; then
  # kill -9 of a block, of the owner, and of the database server during the stream; each started again.
  kill9() { ip netns pids "dr-$1" | xargs -r kill -KILL; }   # the host's deepring process itself, not its shell
  delivered() { admin ring "SELECT count(*) FROM deepring_entries WHERE kind = 'delivery'"; }
  at() { while [ "$(delivered)" -lt "$1" ]; do kill -0 $querent 2>/dev/null || return 1; sleep 0.5; done; }
  victim="b-$(echo $blocks | cut -d' ' -f2 | cut -c1-8)"
  at $((N / 4)) && { step "kill -9 block $victim at $(delivered) deliveries; started again 2 s later"
    kill9 "$victim"; sleep 2; start "$victim"; }
  at $((N / 2)) && { step "kill -9 the owner at $(delivered) deliveries; started again 2 s later"
    kill9 owner; sleep 2; start owner; }
  at $((3 * N / 4)) && { step "PostgreSQL stopped as a crash would (pg_ctl -m immediate) at $(delivered) deliveries; started 3 s later"
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/db/data" -m immediate -w stop >/dev/null; sleep 3
    ip netns exec dr-db runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/db/data" -l "$W/db/server.log" -w -t 60 \
      -o "-p 5432 -k $W/db -c listen_addresses=$NET.1" start </dev/null >/dev/null; }
fi
wait $querent || { echo "query failed:"; tail -5 "$W/querent.err"; exit 1; }
step "answered in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s; $(grep -c 'asking again' "$W/querent.err" || true) queries asked again"
grep 'asking again' "$W/querent.err" | head -5 || true

# --- open files: each process only inside its own folder ---------------------------------------------------------
step "open files of each serving process"
bad=0
for n in owner $(for id in $blocks; do echo "b-${id:0:8}"; done) $(for id in $spares; do echo "s-${id:0:8}"; done); do
  for p in $(ip netns pids "dr-$n"); do
    files=$(ls -l /proc/$p/fd 2>/dev/null | grep -o "$W[^ ]*" | sort -u || true)
    echo "  $n (pid $p): $(echo $files | tr '\n' ' ')"
    for f in $files; do case "$f" in "$W/hosts/$n/"*) ;; *) echo "  OUTSIDE ITS FOLDER: $f"; bad=1 ;; esac; done
  done
done

# --- audit, from the owner's host, while the ring still runs ------------------------------------------------------
step "ledger audit (owner's host)"
on owner "$B" ledger audit --ring "$W/hosts/owner/ring" --ledger "$(url ownerrole owner)" \
  --password-file "$W/hosts/owner/password" | tail -2

for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()

# --- the plain model, on this host ---------------------------------------------------------------------------------
step "the plain model's logits (embedded ring of the same model file, its plain forward)"
DEEPRING_HOME="$W/plain-home" "$B" seal "$W/model/mlp.safetensors" --ring "$W/plain" >/dev/null
DEEPRING_HOME="$W/plain-home" "$B" query --ring "$W/plain" --dataset mnist --data "$D" --count "$N" --batch 500 --json \
  > "$W/plain.json" 2> "$W/plain.err"
python3 - "$W/querent.json" "$W/plain.json" "$bad" <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
print("decentralised:", {k: a.get(k) for k in ["count", "queries", "accuracy", "logits_sha256", "latency_p50_ms"]})
print("plain model:  ", {"logits_sha256": b.get("plain_logits_sha256"), "embedded_logits_sha256": b.get("logits_sha256")})
ok = a.get("count") == b.get("count") and a["logits_sha256"] == b["plain_logits_sha256"] == b["logits_sha256"]
print("BIT-IDENTICAL to the plain model" if ok else "DIFFERENT from the plain model")
bad = sys.argv[3] != "0"
if bad: print("a process had a file outside its own folder open")
sys.exit(0 if ok and not bad else 1)
PY
