//! Source planning: which bytes of a device to image, and how to describe it.
//!
//! A volume (partition or file holding one) is imaged used-sector when a reader in [`crate::fs`]
//! recognises its filesystem, forensic otherwise (with a warning). A whole disk is imaged as its
//! partition table, every gap between partitions and every partition (each used-sector by its
//! own filesystem), so restoring it gives a working disk.

use crate::disk::{self, TableKind};
use crate::error::{ImageError, Result};
use crate::extents::Extents;
use crate::fs::{self, Detected, FilesystemReader};
use crate::header::Coverage;
use crate::io::{ReadAt, SliceReadAt};
use crate::meta::{DecryptedMeta, FsMeta, PartitionMeta, SourceMeta, TableMeta};

/// What to image.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// Byte ranges to read.
    pub used: Extents,
    /// Used-sector or forensic.
    pub method: Coverage,
    /// Description for the metadata (path, model and serial are filled by the caller).
    pub source: SourceMeta,
    /// Warnings for the output and the image metadata.
    pub warnings: Vec<String>,
}

fn fs_meta(d: &Detected) -> FsMeta {
    FsMeta {
        fs_type: d.info.fs_type.clone(),
        label: d.info.label.clone(),
        uuid: d.info.uuid.clone(),
        used_bytes: d.used.total(),
    }
}

/// What the filesystem says about itself even when its allocation cannot be used (e.g. a
/// journal needing recovery): keeps label and UUID in the metadata and the chain identity.
fn identify(vol: &dyn ReadAt) -> Option<FsMeta> {
    fs::READERS
        .iter()
        .find_map(|r| r.probe(vol).ok().flatten())
        .map(|i| FsMeta {
            fs_type: i.fs_type,
            label: i.label,
            uuid: i.uuid,
            used_bytes: i.used_bytes,
        })
}

/// Plan the imaging of `dev`. `forensic` forces every sector.
pub fn plan_source(dev: &dyn ReadAt, sector_size: u32, forensic: bool) -> Result<SourcePlan> {
    plan_source_with(dev, sector_size, forensic, fs::Options::default())
}

/// [`plan_source`] with the filesystem readers' `options`.
pub fn plan_source_with(
    dev: &dyn ReadAt,
    sector_size: u32,
    forensic: bool,
    options: fs::Options,
) -> Result<SourcePlan> {
    let size = dev.size();
    let mut warnings = Vec::new();
    let mut source = SourceMeta {
        size,
        sector_size,
        ..SourceMeta::default()
    };

    let table = match disk::read_partition_table(dev, sector_size) {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!(
                "partition table unreadable ({e}); treated as a single volume"
            ));
            None
        }
    };
    if let Some(table) = table {
        source.kind = "disk".into();
        source.partition_table = Some(TableMeta {
            kind: match table.kind {
                TableKind::Mbr => "mbr".into(),
                TableKind::Gpt => "gpt".into(),
            },
            disk_id: table.disk_id.clone(),
        });
        // Start from everything; partitions with a known filesystem then give back their
        // free space. Tables and gaps stay fully imaged.
        let mut used = Extents::full(size);
        for p in &table.partitions {
            let len = p.len.min(size.saturating_sub(p.start));
            let vol = SliceReadAt::new(dev, p.start, len);
            let detected = if forensic {
                fs::detect_with(&vol, options).ok().flatten()
            } else {
                match fs::detect_with(&vol, options) {
                    Ok(d) => d,
                    Err(e) => {
                        warnings.push(format!(
                            "partition {}: {e}; imaged sector by sector",
                            p.number
                        ));
                        None
                    }
                }
            };
            let mut method = Coverage::Forensic;
            if let Some(d) = &detected {
                if !forensic {
                    let mut part_used = d.used.clone();
                    part_used.truncate(len);
                    used.remove(p.start, len);
                    used.add_shifted(&part_used, p.start);
                    method = Coverage::UsedSector;
                }
            } else if !forensic {
                warnings.push(format!(
                    "partition {}: unknown filesystem; imaged sector by sector (forensic)",
                    p.number
                ));
            }
            source.partitions.push(PartitionMeta {
                number: p.number,
                start: p.start,
                len: p.len,
                type_id: p.type_id.clone(),
                uuid: p.uuid.clone(),
                name: p.name.clone(),
                filesystem: detected.as_ref().map(fs_meta).or_else(|| identify(&vol)),
                method,
            });
        }
        let method = if forensic {
            Coverage::Forensic
        } else {
            Coverage::UsedSector
        };
        let used = if forensic { Extents::full(size) } else { used };
        return Ok(SourcePlan {
            used,
            method,
            source,
            warnings,
        });
    }

    source.kind = "volume".into();
    let detected = match fs::detect_with(dev, options) {
        Ok(d) => d,
        Err(e) => {
            if !forensic {
                warnings.push(format!("{e}; imaged sector by sector (forensic)"));
            }
            None
        }
    };
    source.filesystem = detected.as_ref().map(fs_meta).or_else(|| identify(dev));
    match detected {
        Some(d) if !forensic => {
            let mut used = d.used;
            used.truncate(size);
            Ok(SourcePlan {
                used,
                method: Coverage::UsedSector,
                source,
                warnings,
            })
        }
        other => {
            if other.is_none() && !forensic && warnings.is_empty() {
                warnings.push("unknown filesystem; imaged sector by sector (forensic)".into());
            }
            Ok(SourcePlan {
                used: Extents::full(size),
                method: Coverage::Forensic,
                source,
                warnings,
            })
        }
    }
}

/// Plan the imaging of an encrypted (LUKS) volume through its opened mapping: `container` is
/// the volume as it is on the device, `inner` the mapping (its decrypted contents), whose
/// data starts at `data_offset` in the volume. The header and key slots before it, and
/// whatever follows the mapping's end, are stored as they are; the contents by the used
/// blocks of the filesystem inside (every block when it is not recognised, or `forensic`).
pub fn plan_decrypted(
    container: &dyn ReadAt,
    inner: &dyn ReadAt,
    data_offset: u64,
    sector_size: u32,
    forensic: bool,
    options: fs::Options,
) -> Result<SourcePlan> {
    let size = container.size();
    let luks = fs::luks::LuksReader.probe(container).ok().flatten();
    let Some(luks) = luks else {
        return Err(ImageError::Invalid(
            "the source is not a LUKS volume: only LUKS volumes are imaged through their mapping"
                .into(),
        ));
    };
    let data_end = data_offset.saturating_add(inner.size());
    if data_end > size {
        return Err(ImageError::Invalid(format!(
            "the opened mapping ends at byte {data_end}, past the end of the volume ({size} bytes)"
        )));
    }
    let mut warnings = Vec::new();
    let detected = match fs::detect_with(inner, options) {
        Ok(d) => d,
        Err(e) => {
            if !forensic {
                warnings.push(format!(
                    "inside the LUKS volume: {e}; its contents imaged sector by sector"
                ));
            }
            None
        }
    };
    let filesystem = detected.as_ref().map(fs_meta).or_else(|| identify(inner));
    let (used, method) = match detected {
        Some(d) if !forensic => {
            let mut inside = d.used;
            inside.truncate(inner.size());
            let mut used = Extents::full(size);
            used.remove(data_offset, inner.size());
            used.add_shifted(&inside, data_offset);
            (used, Coverage::UsedSector)
        }
        other => {
            if other.is_none() && !forensic && warnings.is_empty() {
                warnings.push(
                    "inside the LUKS volume: unknown filesystem; its contents imaged sector by \
                     sector"
                        .into(),
                );
            }
            (Extents::full(size), Coverage::Forensic)
        }
    };
    let source = SourceMeta {
        kind: "volume".into(),
        size,
        sector_size,
        filesystem: Some(FsMeta {
            fs_type: luks.fs_type,
            label: luks.label,
            uuid: luks.uuid,
            used_bytes: used.total(),
        }),
        decrypted: Some(DecryptedMeta {
            data_offset,
            data_size: inner.size(),
            filesystem,
        }),
        ..SourceMeta::default()
    };
    Ok(SourcePlan {
        used,
        method,
        source,
        warnings,
    })
}
