#!/bin/bash
# A rehearsal of the acceptance run: 10,000 MNIST test images through a ring of separate processes (ring up, PostgreSQL,
# one spare), logits compared bit for bit with the embedded ring's.
set -u
B=${DEEPRING:-.build/release/deepring}
D=${MNIST:-../shared/data/mnist}
W=${WORK:-/tmp/deepring-rehearsal}; rm -rf $W; mkdir -p $W
export DEEPRING_HOME=$W/home   # DEEPRING_TEST_POSTGRES_URL: an admin URL of a server (scripts/postgres.sh start DIR writes DIR/env)
admin=$DEEPRING_TEST_POSTGRES_URL
db=deepring_r10k_$$
url="${admin%/*}/$db"
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
date
$B train --model mlp --dataset mnist --data $D --epochs 1 --out $W/mlp.safetensors 2>&1 | tail -1
$B ledger init --ledger "$url" | tail -1
$B seal $W/mlp.safetensors --ring $W/ringA --ledger "$url" --spares 1 | tail -2
$B ring up --ring $W/ringA --ledger "$url" --log-dir $W/logs > $W/up.out 2> $W/up.err &
up=$!
for _ in $(seq 1 200); do grep -q "^query:" $W/up.out 2>/dev/null && break; sleep 0.1; done
sleep 2
t0=$(date +%s.%N)
$B query --ring $W/ringA/ring.json --ledger "$url" --dataset mnist --data $D --count 10000 --batch 1 --json --timeout 60 > $W/a.json 2> $W/a.err
echo "processes query exit $?; $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
for p in $(pgrep -f "serve --.*$W"); do echo "pid $p: $(ls -l /proc/$p/fd 2>/dev/null | grep -o '$W[^ ]*' | sort -u | tr '\n' ' ')"; done > $W/fds.txt
kill -TERM $up; wait $up
$B ledger audit --ring $W/ringA --ledger "$url" | tail -1
$B seal $W/mlp.safetensors --ring $W/ringB | tail -1 >/dev/null
$B query --ring $W/ringB --dataset mnist --data $D --count 10000 --batch 100 --json > $W/b.json 2> $W/b.err
python3 - $W/a.json $W/b.json <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
print("processes:", {k: a.get(k) for k in ["count", "queries", "accuracy", "logits_sha256", "latency_p50_ms"]})
print("embedded: ", {k: b.get(k) for k in ["count", "accuracy", "logits_sha256", "plain_agreement"]})
print("BIT-IDENTICAL" if a["logits_sha256"] == b["logits_sha256"] else "DIFFERENT")
PY
grep -c "] rotated" $W/logs/owner.log; grep -h "evict\|refused\|error" $W/logs/*.log | head -5
psql "$admin" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
date
