#!/usr/bin/env bash
# Benchmark holdfast-agent against reference tools on the volumes made by
# make-volume.sh, in one run, side by side (see docs/benchmarks.md):
#
#   sudo scripts/bench/run.sh [OUTDIR]          (default /var/tmp/holdfast-bench)
#
# Prints markdown tables and writes them to OUTDIR/results.md.
#
# Environment:
#   HOLDFAST_AGENT  the binary to measure (default
#                   ${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}/release/holdfast-agent,
#                   built with cargo build --release when missing)
#   HOLDFAST_SKIP=1 skip every holdfast command (measure the reference tools only)
#   BENCH_RUNS      runs per measurement, the median is reported (default 3)
#   BENCH_WARMUP    untimed runs before them (default 1)
#   BENCH_SKIP_DEDUP=1  skip restic and borg
#
# Each timed command runs BENCH_RUNS times; the table shows the median wall
# time. Caches are not dropped: the volumes are read once before measuring so
# that every command starts with them in the page cache.
set -euo pipefail

OUTDIR=${1:-/var/tmp/holdfast-bench}
RUNS=${BENCH_RUNS:-3}
HOLDFAST_SKIP=${HOLDFAST_SKIP:-0}
WARMUP=${BENCH_WARMUP:-1}
BENCH_SKIP_DEDUP=${BENCH_SKIP_DEDUP:-0}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
AGENT=${HOLDFAST_AGENT:-${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}/release/holdfast-agent}

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export LC_ALL=C

# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root (loop mounts)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer"

# Tools ------------------------------------------------------------------------
need=()
command -v partclone.ext4 >/dev/null || need+=(partclone)
command -v zstd >/dev/null || need+=(zstd)
command -v e2fsck >/dev/null || need+=(e2fsprogs)
command -v python3 >/dev/null || need+=(python3)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]} > 0)); then
    log "installing ${need[*]}"
    apt_install "${need[@]}"
fi
if ((BENCH_SKIP_DEDUP != 1)); then
    opt=()
    command -v restic >/dev/null || opt+=(restic)
    command -v borg >/dev/null || opt+=(borgbackup)
    if ((${#opt[@]} > 0)); then
        log "installing ${opt[*]} (optional)"
        apt_install "${opt[@]}" || log "could not install ${opt[*]}: those rows are skipped"
    fi
fi

if ((HOLDFAST_SKIP != 1)) && [[ ! -x $AGENT ]]; then
    [[ -z ${HOLDFAST_AGENT:-} ]] || die "HOLDFAST_AGENT=$HOLDFAST_AGENT is not an executable"
    log "building holdfast-agent (release) into ${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
    (cd "$REPO_ROOT" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/holdfast-target} \
        cargo build --release -p holdfast-agent)
    [[ -x $AGENT ]] || die "build did not produce $AGENT"
fi

# Volumes ------------------------------------------------------------------------
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
S1=$OUTDIR/state1.ext4
S2=$OUTDIR/state2.ext4
if [[ ! -f $OUTDIR/volumes.stamp || ! -f $S1 || ! -f $S2 ]]; then
    log "volumes missing: running make-volume.sh"
    "$SCRIPT_DIR/make-volume.sh" "$OUTDIR"
fi
VOL_SIZE=$(stat -c %s "$S1")
PCLOG=$OUTDIR/partclone.log
MNT=$OUTDIR/mnt-bench
WORK=$OUTDIR/work
mkdir -p "$MNT" "$WORK"
: >"$PCLOG"

cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount "$MNT" || true
    fi
}
trap cleanup EXIT

mount_ro() {
    # The journal is not replayed (noload) and nothing is written to the image.
    mount -t ext4 -o ro,noload,loop "$1" "$MNT"
}

# Helpers ----------------------------------------------------------------------------
declare -A T # id -> median wall seconds, or a word (failed, skipped)

skip_ours() {
    # skip_ours ID...: mark holdfast rows as skipped
    local id
    for id in "$@"; do
        T[$id]=skipped
    done
}

# Machine facts -------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
facts=(
    "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "cpus: $(nproc) ($cpu_model)"
    "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    "kernel: $(uname -sr)"
    "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    "partclone: $(partclone.ext4 -v 2>&1 | awk '/Partclone/ { print $3; exit }')"
    "zstd: $(zstd --version | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^v[0-9]/) { sub(/,$/, "", $i); print $i; exit } }')"
)
command -v restic >/dev/null && facts+=("restic: $(restic version | awk '{ print $2 }')")
command -v borg >/dev/null && facts+=("borg: $(borg --version | awk '{ print $2 }')")
if ((HOLDFAST_SKIP == 1)); then
    facts+=("holdfast-agent: skipped (HOLDFAST_SKIP=1)")
else
    facts+=("holdfast-agent: $AGENT ($("$AGENT" --version 2>/dev/null || echo 'version unknown'))")
fi
facts+=("runs per measurement: $RUNS (median reported)")
facts+=("volume: $(sed -n '3,4p' "$OUTDIR/volumes.stamp" | tr '\n' ';' | sed 's/;$//; s/;/; /')")
log "machine:"
printf '  %s\n' "${facts[@]}" >&2

log "warming the page cache (reading both volumes)"
cat "$S1" "$S2" >/dev/null

# Full images of state 1 ------------------------------------------------------------------
pc_full() { partclone.ext4 -c -s "$S1" -o - -L "$PCLOG" -q | zstd -3 -T2 -q >"$OUTDIR/pc.zst"; }
pc_full_a0() { partclone.ext4 -c -a0 -s "$S1" -o - -L "$PCLOG" -q | zstd -3 -T2 -q >"$OUTDIR/pc_a0.zst"; }
hf_full() {
    "$AGENT" image create --source "$S1" --output "$OUTDIR/full.hfi" \
        --compression-level 3 --overwrite --json
}
hf_full_enc() {
    "$AGENT" image create --source "$S1" --output "$OUTDIR/full_enc.hfi" \
        --compression-level 3 --encrypt aes256 --password-file "$OUTDIR/pw" --overwrite --json
}
hf_inc() {
    "$AGENT" image create --source "$S2" --output "$OUTDIR/inc.hfi" \
        --incremental --base "$OUTDIR/full.hfi" --overwrite --json
}

log "full: partclone.ext4 | zstd -3"
measure pc_full - pc_full
measure pc_full_a0 - pc_full_a0
if ((HOLDFAST_SKIP == 1)); then
    skip_ours hf_full hf_full_enc hf_inc hf_restore_full hf_restore_inc
else
    log "full: holdfast-agent"
    measure hf_full - hf_full
    log "encrypted full: holdfast-agent"
    printf 'holdfast-bench-password\n' >"$OUTDIR/pw"
    chmod 600 "$OUTDIR/pw"
    measure hf_full_enc - hf_full_enc
    log "incremental: holdfast-agent"
    if [[ ${T[hf_full]} == failed ]]; then
        T[hf_inc]=failed
    else
        measure hf_inc - hf_inc
    fi
fi

# Incremental reference: changed 4 KiB blocks, compressed ----------------------------------
ref_changed() {
    python3 "$SCRIPT_DIR/changed-blocks.py" "$S1" "$S2" "$WORK/changed.bin" >"$WORK/changed.txt"
    zstd -3 -T2 -q -f "$WORK/changed.bin" -o "$OUTDIR/changed.zst"
    rm -f "$WORK/changed.bin"
}
log "incremental reference: changed 4 KiB blocks | zstd -3"
saved_runs=$RUNS saved_warmup=$WARMUP
RUNS=1 WARMUP=0
measure ref_changed - ref_changed
RUNS=$saved_runs WARMUP=$saved_warmup
changed_figures=$(cat "$WORK/changed.txt" 2>/dev/null || echo "n/a")
changed_bytes=$(sed -n 's/.*changed_bytes=\([0-9]*\).*/\1/p' "$WORK/changed.txt" 2>/dev/null || true)
changed_figures="$changed_figures, i.e. $(mib "${changed_bytes:-n/a}") MiB before compression"
log "changed blocks: $changed_figures"

# restic and borg: file-level deduplicating backups of the mounted states ------------------
declare -A DEDUP_SIZE # id -> bytes (repo after first backup; added by the second)
dedup_bench() {
    # dedup_bench NAME INIT_FN BACKUP_FN: per run a new repository, state1 then
    # state2 mounted at the same path (so the second run finds its parent).
    local name=$1 init=$2 backup=$3 r t0 t1 s0 s1 s2 ok=1
    local full_times=() inc_times=() full_sizes=() inc_sizes=()
    for ((r = 1; r <= RUNS; r++)); do
        rm -rf "$WORK/$name-repo" "$WORK/$name-cache"
        if ! "$init" >"$WORK/$name.init.log" 2>&1; then
            log "$name: init failed:"
            tail -n 5 "$WORK/$name.init.log" >&2
            ok=0
            break
        fi
        s0=$(du -sb "$WORK/$name-repo" | cut -f1)
        mount_ro "$S1"
        t0=$(now)
        if ! "$backup" state1 >"$WORK/$name.1.log" 2>&1; then ok=0; fi
        t1=$(now)
        umount "$MNT"
        ((ok == 1)) || { log "$name: backup of state1 failed:" && tail -n 5 "$WORK/$name.1.log" >&2 && break; }
        full_times+=("$(sub "$t1" "$t0")")
        s1=$(du -sb "$WORK/$name-repo" | cut -f1)
        mount_ro "$S2"
        t0=$(now)
        if ! "$backup" state2 >"$WORK/$name.2.log" 2>&1; then ok=0; fi
        t1=$(now)
        umount "$MNT"
        ((ok == 1)) || { log "$name: backup of state2 failed:" && tail -n 5 "$WORK/$name.2.log" >&2 && break; }
        inc_times+=("$(sub "$t1" "$t0")")
        s2=$(du -sb "$WORK/$name-repo" | cut -f1)
        full_sizes+=($((s1 - s0)))
        inc_sizes+=($((s2 - s1)))
        log "$name run $r: state1 ${full_times[-1]} s, +${full_sizes[-1]} B; state2 ${inc_times[-1]} s, +${inc_sizes[-1]} B"
    done
    if ((ok == 1)); then
        # restic's chunk boundaries depend on a per-repository polynomial: the
        # sizes vary from run to run, so they are medians too.
        T[${name}_full]=$(median "${full_times[@]}")
        T[${name}_inc]=$(median "${inc_times[@]}")
        DEDUP_SIZE[${name}_full]=$(median "${full_sizes[@]}")
        DEDUP_SIZE[${name}_inc]=$(median "${inc_sizes[@]}")
    else
        T[${name}_full]=failed
        T[${name}_inc]=failed
    fi
    rm -rf "$WORK/$name-repo" "$WORK/$name-cache"
}

restic_init() {
    RESTIC_PASSWORD=holdfast-bench RESTIC_CACHE_DIR=$WORK/restic-cache \
        restic init -q --repo "$WORK/restic-repo"
}
restic_backup() {
    RESTIC_PASSWORD=holdfast-bench RESTIC_CACHE_DIR=$WORK/restic-cache \
        restic backup -q --repo "$WORK/restic-repo" --host holdfast-bench --tag "$1" "$MNT"
}
borg_env() {
    export BORG_BASE_DIR=$WORK/borg-cache
    export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
    export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
}
borg_init() { (borg_env && borg init --encryption none "$WORK/borg-repo"); }
borg_backup() { (borg_env && borg create --compression zstd,3 "$WORK/borg-repo::$1" "$MNT"); }

if ((BENCH_SKIP_DEDUP != 1)) && command -v restic >/dev/null; then
    log "restic backup of the mounted states"
    dedup_bench restic restic_init restic_backup
else
    T[restic_full]=skipped
    T[restic_inc]=skipped
fi
if ((BENCH_SKIP_DEDUP != 1)) && command -v borg >/dev/null; then
    log "borg create --compression zstd,3 of the mounted states"
    dedup_bench borg borg_init borg_backup
else
    T[borg_full]=skipped
    T[borg_inc]=skipped
fi

# Restores ---------------------------------------------------------------------------------------
fresh_target() {
    rm -f "$1"
    truncate -s "$VOL_SIZE" "$1"
}
prep_pc_restore() { fresh_target "$OUTDIR/restore_pc.ext4"; }
prep_hf_restore_full() { fresh_target "$OUTDIR/restore_hf_full.ext4"; }
prep_hf_restore_inc() { fresh_target "$OUTDIR/restore_hf_inc.ext4"; }
pc_restore() {
    zstd -d -T2 -q <"$OUTDIR/pc_a0.zst" | partclone.ext4 -r -s - -O "$OUTDIR/restore_pc.ext4" -L "$PCLOG" -q
}
hf_restore_full() {
    "$AGENT" image restore --image "$OUTDIR/full.hfi" --target "$OUTDIR/restore_hf_full.ext4" --json
}
hf_restore_inc() {
    "$AGENT" image restore --image "$OUTDIR/inc.hfi" --target "$OUTDIR/restore_hf_inc.ext4" --json
}

log "restore: zstd -d | partclone.ext4 -r"
if [[ -f $OUTDIR/pc_a0.zst && ${T[pc_full_a0]} != failed ]]; then
    measure pc_restore prep_pc_restore pc_restore
else
    T[pc_restore]=failed
fi
if ((HOLDFAST_SKIP != 1)); then
    log "restore: holdfast-agent"
    if [[ ${T[hf_full]} == failed ]]; then T[hf_restore_full]=failed; else measure hf_restore_full prep_hf_restore_full hf_restore_full; fi
    if [[ ${T[hf_inc]} == failed ]]; then T[hf_restore_inc]=failed; else measure hf_restore_inc prep_hf_restore_inc hf_restore_inc; fi
fi

# Verification: e2fsck clean and the same files (names, modes, sizes, times,
# link targets, contents) as the source state.
manifest() {
    # manifest IMAGE: one checksum over the listing and the contents of every file.
    mount_ro "$1"
    (
        cd "$MNT"
        {
            find . -xdev -printf '%y %m %U:%G %s %T@ %p -> %l\n' | sort
            find . -xdev -type f -print0 | sort -z | xargs -0 -r md5sum
        } | md5sum | cut -d' ' -f1
    )
    umount "$MNT"
}
declare -A VERIFIED
verify() {
    # verify ID RESTORED SOURCE
    local id=$1 restored=$2 source=$3 want got
    if [[ ${T[$id]} == failed || ${T[$id]} == skipped || ! -f $restored ]]; then
        VERIFIED[$id]=${T[$id]}
        return 0
    fi
    if ! e2fsck -fn "$restored" >"$WORK/$id.fsck" 2>&1; then
        VERIFIED[$id]="NO: e2fsck errors"
        log "$id: e2fsck -fn found errors (see $WORK/$id.fsck)"
        return 0
    fi
    want=$(manifest_of "$source")
    got=$(manifest "$restored")
    if [[ $want == "$got" ]]; then
        VERIFIED[$id]="yes: e2fsck clean, files identical"
    else
        VERIFIED[$id]="NO: files differ"
    fi
    log "$id: ${VERIFIED[$id]}"
}
manifest_of() {
    # cached per source state, keyed by the volume stamp
    local cache
    cache=$OUTDIR/$(basename "$1").manifest
    # Written aside and moved in whole: a run that failed half-way (a full disk) must not
    # leave an empty manifest every later run would compare against.
    if [[ ! -s $cache || $cache -ot $OUTDIR/volumes.stamp ]]; then
        manifest "$1" >"$cache.part" && [[ -s $cache.part ]] && mv "$cache.part" "$cache"
    fi
    cat "$cache"
}
log "verifying restores"
verify pc_restore "$OUTDIR/restore_pc.ext4" "$S1"
verify hf_restore_full "$OUTDIR/restore_hf_full.ext4" "$S1"
verify hf_restore_inc "$OUTDIR/restore_hf_inc.ext4" "$S2"

# Tables --------------------------------------------------------------------------------------------
sz() {
    # sz ID FILE: output size, or the row's state when it did not run
    case ${T[$1]} in
        failed | skipped) echo "${T[$1]}" ;;
        *) size_of "$2" ;;
    esac
}
row() {
    # row CELL...: one markdown table row
    local out="|" cell
    for cell in "$@"; do
        out+=" $cell |"
    done
    printf '%s\n' "$out"
}

SZ_pc=$(sz pc_full "$OUTDIR/pc.zst")
SZ_pc_a0=$(sz pc_full_a0 "$OUTDIR/pc_a0.zst")
SZ_hf=$(sz hf_full "$OUTDIR/full.hfi")
SZ_hf_enc=$(sz hf_full_enc "$OUTDIR/full_enc.hfi")
SZ_inc=$(sz hf_inc "$OUTDIR/inc.hfi")
SZ_changed=$(sz ref_changed "$OUTDIR/changed.zst")
used1=$(awk -F'used_bytes=' '/^state1/ { split($2, a, " "); print a[1] }' "$OUTDIR/volumes.stamp")
used2=$(awk -F'used_bytes=' '/^state2/ { split($2, a, " "); print a[1] }' "$OUTDIR/volumes.stamp")

{
    echo "## Holdfast benchmark results"
    echo
    printf -- '- %s\n' "${facts[@]}"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "### Full image of state1 ($(mib "$used1") MiB used of $(mib "$VOL_SIZE") MiB)"
    echo
    echo "Reference: \`partclone.ext4 -c | zstd -3 -T2\` (default checksums)."
    echo
    row "command" "wall s (median)" "output bytes" "output MiB" "time vs ref" "size vs ref"
    row "---" "---:" "---:" "---:" "---:" "---:"
    row "partclone.ext4 -c \\| zstd -3 -T2" "${T[pc_full]}" "$SZ_pc" "$(mib "$SZ_pc")" "1.00" "1.00"
    row "partclone.ext4 -c -a0 \\| zstd -3 -T2" "${T[pc_full_a0]}" "$SZ_pc_a0" "$(mib "$SZ_pc_a0")" \
        "$(ratio "${T[pc_full_a0]}" "${T[pc_full]}")" "$(ratio "$SZ_pc_a0" "$SZ_pc")"
    row "ours: image create --compression-level 3" "${T[hf_full]}" "$SZ_hf" "$(mib "$SZ_hf")" \
        "$(ratio "${T[hf_full]}" "${T[pc_full]}")" "$(ratio "$SZ_hf" "$SZ_pc")"
    echo
    echo "### Incremental: state2 against state1"
    echo
    echo "Reference size: the 4 KiB blocks of state2 that differ from state1 (all-zero blocks skipped), concatenated and compressed with \`zstd -3 -T2\` ($changed_figures). Times are compared with our full image."
    echo
    row "command" "wall s (median)" "output bytes (median)" "output MiB" "time vs ours full" "size vs changed-blocks ref"
    row "---" "---:" "---:" "---:" "---:" "---:"
    row "ref: changed 4 KiB blocks \\| zstd -3 (1 run, python)" "${T[ref_changed]}" "$SZ_changed" "$(mib "$SZ_changed")" "n/a" "1.00"
    row "ours: image create --incremental --base full.hfi" "${T[hf_inc]}" "$SZ_inc" "$(mib "$SZ_inc")" \
        "$(ratio "${T[hf_inc]}" "${T[hf_full]}")" "$(ratio "$SZ_inc" "$SZ_changed")"
    for tool in restic borg; do
        case $tool in
            restic) label="restic backup (default compression, encrypted)" ;;
            borg) label="borg create --compression zstd,3 (unencrypted)" ;;
        esac
        f=${T[${tool}_full]}
        i=${T[${tool}_inc]}
        fs=${DEDUP_SIZE[${tool}_full]:-$f}
        is=${DEDUP_SIZE[${tool}_inc]:-$i}
        row "$label, state1 files (repo size)" "$f" "$fs" "$(mib "$fs")" "$(ratio "$f" "${T[hf_full]}")" "n/a"
        row "$label, then state2 files (repo growth)" "$i" "$is" "$(mib "$is")" "$(ratio "$i" "${T[hf_full]}")" "$(ratio "$is" "$SZ_changed")"
    done
    echo
    echo "### Restore"
    echo
    echo "Into a new sparse file of the volume's size. Output bytes: the restored file's allocated bytes. Reference: \`zstd -d | partclone.ext4 -r\` of the -a0 image."
    echo
    row "command" "wall s (median)" "allocated bytes" "time vs ref" "verified"
    row "---" "---:" "---:" "---:" "---"
    for id in pc_restore hf_restore_full hf_restore_inc; do
        case $id in
            pc_restore) label="zstd -d -T2 \\| partclone.ext4 -r"; file=$OUTDIR/restore_pc.ext4 ;;
            hf_restore_full) label="ours: image restore full.hfi"; file=$OUTDIR/restore_hf_full.ext4 ;;
            hf_restore_inc) label="ours: image restore inc.hfi"; file=$OUTDIR/restore_hf_inc.ext4 ;;
        esac
        case ${T[$id]} in
            failed | skipped) alloc=${T[$id]} ;;
            *) alloc=$(alloc_of "$file") ;;
        esac
        row "$label" "${T[$id]}" "$alloc" "$(ratio "${T[$id]}" "${T[pc_restore]}")" "${VERIFIED[$id]:-n/a}"
    done
    echo
    echo "### Encryption"
    echo
    row "command" "wall s (median)" "output bytes" "time vs unencrypted" "size vs unencrypted"
    row "---" "---:" "---:" "---:" "---:"
    row "ours: image create (unencrypted)" "${T[hf_full]}" "$SZ_hf" \
        "$(ratio "${T[hf_full]}" "${T[hf_full]}")" "$(ratio "$SZ_hf" "$SZ_hf")"
    row "ours: image create --encrypt aes256" "${T[hf_full_enc]}" "$SZ_hf_enc" \
        "$(ratio "${T[hf_full_enc]}" "${T[hf_full]}")" "$(ratio "$SZ_hf_enc" "$SZ_hf")"
    echo
    echo "state2: $(mib "$used2") MiB used."
} >"$OUTDIR/results.md"

rm -f "$OUTDIR/restore_pc.ext4" "$OUTDIR/restore_hf_full.ext4" "$OUTDIR/restore_hf_inc.ext4"
log "results written to $OUTDIR/results.md"
cat "$OUTDIR/results.md"
