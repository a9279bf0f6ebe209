# Shared helpers of the benchmark scripts (sourced, not run). The caller sets RUNS,
# WARMUP and WORK and declares the associative array T (id -> median wall seconds).

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

apt_updated=0
apt_install() {
    if ((apt_updated == 0)); then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# free_ports N: N consecutive loopback ports, all free now and below the kernel's ephemeral
# range, so no outgoing connection can take one before the server that needs it binds it
# (a relay listening on a run of FTP passive ports failed on exactly that). One per line.
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(500):
    start = random.randrange(10000, low - n)
    held = []
    try:
        for port in range(start, start + n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.append(s)
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in held:
            s.close()
    print("\n".join(str(p) for p in range(start, start + n)))
    sys.exit(0)
sys.exit("no run of %d free ports below %d" % (n, low))
PY
}

now() { printf '%s\n' "${EPOCHREALTIME/,/.}"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a - b }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() {
    # ratio A B: A/B with two decimals, or n/a
    if [[ $1 =~ ^[0-9.]+$ && $2 =~ ^[0-9.]+$ ]] && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'
    else
        echo "n/a"
    fi
}
mib() {
    if [[ $1 =~ ^[0-9]+$ ]]; then
        awk -v a="$1" 'BEGIN { printf "%.1f\n", a / 1048576 }'
    else
        echo "$1"
    fi
}
size_of() { stat -c %s "$1" 2>/dev/null || echo "n/a"; }
alloc_of() { du -B1 "$1" 2>/dev/null | cut -f1 || echo "n/a"; }

# measure ID PREP_FN RUN_FN: RUN_FN is timed RUNS times (PREP_FN, untimed, before
# each run; "-" for none). A failure is reported and recorded, and the
# benchmark goes on. With COUNTER_FN set (a function printing a byte counter, e.g. of a
# network interface), the counter's growth over the last run goes in BYTES[ID].
measure() {
    local id=$1 prep=$2 fn=$3 r t0 t1 c0=0 times=()
    # Untimed warm-up runs: the first run after another command pays for the page cache
    # and memory that command left behind (seen here as 1.5-2x slower first runs, for
    # every tool alike).
    for ((r = 1; r <= WARMUP; r++)); do
        if [[ $prep != - ]]; then
            "$prep"
        fi
        sync
        "$fn" >"$WORK/$id.out" 2>"$WORK/$id.err" || true
    done
    for ((r = 1; r <= RUNS; r++)); do
        if [[ $prep != - ]]; then
            "$prep"
        fi
        # Flush dirty pages of the previous run so its writeback does not land in this one.
        sync
        [[ -z ${COUNTER_FN:-} ]] || c0=$("$COUNTER_FN")
        t0=$(now)
        if ! "$fn" >"$WORK/$id.out" 2>"$WORK/$id.err"; then
            log "$id: FAILED (run $r); last lines of its output:"
            tail -n 5 "$WORK/$id.err" "$WORK/$id.out" >&2 || true
            T[$id]=failed
            # The test command runs every benchmark at a tiny size with BENCH_STRICT=1, so
            # that a benchmark that stopped working fails the run instead of a table cell.
            [[ ${BENCH_STRICT:-} == 1 ]] && die "$id failed (BENCH_STRICT=1)"
            return 0
        fi
        t1=$(now)
        times+=("$(sub "$t1" "$t0")")
        [[ -z ${COUNTER_FN:-} ]] || BYTES[$id]=$(($("$COUNTER_FN") - c0))
    done
    T[$id]=$(median "${times[@]}")
    log "$id: ${times[*]} s -> median ${T[$id]} s"
}

# bench_user: the throwaway user of the test fixtures (USER_NAME, PASS, USER_HOME), created
# or repaired on every run: vsftpd changes into the user's home before its local_root
# applies, so the home must exist.
bench_user() {
    USER_NAME=hfbkp
    PASS=hf-test-pass-7
    USER_HOME=/var/tmp/holdfast-fixture-home
    mkdir -p "$USER_HOME"
    if id "$USER_NAME" >/dev/null 2>&1; then
        usermod -d "$USER_HOME" -s /bin/bash "$USER_NAME"
    else
        useradd -M -d "$USER_HOME" -s /bin/bash "$USER_NAME"
    fi
    chown "$USER_NAME:" "$USER_HOME"
    chmod 755 "$USER_HOME"
    echo "$USER_NAME:$PASS" | chpasswd
}

# start_sshd DIR PORT [counted]: an sshd on ${LISTEN_ADDR:-127.0.0.1}:PORT (run through the
# command prefix in the array NS_EXEC, if set: e.g. ip netns exec NS) for USER_NAME (password or the
# key DIR/client_ed25519), its files in DIR, its log in DIR/log/sshd.log; its pid is
# appended to PIDS. With "counted", SFTP is served by sftp-server logging each file's bytes
# read and written, when it is closed, to DIR/log/sftp.log.
start_sshd() {
    local dir=$1 port=$2 subsystem=internal-sftp
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519" <<<y >/dev/null
    ssh-keygen -q -t ed25519 -N '' -f "$dir/client_ed25519" <<<y >/dev/null
    mkdir -p "$dir/authorized_keys" "$dir/log" /run/sshd
    cp "$dir/client_ed25519.pub" "$dir/authorized_keys/$USER_NAME"
    if [[ ${3:-} == counted ]]; then
        subsystem=$dir/sftp-server
        printf '#!/bin/sh\nexec /usr/lib/openssh/sftp-server -e -l INFO "$@" 2>>%s\n' \
            "$dir/log/sftp.log" >"$subsystem"
        chmod 755 "$subsystem" "$dir/log"
        touch "$dir/log/sftp.log"
        chown "$USER_NAME:" "$dir/log/sftp.log"
    fi
    cat >"$dir/sshd_config" <<CONFIG
Port $port
ListenAddress ${LISTEN_ADDR:-127.0.0.1}
HostKey $dir/host_ed25519
PidFile $dir/sshd.pid
UsePAM no
PasswordAuthentication yes
PubkeyAuthentication yes
AuthorizedKeysFile $dir/authorized_keys/%u
StrictModes no
AllowUsers $USER_NAME
Subsystem sftp $subsystem
CONFIG
    ${NS_EXEC[@]+"${NS_EXEC[@]}"} /usr/sbin/sshd -D -e -f "$dir/sshd_config" 2>"$dir/log/sshd.log" &
    PIDS+=($!)
}

# wait_port PORT [ADDR]: until something listens on ADDR:PORT (default 127.0.0.1; at most
# 10 s).
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
