#!/usr/bin/env bash
# Coverage-guided fuzzing of every DeepRing parser with libFuzzer and AddressSanitizer.
#
#   scripts/fuzz.sh [TARGET…] [--runs N] [--seconds S] [--no-build]
#
# Builds deepring-fuzz instrumented (in .build-fuzz/), seeds each target's corpus (.fuzz/corpus/TARGET) with valid
# inputs, and runs each target until N executions (default 1,000,000) or S seconds (default: no limit) have passed.
# A finding is any crash or trap, a leak, an input that takes over 1 s, or an allocation over 256 MB; its input is
# kept in .fuzz/findings/TARGET/ (commit it under Tests/DeepRingFuzzTests/Fixtures/fuzz/TARGET/ with the fix).
# Prints executions and findings per target; exits non-zero when any target had a finding or did not run.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=1000000
seconds=0
build=1
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --seconds) seconds=${2:?--seconds needs a number}; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$runs$seconds" in *[!0-9]*) echo "fuzz.sh: --runs and --seconds take whole numbers" >&2; exit 2 ;; esac

clang_rt=$(dirname "$(dirname "$(readlink -f "$(command -v swiftc)")")")/lib/clang
fuzzer_lib=$(ls "$clang_rt"/*/lib/linux/libclang_rt.fuzzer_no_main-x86_64.a 2>/dev/null | head -1)
if [ -z "$fuzzer_lib" ]; then
  echo "fuzz.sh: libFuzzer (libclang_rt.fuzzer_no_main) not found under $clang_rt" >&2
  exit 2
fi
bin=.build-fuzz/debug/deepring-fuzz
if [ "$build" = 1 ]; then
  echo "building the instrumented harness (AddressSanitizer, coverage) in .build-fuzz/ …"
  swift build --scratch-path .build-fuzz --product deepring-fuzz \
    -Xswiftc -sanitize=address -Xswiftc -sanitize-coverage=edge,trace-cmp,inline-8bit-counters,pc-table \
    -Xlinker "$fuzzer_lib" -Xlinker --undefined=LLVMFuzzerRunDriver -Xlinker --export-dynamic-symbol=LLVMFuzzerRunDriver \
    -Xlinker -lstdc++ 2>&1 | grep -E "error|warning: unre|Compiling DeepRing|Build" | tail -5
  [ -x "$bin" ] || { echo "fuzz.sh: the build failed" >&2; exit 1; }
fi
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("$bin" --list | awk '{print $1}')

export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0:handle_abort=1
failed=0
summary=()
for t in "${targets[@]}"; do
  corpus=.fuzz/corpus/$t findings=.fuzz/findings/$t
  mkdir -p "$corpus" "$findings"
  "$bin" "$t" --write-seeds "$corpus" || { summary+=("$t: unknown target"); failed=1; continue; }
  log=.fuzz/$t.log
  args=(-runs="$runs" -timeout=1 -malloc_limit_mb=256 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
        -artifact_prefix="$findings/")
  [ "$seconds" -gt 0 ] && args+=(-max_total_time="$seconds")
  start=$(date +%s)
  "$bin" "$t" "${args[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  found=$(ls "$findings" 2>/dev/null | wc -l)
  line=$(printf '%-17s %10s executions in %4ss, %s finding(s)' "$t" "${execs:-?}" "$secs" "$found")
  if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ] || [ -z "$execs" ]; then
    failed=1
    line="$line  FAILED (exit $rc; see $log)"
    grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5 | sed 's/^/    /'
  fi
  echo "$line"
  summary+=("$line")
done
echo
echo "fuzz summary (runs=$runs, seconds=${seconds:-0}):"
printf '  %s\n' "${summary[@]}"
exit $failed
