#!/usr/bin/env bash
# Runs actord on its embedded defaults (supervision.toml); extra arguments go to actord.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

scripts/services.sh
cargo build --release --locked
exec target/release/actord "$@"
