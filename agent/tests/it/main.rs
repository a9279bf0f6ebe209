//! End-to-end tests of `holdfast-agent image …` on real filesystems and loop devices.
//!
//! They need root, loop devices and e2fsprogs / dosfstools / util-linux / fdisk. Without them
//! a test skips with a message on a developer's machine, and fails when `CI` is set.

mod chains;
mod change_tracking;
mod clone;
mod consistency;
mod disks;
mod dm_snapshot;
mod faults;
mod luks;
mod mount;
mod remote;
mod script;
mod vm;
mod write_tracking;
mod xfs;
