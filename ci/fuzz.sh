#!/usr/bin/env bash
# Short fuzz runs of kjump's parsers (fuzz/: cpio, elf, kimage_walk,
# harness_msg, dump_reader, image_reader): builds every cargo-fuzz target, runs each for
# KJUMP_FUZZ_SECONDS (default 20) from a temporary copy of its seeds, and
# fails on the first crash, assertion failure, leak, timeout or OOM.
#
#   ci/fuzz.sh                      all targets, 20 s each
#   KJUMP_FUZZ_SECONDS=300 ci/fuzz.sh elf cpio
#
# The repository's seeds (fuzz/seeds/<target>/) are only read: libFuzzer
# writes the inputs it finds to its first corpus directory, here a temporary
# one, and a crashing input to a temporary artifact directory, which is
# printed (base64) before the script fails.
#
# Toolchain: the pinned stable one (rust-toolchain.toml); no nightly needed.
# cargo-fuzz adds only stable rustc flags (`-Cpasses=sancov-module`,
# `-Cllvm-args=-sanitizer-coverage-*`, `--cfg fuzzing`) unless a sanitizer
# is asked for: its default, AddressSanitizer, is `-Zsanitizer=address`,
# which stable refuses. So the targets are built and run with `-s none`:
# coverage-guided fuzzing with Rust's own checks (bounds, overflow with
# `-Cdebug-assertions`, the targets' assertions), which is what finds bugs
# in the safe Rust parsed here; ASan would only add checks on `unsafe`
# code, of which these parsers have none. (With a nightly toolchain,
# `cargo +nightly fuzz run <target>` gives the ASan build as usual.)
#
# The targets depend on kjump-core and kjump-abi only: no KVM crate and no
# guest build is compiled with cargo-fuzz's instrumentation.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${KJUMP_FUZZ_SECONDS:-20}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(cpio elf kimage_walk harness_msg dump_reader image_reader)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
    # Where cargo install put it, should that not be on PATH.
    export PATH="$PATH:${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
fi
cargo fuzz --version

echo "== building the fuzz targets"
# cargo fuzz has no --locked: check fuzz/Cargo.lock is up to date first.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
cargo fuzz build -s none

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for t in "${targets[@]}"; do
    echo "== fuzzing $t for ${seconds}s"
    corpus="$work/corpus-$t"
    artifacts="$work/artifacts-$t/"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -r "fuzz/seeds/$t/." "$corpus/"
    fi
    # -timeout: one input taking this long is a hang; -rss_limit_mb: the
    # targets build at most a few MiB of guest memory per input.
    if ! cargo fuzz run -s none "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts" -print_final_stats=1; then
        echo "fuzz target $t failed; the input(s), base64:"
        for f in "$artifacts"*; do
            [ -f "$f" ] || continue
            echo "--- $(basename "$f")"
            base64 "$f"
        done
        echo "reproduce: base64 -d > crash <<< '...'; cargo fuzz run -s none $t crash"
        exit 1
    fi
done
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a failure"
