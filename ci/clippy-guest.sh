#!/usr/bin/env bash
# Lints the guest kernel the way vmm/build.rs builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add x86_64-unknown-none >/dev/null 2>&1 || true
CARGO_ENCODED_RUSTFLAGS=$(printf -- '-Crelocation-model=static\x1f-Cforce-frame-pointers=yes') \
    cargo clippy --manifest-path guest-kernel/Cargo.toml --target x86_64-unknown-none \
    --target-dir target/guest-clippy --bins -- -D warnings
