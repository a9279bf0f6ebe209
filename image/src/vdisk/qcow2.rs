//! Write a block source as a qcow2 virtual disk (version 3), for KVM, Proxmox and
//! anything else that runs QEMU images.
//!
//! The file is written front to back in one pass, sparse: only clusters holding data are
//! stored (zero and unused blocks read as zeros). Which clusters hold data is known from the
//! source's classification before anything is read, so the whole layout is fixed first:
//!
//! | clusters | what |
//! | --- | --- |
//! | 1 | header (104 bytes, version 3, no extensions) |
//! | L1 | one 8-byte entry per L2 table's worth of the disk |
//! | refcount table | one 8-byte entry per refcount block |
//! | refcount blocks | one 16-bit count per cluster of the file: every used cluster is 1 |
//! | L2 tables | one per L1 entry that maps any data, each `cluster / 8` entries |
//! | data | the data clusters, in disk order |
//!
//! Every table entry carries the `COPIED` flag (its cluster's count is exactly 1), as
//! `qemu-img check` expects of an image without snapshots.

use super::{allocated_units, write_units, Output, Written};
use crate::blocks::BlockSource;
use crate::error::{ImageError, Result};
use crate::progress::{Cancel, Progress};

const MAGIC: u32 = 0x5146_49fb;
const VERSION: u32 = 3;
const HEADER_LEN: usize = 104;
/// 16-bit refcounts.
const REFCOUNT_ORDER: u32 = 4;
/// Table entry flag: the cluster's refcount is exactly one.
const COPIED: u64 = 1 << 63;
/// The usual qcow2 cluster: big clusters waste space on small changes, small ones make big
/// tables.
const DEFAULT_CLUSTER: u64 = 64 << 10;
/// The largest cluster qcow2 allows (`cluster_bits` 21).
const MAX_CLUSTER: u64 = 2 << 20;

/// Where everything goes, in clusters of `cluster` bytes.
struct Layout {
    cluster: u64,
    disk: u64,
    /// Per disk cluster: whether it holds data.
    allocated: Vec<bool>,
    l1_entries: u64,
    l1_at: u64,
    refcount_table_at: u64,
    refcount_table_clusters: u64,
    refcount_blocks_at: u64,
    refcount_blocks: u64,
    /// Per L1 entry: its L2 table's cluster index, when it maps any data.
    l2_of: Vec<Option<u64>>,
    data_at: u64,
    total_clusters: u64,
}

impl Layout {
    fn new(src: &dyn BlockSource) -> Result<Self> {
        let bs = u64::from(src.block_size());
        let cluster = DEFAULT_CLUSTER.max(bs);
        if cluster > MAX_CLUSTER || !cluster.is_power_of_two() {
            return Err(ImageError::Invalid(format!(
                "a block size of {bs} bytes does not fit a qcow2 cluster"
            )));
        }
        // QEMU sizes disks in 512-byte sectors: an odd tail is padded with zeros.
        let disk = src.size().div_ceil(512) * 512;
        let guest_clusters = disk.div_ceil(cluster);
        let allocated = allocated_units(src, cluster, guest_clusters);
        let per_l2 = cluster / 8;
        let l1_entries = guest_clusters.div_ceil(per_l2);
        let l1_clusters = (l1_entries * 8).div_ceil(cluster).max(1);
        let mut l2_count = 0;
        let l2_of_rel: Vec<Option<u64>> = allocated
            .chunks(usize::try_from(per_l2).unwrap_or(usize::MAX))
            .map(|c| {
                c.iter().any(|&a| a).then(|| {
                    l2_count += 1;
                    l2_count - 1
                })
            })
            .collect();
        let data = allocated.iter().filter(|&&a| a).count() as u64;
        // The refcount blocks count every cluster of the file, themselves included.
        let per_refblock = cluster * 8 / (1 << REFCOUNT_ORDER);
        let fixed = 1 + l1_clusters + l2_count + data;
        let (mut blocks, mut table) = (1u64, 1u64);
        loop {
            let total = fixed + table + blocks;
            let need_blocks = total.div_ceil(per_refblock);
            let need_table = (need_blocks * 8).div_ceil(cluster);
            if need_blocks <= blocks && need_table <= table {
                break;
            }
            blocks = blocks.max(need_blocks);
            table = table.max(need_table);
        }
        let l1_at = 1;
        let refcount_table_at = l1_at + l1_clusters;
        let refcount_blocks_at = refcount_table_at + table;
        let l2_at = refcount_blocks_at + blocks;
        let data_at = l2_at + l2_count;
        Ok(Self {
            cluster,
            disk,
            allocated,
            l1_entries,
            l1_at,
            refcount_table_at,
            refcount_table_clusters: table,
            refcount_blocks_at,
            refcount_blocks: blocks,
            l2_of: l2_of_rel
                .into_iter()
                .map(|r| r.map(|r| l2_at + r))
                .collect(),
            data_at,
            total_clusters: data_at + data,
        })
    }

    fn header(&self) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(0, &MAGIC.to_be_bytes());
        put(4, &VERSION.to_be_bytes());
        put(20, &self.cluster.trailing_zeros().to_be_bytes());
        put(24, &self.disk.to_be_bytes());
        put(36, &(self.l1_entries as u32).to_be_bytes());
        put(40, &(self.l1_at * self.cluster).to_be_bytes());
        put(48, &(self.refcount_table_at * self.cluster).to_be_bytes());
        put(56, &(self.refcount_table_clusters as u32).to_be_bytes());
        put(96, &REFCOUNT_ORDER.to_be_bytes());
        put(100, &(HEADER_LEN as u32).to_be_bytes());
        h
    }
}

/// Write `src` as a qcow2 file to `out`, front to back.
pub fn write_qcow2(
    src: &dyn BlockSource,
    out: &mut dyn std::io::Write,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Written> {
    let l = Layout::new(src)?;
    if l.l1_entries > u64::from(u32::MAX) {
        return Err(ImageError::Invalid(
            "the disk is too large for a qcow2 L1 table".into(),
        ));
    }
    let cs = usize::try_from(l.cluster).unwrap_or(usize::MAX);
    let mut out = Output::new(out, "qcow2");
    let mut buf = vec![0u8; cs];

    // Header cluster.
    let header = l.header();
    buf[..header.len()].copy_from_slice(&header);
    out.put(&buf)?;
    // L1 table.
    let mut table = Vec::with_capacity(cs);
    for l2 in &l.l2_of {
        let entry = l2.map_or(0, |c| (c * l.cluster) | COPIED);
        table.extend_from_slice(&entry.to_be_bytes());
    }
    out.put(&padded(table, (l.refcount_table_at - l.l1_at) * l.cluster))?;
    // Refcount table, then its blocks: every cluster of the file counts once.
    let mut table = Vec::new();
    for b in 0..l.refcount_blocks {
        table.extend_from_slice(&((l.refcount_blocks_at + b) * l.cluster).to_be_bytes());
    }
    out.put(&padded(table, l.refcount_table_clusters * l.cluster))?;
    let per_refblock = l.cluster / 2;
    for b in 0..l.refcount_blocks {
        let first = b * per_refblock;
        let mut block = vec![0u8; cs];
        for (i, count) in block.chunks_exact_mut(2).enumerate() {
            if first + (i as u64) < l.total_clusters {
                count.copy_from_slice(&1u16.to_be_bytes());
            }
        }
        out.put(&block)?;
    }
    // L2 tables: the n-th data cluster in disk order is the n-th stored.
    let per_l2 = cs / 8;
    let mut stored = 0u64;
    for (i, l2) in l.l2_of.iter().enumerate() {
        let Some(_) = l2 else { continue };
        let mut table = Vec::with_capacity(cs);
        let from = i * per_l2;
        for a in l.allocated.iter().skip(from).take(per_l2) {
            let entry = if *a {
                stored += 1;
                ((l.data_at + stored - 1) * l.cluster) | COPIED
            } else {
                0
            };
            table.extend_from_slice(&entry.to_be_bytes());
        }
        out.put(&padded(table, l.cluster))?;
    }
    // Data clusters.
    let data_bytes = write_units(
        src,
        l.cluster,
        &l.allocated,
        &[],
        &mut out,
        progress,
        cancel,
    )?;
    out.finish(data_bytes, l.disk)
}

/// `bytes` zero-padded to `len`.
fn padded(mut bytes: Vec<u8>, len: u64) -> Vec<u8> {
    bytes.resize(usize::try_from(len).unwrap_or(0), 0);
    bytes
}

#[cfg(test)]
mod tests {
    use crate::vdisk::test_support::round_trip;

    #[test]
    fn a_sparse_disk_reads_back_from_qcow2() {
        // An odd size (the last block short), data in the first and last clusters.
        let size = (5 << 20) + 12_345;
        round_trip(
            "qcow2",
            size,
            32 << 10,
            &[
                (0, 32 << 10),
                (40 << 10, 100 << 10),
                (3 << 20, 1 << 20),
                (size - 5000, 5000),
            ],
        );
    }

    #[test]
    fn large_sparse_disks_use_several_l2_tables_and_big_blocks_big_clusters() {
        // 1.5 GiB: three L2 tables' worth at 64 KiB clusters, data in the first and third.
        let gib = 1u64 << 30;
        if let Some(w) = round_trip(
            "qcow2",
            gib + (gib / 2),
            32 << 10,
            &[(4096, 8192), (gib + 777 * 4096, 3 << 16)],
        ) {
            assert!(w.file_bytes < 2 << 20, "{w:?}");
        }
        // 1 MiB blocks: 1 MiB clusters.
        round_trip("qcow2", 8 << 20, 1 << 20, &[(0, 1 << 20), (5 << 20, 4096)]);
    }
}
