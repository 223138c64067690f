#!/usr/bin/env bash
# The whole test suite: prepares the services, checks formatting and lints, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

scripts/services.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --lib --bins --tests --locked 2>&1 | tee "$out" || status=$?
# One closing line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
