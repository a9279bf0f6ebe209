//! What an agent reports about its machine.

use serde::{Deserialize, Serialize};

use crate::job::ConsistencyMethod;

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
    /// What the device is when it is not a physical disk (older agents did not say).
    #[serde(default)]
    pub backing: Option<Backing>,
}

/// A block device made of something else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum Backing {
    /// A loop device over a file.
    Loop { file: String },
    /// An LVM logical volume `vg/lv`, on the devices `on` (kernel names).
    Lvm {
        vg: String,
        lv: String,
        on: Vec<String>,
    },
    /// A LUKS (dm-crypt) mapping, on the devices `on`.
    Crypt { name: String, on: Vec<String> },
    /// Another device-mapper device.
    DeviceMapper { name: String, on: Vec<String> },
}

impl Backing {
    /// For people: `loop over FILE`, `LVM volume vg/lv on sda2`, ….
    pub fn describe(&self) -> String {
        match self {
            Backing::Loop { file } => format!("loop device over {file}"),
            Backing::Lvm { vg, lv, on } => format!("LVM volume {vg}/{lv} on {}", on.join(", ")),
            Backing::Crypt { name, on } => format!("LUKS mapping {name} on {}", on.join(", ")),
            Backing::DeviceMapper { name, on } => {
                format!("device-mapper device {name} on {}", on.join(", "))
            }
        }
    }
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
    /// Mounted read-write (older agents did not say).
    #[serde(default)]
    pub read_write: bool,
    /// How it can be imaged consistently now: `unmounted` when it is not mounted read-write;
    /// otherwise `freeze` (when its filesystem can be frozen), `lock` and `live`.
    #[serde(default)]
    pub consistency: Vec<ConsistencyMethod>,
}
