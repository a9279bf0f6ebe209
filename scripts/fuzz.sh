#!/usr/bin/env bash
# Coverage-guided fuzzing of Holdfast's parsers with libFuzzer, on stable Rust.
#
#   scripts/fuzz.sh TARGET SECONDS     one target (image, filesystems, partition_table,
#                                      job_file, agent_protocol, target_url,
#                                      command_file)
#   scripts/fuzz.sh all SECONDS        every target, SECONDS each
#   FUZZ_SAVE=1 scripts/fuzz.sh ...    also merge inputs that found new coverage into
#                                      the corpus in fuzz/corpus/TARGET (commit them)
#
# The targets (fuzz/fuzz_targets/) link libFuzzer through the libfuzzer-sys crate and are
# built with LLVM's SanitizerCoverage passes, which stable rustc accepts as -C flags:
# no nightly toolchain and no cargo-fuzz needed. Overflow checks and debug assertions are
# on (fuzz/Cargo.toml), so arithmetic on sizes read from a file cannot wrap silently.
# A crash, a panic, an allocation over -rss_limit_mb or a run over -timeout stops the
# target with the input saved under fuzz/artifacts/TARGET/ and this script exits 1.
# Each run ends with one line per target in the log: executions, coverage, corpus size.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGETS=(image filesystems partition_table job_file agent_protocol target_url command_file)
what=${1:?usage: scripts/fuzz.sh TARGET|all SECONDS}
seconds=${2:?usage: scripts/fuzz.sh TARGET|all SECONDS}
if [[ $what == all ]]; then
    chosen=("${TARGETS[@]}")
else
    [[ " ${TARGETS[*]} " == *" $what "* ]] || {
        echo "fuzz.sh: unknown target '$what' (targets: ${TARGETS[*]})" >&2
        exit 2
    }
    chosen=("$what")
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps these flags off build scripts and proc macros, which run
# on the host without libFuzzer's runtime.
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --locked --manifest-path fuzz/Cargo.toml --bins --target "$host"
bin=$CARGO_TARGET_DIR/$host/release

failed=0
for t in "${chosen[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t/
    mkdir -p "$corpus" "$artifacts"
    # New inputs go to a scratch folder; the committed corpus is only read (seeds).
    work=$(mktemp -d /var/tmp/holdfast-fuzz-XXXXXX)
    log=$work/log
    echo "== fuzz $t for ${seconds} s (corpus: $(find "$corpus" -type f | wc -l) files)"
    if "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=1100000 -print_final_stats=1 -artifact_prefix="$artifacts" "$work" "$corpus" \
        >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
        echo "fuzz $t: ok, ${execs:-?} executions in ${seconds} s, coverage ${cov:-?} edges"
        if [[ ${FUZZ_SAVE:-} == 1 ]]; then
            "$bin/$t" -merge=1 "$corpus" "$work" >/dev/null 2>&1
        fi
    else
        failed=1
        echo "fuzz $t: FAILED — the input is in $artifacts; the end of the log:"
        tail -40 "$log"
    fi
    rm -rf "$work"
done
exit $failed
