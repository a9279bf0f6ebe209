//! Self-describing metadata: a JSON record right after the header.
//!
//! The header holds what a reader needs to decode; the metadata describes where the image
//! came from. It is stored in clear (so `info` works without the password) and is covered by
//! the index digest and, for encrypted images, by the MAC.

use serde::{Deserialize, Serialize};

use crate::header::{Coverage, Kind};

/// Largest metadata record a reader accepts.
pub const MAX_META_LEN: u32 = 4 << 20;

/// A filesystem as found on a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMeta {
    /// `ext4`, `fat32`, ….
    pub fs_type: String,
    /// Volume label.
    pub label: Option<String>,
    /// Filesystem UUID or serial.
    pub uuid: Option<String>,
    /// Bytes in use by the filesystem.
    pub used_bytes: u64,
}

/// One partition of a whole-disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// Partition number (1-based, as Linux numbers them).
    pub number: u32,
    /// Offset in bytes.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// MBR type (`0x83`) or GPT type GUID.
    pub type_id: String,
    /// GPT partition GUID.
    pub uuid: Option<String>,
    /// GPT partition name.
    pub name: Option<String>,
    /// Filesystem found, if any.
    pub filesystem: Option<FsMeta>,
    /// How it was imaged.
    pub method: Coverage,
}

/// The partition table of a whole-disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    /// `mbr` or `gpt`.
    pub kind: String,
    /// MBR signature or GPT disk GUID.
    pub disk_id: String,
}

/// An encrypted volume (LUKS) imaged through its opened mapping: the bytes before
/// `data_offset` (the LUKS header and key slots) are stored as they are, the
/// `data_size` bytes from there on are the decrypted contents, so they compress and are
/// stored by the used blocks of the filesystem inside. Restoring writes the header back and
/// the contents through the volume opened with its passphrase (or, asked for, the contents
/// alone, decrypted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptedMeta {
    /// Where the encrypted data starts in the volume, in bytes.
    pub data_offset: u64,
    /// Bytes of the opened mapping.
    pub data_size: u64,
    /// The filesystem inside, if one was found.
    pub filesystem: Option<FsMeta>,
}

/// Where the image came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMeta {
    /// Device or file path as given.
    pub path: String,
    /// `disk`, `partition` or `file`.
    pub kind: String,
    /// Device model, where known.
    pub model: Option<String>,
    /// Device serial, where known.
    pub serial: Option<String>,
    /// Bytes.
    pub size: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// Partition table (whole disks).
    pub partition_table: Option<TableMeta>,
    /// Filesystem (partitions and volume files).
    pub filesystem: Option<FsMeta>,
    /// Partitions (whole disks).
    #[serde(default)]
    pub partitions: Vec<PartitionMeta>,
    /// Set when the source is an encrypted volume imaged decrypted, through its mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decrypted: Option<DecryptedMeta>,
}

impl SourceMeta {
    /// A stable identity of the source for chain checks: filesystem UUID, else the partition
    /// table's disk id, else none.
    pub fn identity(&self) -> Option<String> {
        if let Some(uuid) = self.filesystem.as_ref().and_then(|f| f.uuid.clone()) {
            return Some(format!("filesystem {uuid}"));
        }
        self.partition_table
            .as_ref()
            .map(|t| format!("{} disk {}", t.kind, t.disk_id))
    }
}

/// The whole metadata record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Host name of the machine that made the image.
    pub host: String,
    /// The source.
    pub source: SourceMeta,
    /// Used-sector or forensic.
    pub method: Coverage,
    /// Full / incremental / differential.
    pub kind: Kind,
    /// This image (same as the header).
    pub image_id: String,
    /// The chain.
    pub chain_id: String,
    /// The parent image id.
    pub parent_id: Option<String>,
    /// File name of the parent, relative to this image's folder.
    pub parent_name: Option<String>,
    /// Content digest of the parent (hex).
    pub parent_digest: Option<String>,
    /// RFC 3339 creation time.
    pub created: String,
    /// `holdfast <version>`.
    pub tool: String,
    /// Free text.
    pub comment: Option<String>,
    /// True when the source was mounted read-write while imaged (not crash-consistent).
    pub live: bool,
    /// How consistency was obtained: `unmounted`, `mounted read-only`, `frozen: …`, `locked: …`, `live: …`.
    pub consistency: String,
    /// Warnings raised while imaging (e.g. unknown filesystem, imaged forensically).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// What the next change-tracked incremental needs to know (absent from images made
    /// before change tracking existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<crate::changes::ChangeState>,
}
