//! What an agent reports about its machine.

use serde::{Deserialize, Serialize};

/// A machine: identity, disks and volumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Inventory {
    pub hostname: String,
    /// `PRETTY_NAME` of `/etc/os-release` and the kernel release.
    pub os: String,
    pub agent_version: String,
    pub disks: Vec<Disk>,
    pub volumes: Vec<Volume>,
}

/// A whole block device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`).
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size: u64,
    pub logical_sector_size: u32,
    /// `gpt`, `mbr`, or absent when the disk has no table we recognise.
    pub partition_table: Option<String>,
    pub removable: bool,
}

/// A partition (or a whole disk holding a filesystem).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Volume {
    /// Kernel name (`sda1`).
    pub name: String,
    /// The disk it is on (`sda`), if a partition.
    pub disk: Option<String>,
    /// Partition number on its disk.
    pub number: Option<u32>,
    /// Byte offset on its disk.
    pub start: u64,
    pub size: u64,
    pub filesystem: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<String>,
    /// Where it is mounted, if it is.
    pub mount_point: Option<String>,
    /// Bytes in use (from the mounted filesystem).
    pub used: Option<u64>,
}
