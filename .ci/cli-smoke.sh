#!/usr/bin/env bash
# Runs the CLI on the embedded default and on bad input: every bad input must give a message and exit 1
# (never a crash, which would exit with a signal status >= 128).
set -uo pipefail
bin=${1:-.build/release/deepring}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export DEEPRING_HOME="$tmp/home"   # owner pins (known_rings) of this run only
fail=0
pass=0

expect_exit() { # expected-code description command...
  local want=$1 what=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; sed 's/^/    /' "$tmp/err" | head -5; fail=$((fail + 1))
  else
    pass=$((pass + 1))
  fi
}

expect_exit 0 "demo" "$bin" demo --out "$tmp/demo0"
expect_exit 0 "demo --synthetic" "$bin" demo --synthetic --out "$tmp/demo"
expect_exit 0 "eval --json" "$bin" eval --model "$tmp/demo/mlp.safetensors" --dataset synthetic --json
python3 - "$tmp/out" <<'PY' || { echo "FAIL: eval --json output"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
assert 0 <= o["accuracy"] <= 1 and o["accuracy"] > 0.9, o["accuracy"]
PY
# Every kernel path gives the same bits: the portable path's evaluation equals the default path's.
cp "$tmp/out" "$tmp/eval-default.json"
expect_exit 0 "eval on the portable kernels" env DEEPRING_ISA=generic "$bin" eval --model "$tmp/demo/mlp.safetensors" --dataset synthetic --json
python3 - "$tmp/eval-default.json" "$tmp/out" <<'PY' || { echo "FAIL: eval differs between kernel paths"; fail=$((fail + 1)); }
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("accuracy", "correct", "confusion"):
    assert k in a and a[k] == b[k], (k, a.get(k), b.get(k))
PY
expect_exit 64 "DEEPRING_ISA names no path" env DEEPRING_ISA=sse9 "$bin" eval --model "$tmp/demo/mlp.safetensors" --dataset synthetic
grep -q "DEEPRING_ISA='sse9' names no instruction set" "$tmp/err" || { echo "FAIL: DEEPRING_ISA message"; fail=$((fail + 1)); }
if ! grep -q avx512 /proc/cpuinfo; then
  expect_exit 64 "DEEPRING_ISA=avx512 without AVX-512" env DEEPRING_ISA=avx512 "$bin" bench engine --only gemm
fi
expect_exit 1 "bench engine: unknown part" "$bin" bench engine --only nope
expect_exit 64 "bench engine: no rounds" "$bin" bench engine --rounds 0
expect_exit 0 "bench engine --only step --json" "$bin" bench engine --only step --json
python3 - "$tmp/out" <<'PY' || { echo "FAIL: bench engine --only step output"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
assert 0 < o["mlp_train_step_min_ms"] <= o["mlp_train_step_p25_ms"] <= o["mlp_train_step_median_ms"], o
PY
expect_exit 0 "train synthetic" "$bin" train --model mlp --dataset synthetic --epochs 1 --limit 2000 --out "$tmp/m.safetensors"

printf 'garbage' >"$tmp/bad.safetensors"
expect_exit 1 "garbage model file" "$bin" eval --model "$tmp/bad.safetensors" --dataset synthetic
head -c 1000 "$tmp/m.safetensors" >"$tmp/trunc.safetensors"
expect_exit 1 "truncated model file" "$bin" eval --model "$tmp/trunc.safetensors" --dataset synthetic
printf '\xff\xff\xff\xff\xff\xff\xff\x7f{}' >"$tmp/huge.safetensors"
expect_exit 1 "huge header length" "$bin" eval --model "$tmp/huge.safetensors" --dataset synthetic
expect_exit 1 "missing model file" "$bin" eval --model "$tmp/nope.safetensors" --dataset synthetic
mkdir -p "$tmp/empty"
expect_exit 1 "missing data set" "$bin" eval --model "$tmp/m.safetensors" --dataset mnist --data "$tmp/empty"
grep -q "train-images-idx3-ubyte" "$tmp/err" || { echo "FAIL: missing data set message does not say what to put"; fail=$((fail + 1)); }
mkdir -p "$tmp/badidx"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  printf '\x00\x00\x08\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff' >"$tmp/badidx/$f"
done
expect_exit 1 "hostile IDX dimensions" "$bin" eval --model "$tmp/m.safetensors" --dataset idx --data "$tmp/badidx"
# Ring: seal, verify, tamper, detect (exit 3), restore, audit.
expect_exit 0 "seal" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/ring"
expect_exit 0 "verify intact" "$bin" verify --ring "$tmp/ring"
blk=$(ls "$tmp/ring/blocks" | head -1)
python3 - "$tmp/ring/blocks/$blk/params.safetensors" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-77] ^= 0x20; open(p, "wb").write(b)
PY
expect_exit 3 "verify tampered" "$bin" verify --ring "$tmp/ring"
grep -q "$blk" "$tmp/out" || { echo "FAIL: verify did not name block $blk"; fail=$((fail + 1)); }
expect_exit 0 "verify --restore" "$bin" verify --ring "$tmp/ring" --restore
expect_exit 0 "verify restored" "$bin" verify --ring "$tmp/ring"
expect_exit 0 "query" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 300 --batch 100 --json
python3 - "$tmp/out" <<'PY' || { echo "FAIL: query --json output"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
assert o["plain_agreement"] == 1.0 and o["alarms"] == 0 and len(o["predictions"]) == 300 and o["accuracy"] > 0.5, o
PY
expect_exit 1 "query with the wrong input size" "$bin" query --ring "$tmp/ring" --dataset cifar10 --data "$tmp/empty"
# kill -9 in the middle of a query: the ledger stays intact, the query is reported incomplete, the next works.
# A kill can land between two queries; try until the last ledger entry shows a query in flight (≤ 25 tries).
for attempt in $(seq 1 25); do
  before=$("$bin" ledger show --ring "$tmp/ring" | wc -l)
  # (--verify-every 1000: otherwise most of the time goes to the authenticity check between queries)
  "$bin" query --ring "$tmp/ring" --dataset synthetic --batch 1 --verify-every 1000 >/dev/null 2>&1 &
  qpid=$!
  for _ in $(seq 1 300); do
    [ "$("$bin" ledger show --ring "$tmp/ring" | wc -l)" -gt $((before + 20)) ] && break
    sleep 0.1
  done
  kill -9 "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null
  "$bin" ledger show --ring "$tmp/ring" --last 1 | awk -F'\t' '{print $2}' | grep -Eq '^(query|layer)$' && break
done
expect_exit 0 "audit after kill -9" "$bin" ledger audit --ring "$tmp/ring"
expect_exit 0 "query after kill -9" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 5 --json
grep -q "incomplete" "$tmp/err" || { echo "FAIL: the interrupted query was not reported as incomplete"; fail=$((fail + 1)); }
expect_exit 0 "ledger audit" "$bin" ledger audit --ring "$tmp/ring"
expect_exit 0 "ledger show" "$bin" ledger show --ring "$tmp/ring" --json
expect_exit 0 "ring inspect" "$bin" ring inspect --ring "$tmp/ring"
blk=$(ls "$tmp/ring/blocks" | head -1)   # placements are reshuffled after every query
secret=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['signing'][:16])" "$tmp/ring/blocks/$blk/keys.json")
if grep -q "$secret" "$tmp/out"; then echo "FAIL: ring inspect printed a secret"; fail=$((fail + 1)); fi
expect_exit 1 "seal over an existing ring" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/ring"
expect_exit 1 "verify a non-ring" "$bin" verify --ring "$tmp/empty"
chmod 644 "$tmp/ring/owner/keys.json"
expect_exit 3 "world-readable secrets" "$bin" verify --ring "$tmp/ring"
grep -q "owner/keys.json" "$tmp/out" || { echo "FAIL: verify did not name the world-readable key file"; fail=$((fail + 1)); }
chmod 600 "$tmp/ring/owner/keys.json"

# --- The adversarial review's findings, replayed against the CLI. ---
rows() { "$bin" ledger show --ring "$tmp/ring" | wc -l; }
# 2. ring.json with the attacker's HPKE key for the ouroboros: query refuses before sending anything (exit 3).
cp "$tmp/ring/ring.json" "$tmp/ring.json.good"
python3 - "$tmp/ring/ring.json" <<'PY'
import json, sys
p = sys.argv[1]; m = json.load(open(p)); m["ouroboros"]["agreement"] = "11" * 32; json.dump(m, open(p, "w"))
PY
before=$(rows)
expect_exit 3 "query with a tampered ring.json" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 3
[ "$(rows)" = "$before" ] || { echo "FAIL: a query was sent to a tampered ring.json"; fail=$((fail + 1)); }
expect_exit 3 "verify a tampered ring.json" "$bin" verify --ring "$tmp/ring"
grep -q "ring.json" "$tmp/out" || { echo "FAIL: verify did not name ring.json"; fail=$((fail + 1)); }
expect_exit 0 "verify --restore re-issues ring.json" "$bin" verify --ring "$tmp/ring" --restore
cmp -s "$tmp/ring/ring.json" "$tmp/ring.json.good" || { echo "FAIL: ring.json was not re-issued"; fail=$((fail + 1)); }
# 2. A querent that pinned another owner refuses the ring.
expect_exit 3 "query with another pinned owner" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 3 \
  --owner-key "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
expect_exit 64 "malformed --owner-key" "$bin" query --ring "$tmp/ring" --dataset synthetic --owner-key nope
expect_exit 64 "--retries without --ledger" "$bin" query --ring "$tmp/ring" --dataset synthetic --retries 2
grep -q "served ring (--ledger)" "$tmp/err" || { echo "FAIL: --retries without --ledger does not say why"; fail=$((fail + 1)); }
expect_exit 64 "--retries out of range" "$bin" query --ring "$tmp/ring" --dataset synthetic --retries 1000 --ledger "$tmp/ring/ledger.sqlite"
# 2. block.json naming the attacker's successor key: named by verify, re-provisioned before the next query.
blk=$(ls "$tmp/ring/blocks" | head -1)
python3 - "$tmp/ring/blocks/$blk/block.json" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); d["successor"]["agreement"] = "22" * 32; json.dump(d, open(p, "w"))
PY
expect_exit 3 "verify a tampered block.json" "$bin" verify --ring "$tmp/ring"
grep -q "$blk" "$tmp/out" || { echo "FAIL: verify did not name block $blk"; fail=$((fail + 1)); }
expect_exit 0 "query repairs a tampered block.json first" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 1
grep -q "1 image in 1 query" "$tmp/out" || { echo "FAIL: query did not say '1 image in 1 query'"; fail=$((fail + 1)); }
expect_exit 0 "verify after the repair" "$bin" verify --ring "$tmp/ring"
# 4. Readers in a loop beside a running batched query: no damage, no false alarm.
"$bin" query --ring "$tmp/ring" --dataset synthetic --count 2000 --batch 40 --json >"$tmp/bg.out" 2>"$tmp/bg.err" &
qpid=$!
readers=0 reader_fail=0
while kill -0 "$qpid" 2>/dev/null; do
  "$bin" verify --ring "$tmp/ring" >"$tmp/r.out" 2>&1 || { reader_fail=$((reader_fail + 1)); sed 's/^/    /' "$tmp/r.out" | head -3; }
  "$bin" ledger audit --ring "$tmp/ring" >"$tmp/r.out" 2>&1 || { reader_fail=$((reader_fail + 1)); sed 's/^/    /' "$tmp/r.out" | head -3; }
  readers=$((readers + 1))
done
wait "$qpid"; qrc=$?
python3 - "$tmp/bg.out" <<'PY' || { echo "FAIL: the query beside readers"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
assert o["plain_agreement"] == 1.0 and o["alarms"] == 0 and o["restored"] == [] and o["count"] == 2000, o
PY
[ "$qrc" = 0 ] && [ "$reader_fail" = 0 ] && [ "$readers" -gt 0 ] || { echo "FAIL: readers beside a query: query exit $qrc, $reader_fail of $readers reader rounds failed"; fail=$((fail + 1)); }
expect_exit 0 "verify after the readers" "$bin" verify --ring "$tmp/ring"
# 5. Malformed rows at the ledger's tail: shown and named, never fatal to queries.
python3 - "$tmp/ring/ledger.sqlite" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA ignore_check_constraints = ON")
n = c.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
c.execute("INSERT INTO entries VALUES (?, zeroblob(32), 'bogus', NULL, 'not a key', x'00', randomblob(32), zeroblob(64))", (n + 1,))
PY
expect_exit 0 "ledger show with a malformed row" "$bin" ledger show --ring "$tmp/ring" --last 3
grep -q "MALFORMED" "$tmp/out" || { echo "FAIL: ledger show did not name the malformed row"; fail=$((fail + 1)); }
expect_exit 3 "ledger audit names a malformed row" "$bin" ledger audit --ring "$tmp/ring"
expect_exit 0 "query beside a malformed row" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 5
# 5. A row with the largest sequence number, and a trigger in the schema (copies of the ring).
cp -a "$tmp/ring" "$tmp/ring-seq"
python3 - "$tmp/ring-seq/ledger.sqlite" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA ignore_check_constraints = ON")
c.execute("INSERT INTO entries VALUES (9223372036854775807, zeroblob(32), 'alarm', NULL, randomblob(32), x'', randomblob(32), zeroblob(64))")
PY
expect_exit 0 "query beside a row numbered 2^63-1" "$bin" query --ring "$tmp/ring-seq" --dataset synthetic --count 3
expect_exit 0 "ledger show beside a row numbered 2^63-1" "$bin" ledger show --ring "$tmp/ring-seq" --last 2
expect_exit 3 "ledger audit names a row numbered 2^63-1" "$bin" ledger audit --ring "$tmp/ring-seq"
expect_exit 3 "verify names a row numbered 2^63-1" "$bin" verify --ring "$tmp/ring-seq"
cp -a "$tmp/ring" "$tmp/ring-trigger"
python3 - "$tmp/ring-trigger/ledger.sqlite" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("CREATE TRIGGER t AFTER INSERT ON entries BEGIN SELECT 1; END"); c.commit()
PY
expect_exit 3 "query refuses a ledger with a trigger" timeout 30 "$bin" query --ring "$tmp/ring-trigger" --dataset synthetic --count 3
expect_exit 3 "ledger audit refuses a ledger with a trigger" timeout 30 "$bin" ledger audit --ring "$tmp/ring-trigger"
# 6. Destructive requests are refused; nothing is replaced but a ring folder, with --force.
sum=$(sha256sum "$tmp/m.safetensors")
expect_exit 1 "seal onto the model file" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/m.safetensors"
expect_exit 1 "seal --force onto the model file" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/m.safetensors" --force
[ "$(sha256sum "$tmp/m.safetensors")" = "$sum" ] || { echo "FAIL: seal changed the model file"; fail=$((fail + 1)); }
mkdir -p "$tmp/keep"; echo keep >"$tmp/keep/notes.txt"
expect_exit 1 "seal into a folder that is not a ring" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/keep" --force
expect_exit 1 "attack into a folder that is not a ring" "$bin" attack bitflip --model "$tmp/m.safetensors" --dataset synthetic --ring "$tmp/keep"
[ "$(cat "$tmp/keep/notes.txt")" = keep ] || { echo "FAIL: a non-ring folder was changed"; fail=$((fail + 1)); }
expect_exit 0 "seal --force over a ring" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/ring2"
expect_exit 0 "seal --force over a ring (replaced)" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/ring2" --force
# 9. Another ring's (genuine, signed) ring.json dropped into this ring: refused on the owner's host before anything.
cp "$tmp/ring/ring.json" "$tmp/ring.json.mine"; cp "$tmp/ring2/ring.json" "$tmp/ring/ring.json"
before=$(rows)
expect_exit 3 "query with another ring's ring.json" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 3
[ "$(rows)" = "$before" ] || { echo "FAIL: a query touched the ledger of a ring with a foreign ring.json"; fail=$((fail + 1)); }
cmp -s "$tmp/ring/ring.json" "$tmp/ring2/ring.json" || { echo "FAIL: query changed ring.json before refusing"; fail=$((fail + 1)); }
cp "$tmp/ring.json.mine" "$tmp/ring/ring.json"
# 6. Temporary rings hold owner keys: removed on SIGINT, and a kill -9's leftovers by the next run.
mkdir -p "$tmp/tmpdir"
for sig in INT KILL; do
  TMPDIR="$tmp/tmpdir" "$bin" attack perturb --model "$tmp/demo/mlp.safetensors" --dataset synthetic >/dev/null 2>&1 &
  apid=$!
  for _ in $(seq 1 200); do ls "$tmp/tmpdir" | grep -q "deepring-attack.$apid." && break; sleep 0.05; done
  sleep 0.3
  kill -$sig "$apid" 2>/dev/null; wait "$apid" 2>/dev/null
  left=$(ls "$tmp/tmpdir" | grep -c "deepring-attack.$apid." || true)
  if [ "$sig" = INT ] && [ "$left" != 0 ]; then echo "FAIL: SIGINT left the attack's temporary ring"; fail=$((fail + 1)); fi
done
TMPDIR="$tmp/tmpdir" "$bin" attack bitflip --model "$tmp/m.safetensors" --dataset synthetic --count 50 >/dev/null 2>&1
[ -z "$(ls -A "$tmp/tmpdir")" ] || { echo "FAIL: temporary rings left behind: $(ls -A "$tmp/tmpdir")"; fail=$((fail + 1)); }
# 7. A FIFO in place of a block file, and a huge sparse image: refused at once, never a hang.
blk=$(ls "$tmp/ring/blocks" | head -1)
rm "$tmp/ring/blocks/$blk/params.safetensors"; mkfifo "$tmp/ring/blocks/$blk/params.safetensors"
expect_exit 3 "verify with a FIFO for a block file" timeout 30 "$bin" verify --ring "$tmp/ring"
grep -q "FIFO" "$tmp/out" || { echo "FAIL: verify did not name the FIFO"; fail=$((fail + 1)); }
expect_exit 1 "ring inspect with a FIFO" timeout 30 "$bin" ring inspect --ring "$tmp/ring"
expect_exit 0 "query restores a FIFO'd block file" timeout 60 "$bin" query --ring "$tmp/ring" --dataset synthetic --count 3
truncate -s 2G "$tmp/huge.idx"
expect_exit 1 "a 2 GB sparse --image" timeout 10 "$bin" query --ring "$tmp/ring" --image "$tmp/huge.idx"
# 8. Options are validated, and say why.
expect_exit 64 "query --count 0" "$bin" query --ring "$tmp/ring" --dataset synthetic --count 0
expect_exit 64 "query --timeout 0" "$bin" query --ring "$tmp/ring" --dataset synthetic --timeout 0
expect_exit 64 "ledger show --last -1" "$bin" ledger show --ring "$tmp/ring" --last -1
expect_exit 1 "attack --position beyond the ring" "$bin" attack perturb --model "$tmp/m.safetensors" --dataset synthetic --position 9
grep -q "positions 1" "$tmp/err" || { echo "FAIL: attack --position did not name the valid range"; fail=$((fail + 1)); }
# Attacks and the paper's tables (small: the synthetic model trained above, 500 test images).
expect_exit 0 "attack tamper --json" "$bin" attack tamper --model "$tmp/demo/mlp.safetensors" --dataset synthetic --count 500 --json
python3 - "$tmp/out" <<'PY' || { echo "FAIL: attack tamper --json output"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
assert o["detected"] == 1 and o["falseAlarms"] == 0 and o["deepRingAccuracy"] > o["plainAccuracy"], o
PY
expect_exit 0 "attack perturb" "$bin" attack perturb --model "$tmp/demo/mlp.safetensors" --dataset synthetic --count 500 --sigma 2
grep -q "detected 1/1" "$tmp/out" || { echo "FAIL: attack perturb was not detected"; fail=$((fail + 1)); }
expect_exit 1 "attack on a garbage model" "$bin" attack bitflip --model "$tmp/bad.safetensors" --dataset synthetic
expect_exit 64 "unknown attack" "$bin" attack nope --model "$tmp/demo/mlp.safetensors"
expect_exit 0 "reproduce --table 1" "$bin" reproduce --table 1 --out "$tmp/rep"
expect_exit 0 "reproduce --table 3 (synthetic)" "$bin" reproduce --table 3 --dataset synthetic --model "$tmp/demo/mlp.safetensors" --trials 1 --out "$tmp/rep"
python3 - "$tmp/rep" <<'PY' || { echo "FAIL: reproduce outputs"; fail=$((fail + 1)); }
import json, sys, os
import xml.etree.ElementTree as ET
d = sys.argv[1]
for f in ["table1.md", "table1.csv", "table1.svg", "table3.md", "table3.csv", "table3.svg", "table3.json",
          "table3-sweep-tampering.svg", "table3-sweep-perturbation.svg", "summary.json"]:
    assert os.path.getsize(os.path.join(d, f)) > 100, f
for f in os.listdir(d):
    if f.endswith(".svg"): ET.parse(os.path.join(d, f))
t = json.load(open(os.path.join(d, "table3.json")))
orig = t["originalAccuracy"]
for r in t["rows"]:
    assert r["falseAlarms"] == 0, r
    if r["type"] != "Original":
        assert r["detected"] == r["trials"], r
        assert abs(r["deepRingAccuracy"] - orig) < 1e-12, r
tam = [r for r in t["rows"] if r["type"] == "Parameter tampering"][0]
assert tam["plainAccuracy"] < orig - 0.1, tam
PY
# A checkpoint of another training run (1 epoch, where the table wants 2) is not taken as the table's model: training
# starts again (so is a run planned for 3 epochs stopped after 2: the planned length is in the file too).
mkdir -p "$tmp/rep4"
expect_exit 0 "train a one-epoch checkpoint" "$bin" train --model mlp --dataset synthetic --epochs 1 --limit 500 --out "$tmp/rep4/table3-mlp-synthetic.safetensors"
timeout 20 "$bin" reproduce --table 3 --dataset synthetic --epochs 2 --out "$tmp/rep4" >"$tmp/out" 2>&1
if grep -q "is not this table's finished training run (epochs 1 ≠ 2, planned_epochs 1 ≠ 2" "$tmp/out" && grep -q "training mlp for 2 epochs" "$tmp/out"; then pass=$((pass + 1)); else
  echo "FAIL: reproduce took an interrupted run's checkpoint as its model"; head -5 "$tmp/out" | sed 's/^/    /'; fail=$((fail + 1)); fi
expect_exit 0 "reproduce --no-sweep" "$bin" reproduce --table 3 --dataset synthetic --model "$tmp/demo/mlp.safetensors" --trials 1 --no-sweep --out "$tmp/rep5"
if [ -s "$tmp/rep5/table3.md" ] && ! ls "$tmp/rep5"/table3-sweep-* >/dev/null 2>&1; then pass=$((pass + 1)); else
  echo "FAIL: reproduce --no-sweep wrote no table or a sweep"; fail=$((fail + 1)); fi
expect_exit 64 "reproduce --model with --table all" "$bin" reproduce --table all --model "$tmp/demo/mlp.safetensors" --out "$tmp/rep3"
expect_exit 1 "reproduce Table 2 with an MLP" "$bin" reproduce --table 2 --dataset synthetic --model "$tmp/demo/mlp.safetensors" --out "$tmp/rep3"
expect_exit 1 "reproduce with a missing data set" "$bin" reproduce --table 3 --dataset mnist --data "$tmp/empty" --out "$tmp/rep2"
expect_exit 64 "unknown data set" "$bin" train --dataset nope --out "$tmp/x.safetensors"
expect_exit 0 "help" "$bin" --help
expect_exit 0 "bench ledger (SQLite)" "$bin" bench ledger --count 10
expect_exit 64 "bench ledger --count 0" "$bin" bench ledger --count 0

# The decentralised deployment on one machine: the owner and every block as processes (`ring up`), a querent that has
# only ring.json, SIGTERM stopping them all; and the errors a block's operator meets.
ring_up_check() { # label ring-dir ledger-argument...
  local label=$1 dir=$2; shift 2
  "$bin" ring up --ring "$dir" "$@" --log-dir "$tmp/uplogs-$label" > "$tmp/up.out" 2> "$tmp/up.err" &
  local up=$!
  for _ in $(seq 1 100); do grep -q "^query:" "$tmp/up.out" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  local ledger_arg=("$@")
  [ ${#ledger_arg[@]} -eq 0 ] && ledger_arg=(--ledger "$dir/ledger.sqlite")
  expect_exit 0 "query through ring up ($label)" "$bin" query --ring "$dir/ring.json" "${ledger_arg[@]}" --dataset synthetic --count 20 --batch 1 --json --timeout 30
  python3 - "$tmp/out" <<'PY' || { echo "FAIL: ring up ($label) answers"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
assert o["count"] == 20 and o["queries"] == 20 and len(o["logits_sha256"]) == 64, o
PY
  kill -TERM "$up"; wait "$up"; local rc=$?
  sleep 0.5
  if [ "$rc" -eq 0 ] && ! pgrep -f "serve --.*$dir" >/dev/null; then pass=$((pass + 1)); else
    echo "FAIL: ring up ($label) did not stop all its processes on SIGTERM (rc $rc)"; pgrep -af "serve --" || true; fail=$((fail + 1)); fi
}
# A querent of a ring nobody serves: each query times out, is asked again once (--retries 1), and the error names why.
expect_exit 0 "seal a ring nobody serves" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/idlering"
expect_exit 1 "query --retries of a ring nobody serves" "$bin" query --ring "$tmp/idlering/ring.json" --ledger "$tmp/idlering/ledger.sqlite" \
  --dataset synthetic --count 1 --batch 1 --timeout 1 --retries 1
{ grep -q "asking again (1 of 1)" "$tmp/err" && grep -q "timed out" "$tmp/err"; } && pass=$((pass + 1)) || {
  echo "FAIL: query --retries did not ask again, or did not say why it gave up"; sed 's/^/    /' "$tmp/err" | head -5; fail=$((fail + 1)); }
expect_exit 0 "seal for ring up (with a spare)" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/upring" --spares 1
ring_up_check sqlite "$tmp/upring"
grep -q "waiting as a spare" "$tmp"/uplogs-sqlite/spare-*.log && pass=$((pass + 1)) || { echo "FAIL: ring up started no spare"; fail=$((fail + 1)); }
expect_exit 0 "ledger audit after ring up" "$bin" ledger audit --ring "$tmp/upring"
expect_exit 0 "bench ring --deployment both (short)" "$bin" bench ring --deployment both --model "$tmp/m.safetensors" --queries 5 --querents 2 --json
python3 - "$tmp/out" <<'PY' || { echo "FAIL: bench ring --deployment output"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
for d in ["embedded", "processes"]:
    for k in ["ring_b1_p50_ms", "ring_b1_p99_ms", "queries_per_s", "ring_b256_img_per_s"]:
        assert o[d + "_" + k] > 0, (d, k, o)
assert o["processes_queries_per_s_k"] > 0
PY
expect_exit 64 "bench ring --ledger without --deployment" "$bin" bench ring --ledger postgres://u@h/d
expect_exit 64 "block serve without --ledger" "$bin" block serve --dir "$tmp/upring/blocks"
expect_exit 64 "block serve: no such folder" "$bin" block serve --dir "$tmp/nope" --ledger "$tmp/upring/ledger.sqlite"
up_block=$(ls "$tmp/upring/blocks" | head -1)
cp -a "$tmp/upring/blocks/$up_block" "$tmp/tampered-block"
python3 - "$tmp/tampered-block/params.safetensors" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-3] ^= 0x40; open(p, "wb").write(b)
PY
expect_exit 3 "block serve refuses a tampered parameter file" "$bin" block serve --dir "$tmp/tampered-block" --ledger "$tmp/upring/ledger.sqlite"
expect_exit 3 "block serve refuses another ring's ledger" "$bin" block serve --dir "$tmp/upring/blocks/$up_block" --ledger "$tmp/ring/ledger.sqlite"
expect_exit 64 "seal --spares out of range" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/spring" --spares 65
up_spare=$(ls "$tmp/upring/spares" | head -1)
expect_exit 1 "block serve: a spare's folder without --spare" "$bin" block serve --dir "$tmp/upring/spares/$up_spare" --ledger "$tmp/upring/ledger.sqlite"
grep -q "serve it with --spare" "$tmp/err" || { echo "FAIL: the spare's error does not say --spare"; fail=$((fail + 1)); }
cp -a "$tmp/upring/spares/$up_spare" "$tmp/forged-spare-$up_spare"
mkdir -p "$tmp/forged" && mv "$tmp/forged-spare-$up_spare" "$tmp/forged/$up_spare"
python3 - "$tmp/forged/$up_spare/spare.json" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); s = d["signature"]; d["signature"] = ("0" if s[0] != "0" else "1") + s[1:]; json.dump(d, open(p, "w"))
PY
expect_exit 3 "block serve --spare refuses a spare.json not signed by the owner" "$bin" block serve --spare --dir "$tmp/forged/$up_spare" --ledger "$tmp/upring/ledger.sqlite"

# The PostgreSQL ledger (when a server is given, as in CI): init twice, show, and the errors a user meets.
if [ -n "${DEEPRING_TEST_POSTGRES_URL:-}" ]; then
  pg_admin=$DEEPRING_TEST_POSTGRES_URL
  pg_db="deepring_smoke_$$"
  pg_url="${pg_admin%/*}/$pg_db"
  psql "$pg_admin" -qc "CREATE DATABASE $pg_db" >/dev/null
  expect_exit 0 "ledger init" "$bin" ledger init --ledger "$pg_url"
  grep -q "ledger ready" "$tmp/out" || { echo "FAIL: ledger init output"; fail=$((fail + 1)); }
  expect_exit 0 "ledger init again (idempotent)" "$bin" ledger init --ledger "$pg_url"
  expect_exit 0 "ledger show --ledger" "$bin" ledger show --ledger "$pg_url"
  expect_exit 0 "bench ledger --ledger (an empty scratch database)" "$bin" bench ledger --ledger "$pg_url" --count 10 --json
  python3 - "$tmp/out" <<'PY' || { echo "FAIL: bench ledger output"; fail=$((fail + 1)); }
import json, sys
o = json.load(open(sys.argv[1]))
for k in ["sqlite_append_p50_ms", "postgres_append_p50_ms", "postgres_wake_p50_ms", "postgres_read_p50_ms"]:
    assert o[k] > 0, (k, o)
PY
  expect_exit 64 "bench ledger refuses a ledger with entries" "$bin" bench ledger --ledger "$pg_url" --count 10
  expect_exit 1 "ledger show: no such database" "$bin" ledger show --ledger "${pg_admin%/*}/no_such_db_$$"
  expect_exit 1 "ledger show: a database without a ledger" "$bin" ledger show --ledger "$pg_admin"
  grep -q "ledger init" "$tmp/err" || { echo "FAIL: the error does not name ledger init"; fail=$((fail + 1)); }
  pg_bad="postgres://nobody:pw-must-not-show@${pg_url#postgres://*@}"
  expect_exit 1 "ledger show: wrong password" "$bin" ledger show --ledger "$pg_bad"
  grep -q "pw-must-not-show" "$tmp/err" "$tmp/out" && { echo "FAIL: a password was printed"; fail=$((fail + 1)); }
  expect_exit 64 "ledger init: not a URL" "$bin" ledger init --ledger mysql://x/y
  expect_exit 64 "ledger show: --password-file without --ledger" "$bin" ledger show --ring "$tmp/ring" --password-file /dev/null
  # A ring sealed into the database and run as processes over it.
  pg_ring_db="deepring_smoke_ring_$$"
  pg_ring_url="${pg_admin%/*}/$pg_ring_db"
  psql "$pg_admin" -qc "CREATE DATABASE $pg_ring_db" >/dev/null
  expect_exit 0 "ledger init (ring)" "$bin" ledger init --ledger "$pg_ring_url"
  expect_exit 0 "seal --ledger" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/pgring" --ledger "$pg_ring_url"
  expect_exit 1 "seal --ledger refuses a ledger in use" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/pgring2" --ledger "$pg_ring_url"
  ring_up_check postgres "$tmp/pgring" --ledger "$pg_ring_url"
  expect_exit 0 "ledger audit --ledger after ring up" "$bin" ledger audit --ring "$tmp/pgring" --ledger "$pg_ring_url"
  expect_exit 0 "verify --ledger --no-round" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --no-round
  expect_exit 3 "verify --ledger: no block running to attest" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --round-timeout 2
  grep -q "did not attest" "$tmp/out" || { echo "FAIL: verify --ledger did not name the silent block"; fail=$((fail + 1)); }
  expect_exit 3 "verify --ledger: another ring's ledger" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_url"
  expect_exit 64 "verify --no-round --restore is refused" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --restore --no-round
  # verify --ledger beside a running ring: an authenticity round through the ledger; a block's file modified on its
  # host is named, then restored over the ledger with --restore.
  "$bin" ring up --ring "$tmp/pgring" --ledger "$pg_ring_url" --check-every 0 --log-dir "$tmp/uplogs-verify" > "$tmp/up.out" 2> "$tmp/up.err" &
  up=$!
  for _ in $(seq 1 100); do grep -q "^query:" "$tmp/up.out" 2>/dev/null && break; sleep 0.1; done
  sleep 2
  expect_exit 0 "verify --ledger beside ring up" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --round-timeout 20
  grep -q "authentic through the ledger" "$tmp/out" || { echo "FAIL: verify --ledger ran no round"; fail=$((fail + 1)); }
  pg_blk=$(ls "$tmp/pgring/blocks" | head -1)
  python3 - "$tmp/pgring/blocks/$pg_blk/params.safetensors" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[-3] ^= 0x40; open(p, "wb").write(b)
PY
  expect_exit 3 "verify --ledger: a block's file modified" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --round-timeout 20
  grep -q "NOT AUTHENTIC through the ledger.*$pg_blk" "$tmp/out" || { echo "FAIL: verify --ledger did not name block $pg_blk"; fail=$((fail + 1)); }
  expect_exit 0 "verify --ledger --restore" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --round-timeout 20 --restore
  grep -q "restored over the ledger" "$tmp/out" || { echo "FAIL: verify --ledger --restore restored nothing"; fail=$((fail + 1)); }
  expect_exit 0 "verify --ledger after the restore" "$bin" verify --ring "$tmp/pgring" --ledger "$pg_ring_url" --round-timeout 20
  kill -TERM "$up"; wait "$up" || true
  expect_exit 0 "ledger audit --ledger after verify rounds" "$bin" ledger audit --ring "$tmp/pgring" --ledger "$pg_ring_url"
  expect_exit 64 "seal --ledger takes only a database" "$bin" seal "$tmp/m.safetensors" --ring "$tmp/pgring3" --ledger "$tmp/ring/ledger.sqlite"
  psql "$pg_admin" -qc "DROP DATABASE $pg_ring_db WITH (FORCE)" >/dev/null
  psql "$pg_admin" -qc "DROP DATABASE $pg_db WITH (FORCE)" >/dev/null
fi

echo "cli smoke: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
