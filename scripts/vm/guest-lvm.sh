# Sourced by the scripts that run inside the test VM (scripts/vm/run.sh) and use
# device-mapper, LVM or LUKS: loads their modules, and keeps LVM and libdevmapper from
# waiting for udev, which the VM does not run (../shared/components.md, section 7).
# Every LVM command run meanwhile, also by the agent, reads this configuration.
modprobe -a loop dm-snapshot dm-thin-pool dm-crypt
export DM_DISABLE_UDEV=1 LVM_SUPPRESS_FD_WARNINGS=1 LVM_SYSTEM_DIR=/tmp/lvm
mkdir -p /tmp/lvm
cat > /tmp/lvm/lvm.conf <<'CONF'
activation { udev_sync = 0 udev_rules = 0 }
devices { obtain_device_list_from_udev = 0 }
CONF
