#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets in fuzz/ for a bounded time each.
#   scripts/fuzz.sh                 # every target, FUZZ_SECONDS (60) each
#   FUZZ_SECONDS=300 scripts/fuzz.sh http_head
# Installs cargo-fuzz when missing. libFuzzer's instrumentation needs
# unstable rustc flags; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them
# (no sanitizer: `-s none`; the targets assert their own invariants).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(http_head xff ini json_body router)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

toolchain_flags=()
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
  toolchain_flags=(-s none)
fi

for t in "${targets[@]}"; do
  echo "== fuzz target $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  cargo fuzz run "${toolchain_flags[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=5
done
