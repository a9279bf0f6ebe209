#!/usr/bin/env bash
# Set up (or repair) what the VM tests need: a distribution kernel with every feature as a
# module (device-mapper, LVM snapshots and thin pools, dm-crypt), qemu, virtme-ng, and the
# LVM and cryptsetup tools. Idempotent: run on every test run; it changes only what is
# missing or broken. Everything lives under HOLDFAST_VM (default /var/tmp/holdfast-vm).
#
# This machine's own kernel has no device-mapper and loads no modules, so those tests boot
# Debian's kernel under qemu (without KVM) with the host's filesystem shared read-only
# (virtme-ng), run a script there and read its results from a shared folder.
set -euo pipefail
VM=${HOLDFAST_VM:-/var/tmp/holdfast-vm}
mkdir -p "$VM/kernel"

need=()
for p in qemu-system-x86:qemu-system-x86_64 kmod:modprobe lvm2:lvcreate \
         thin-provisioning-tools:thin_check cryptsetup-bin:cryptsetup \
         busybox-static:busybox; do
    command -v "${p#*:}" >/dev/null 2>&1 || need+=("${p%%:*}")
done
# virtme-ng builds its initramfs from a static busybox; the dynamic one does not do.
{ ldd /bin/busybox 2>&1 || true; } | grep -q "not a dynamic" || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
    echo "vm: installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

# The kernel: the versioned package linux-image-amd64 depends on, extracted (not installed).
version=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$version" ] || { echo "vm: cannot find Debian's kernel package" >&2; exit 1; }
root="$VM/kernel/root"
if ! ls "$root"/boot/vmlinuz-* >/dev/null 2>&1 || [ ! -d "$root/lib/modules" ]; then
    echo "vm: fetching $version"
    rm -rf "$root" "$VM"/kernel/*.deb
    (cd "$VM/kernel" && apt-get download "$version" 2>/dev/null)
    dpkg-deb -x "$VM"/kernel/"$version"_*.deb "$root"
    rm -f "$VM"/kernel/*.deb
fi

# virtme-ng, from PyPI, in its own venv.
if ! "$VM/vng/bin/vng" --version >/dev/null 2>&1; then
    echo "vm: installing virtme-ng"
    rm -rf "$VM/vng"
    python3 -m venv "$VM/vng"
    "$VM/vng/bin/pip" install -q --disable-pip-version-check virtme-ng
fi
echo "vm: ready ($(basename "$root"/boot/vmlinuz-*))"
