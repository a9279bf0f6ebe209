#!/usr/bin/env bash
# Boot the test VM (see setup.sh), run SCRIPT in it as root, and exit with its status.
#   scripts/vm/run.sh SCRIPT OUT_DIR [READ_ONLY_DIR...]
# OUT_DIR is shared read-write: the script writes its results there; the VM's console log
# goes to OUT_DIR/console.log and the script's status to OUT_DIR/status. Each READ_ONLY_DIR
# (e.g. the cargo target folder with the binaries under test) is shared read-only; the rest
# of the host's filesystem is seen read-only too, but /tmp and /var/tmp are the VM's own.
# With HOLDFAST_VM_NETWORK=user the VM gets user-mode networking: it reaches the host's
# loopback at 10.0.2.2 (through qemu, a process on this machine) and nothing else is set up.
set -euo pipefail
VM=${HOLDFAST_VM:-/var/tmp/holdfast-vm}
script=$(realpath "$1")
out=$(realpath "$2")
shift 2
kernel=$(ls "$VM"/kernel/root/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$kernel" ] || { echo "vm: not set up; run scripts/vm/setup.sh" >&2; exit 1; }
dirs=(--rodir "$VM/kernel")
net=()
[ "${HOLDFAST_VM_NETWORK:-}" = user ] && net=(--network user --no-dhcp)
for d in "$@"; do dirs+=(--rodir "$(realpath "$d")"); done
rm -f "$out/status"
# The wrapper records the script's status: vng itself exits 255 whatever it returns.
cat > "$out/.guest.sh" <<GUEST
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
/bin/sh "$script" > "$out/script.log" 2>&1
echo \$? > "$out/status"
GUEST
chmod +x "$out/.guest.sh"
# A VM that dies while booting, before the script starts (seen once in CI, 5 s in, while two
# other test VMs booted), is booted again: the script never ran, so nothing is repeated.
for attempt in 1 2; do
    PATH="$VM/vng/bin:$PATH" timeout "${HOLDFAST_VM_TIMEOUT:-900}" vng --verbose --force-9p \
        --run "$kernel" --disable-kvm --cpus 2 --memory 2G \
        "${dirs[@]}" "${net[@]}" --rwdir "$out" --exec "$out/.guest.sh" > "$out/console.log" 2>&1 || true
    if [ -s "$out/status" ] || [ -e "$out/script.log" ] || [ "$attempt" = 2 ]; then break; fi
    mv "$out/console.log" "$out/console-boot-$attempt.log"
    echo "vm: the VM died before running the script (attempt $attempt; see $out/console-boot-$attempt.log)" >&2
done
[ -s "$out/status" ] || { echo "vm: the VM did not run the script (see $out/console.log)" >&2; exit 1; }
exit "$(cat "$out/status")"
