//! Change tracking from LVM thin snapshots: the snapshot an image was read from is kept
//! (renamed `holdfast-base-<volume>`), and the next incremental compares the block mappings
//! of that snapshot and its own with `thin_delta` (thin-provisioning-tools) on a
//! metadata snapshot of the pool. A block both snapshots map to the same data block is
//! shared, so it holds what it held then (thin pools copy a shared block before writing
//! it), and one neither maps reads as zeros in both: such blocks are taken from the base
//! image unread. Only the pool's metadata is read to find them.
//!
//! A kept snapshot pins the blocks the volume has overwritten since, so one is kept only
//! while the pool has room (below [`MAX_POOL_PERCENT`] of its data and metadata space), and
//! one kept snapshot per volume at most: the next run's replaces it.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use holdfast_image::changes::KeptSnapshot;
use holdfast_image::extents::Extents;

use crate::lvm;

/// Names of kept snapshots: the prefix, then the volume's name.
pub const KEPT_PREFIX: &str = "holdfast-base-";

/// A snapshot is kept only while the pool's data and metadata are less full than this.
pub const MAX_POOL_PERCENT: f64 = 70.0;

/// How the next incremental finds changes, for reports.
pub const SOURCE: &str = "LVM thin snapshot mappings";

/// The name the snapshot of `lv` is kept under.
pub fn kept_name(lv: &str) -> String {
    format!("{KEPT_PREFIX}{lv}")
}

/// Whether to keep the thin snapshot `now` for the next incremental: what to record, and a
/// note for the report when it is not kept (the pool is too full: then the snapshot kept
/// before for this volume is removed too, since it pins space).
pub fn keep_decision(now: &lvm::ThinSnapshot) -> (Option<KeptSnapshot>, Option<String>) {
    let name = kept_name(&now.origin);
    match lvm::pool_fill(&now.vg, &now.pool) {
        Ok((data, meta)) if data < MAX_POOL_PERCENT && meta < MAX_POOL_PERCENT => (
            Some(KeptSnapshot {
                volume_group: now.vg.clone(),
                name,
                thin_id: now.thin_id,
            }),
            None,
        ),
        Ok((data, meta)) => {
            let removed = lvm::remove_if_present(&now.vg, &name)
                .err()
                .map_or(String::new(), |e| {
                    format!("; the one kept before could not be removed: {e:#}")
                });
            (
                None,
                Some(format!(
                    "the thin snapshot was not kept for the next incremental: the pool {}/{} is {data:.0} % full of data and {meta:.0} % of metadata (kept only below {MAX_POOL_PERCENT:.0} %){removed}",
                    now.vg, now.pool
                )),
            )
        }
        Err(e) => (
            None,
            Some(format!(
                "the thin snapshot was not kept for the next incremental: {e:#}"
            )),
        ),
    }
}

/// Byte ranges of the volume (of `size` bytes) unchanged between the kept snapshot `base`
/// and the snapshot `now` (both of one pool): what both map to the same data block, and what
/// neither maps (both read zeros there).
pub fn unchanged(base: &KeptSnapshot, now: &lvm::ThinSnapshot, size: u64) -> Result<Extents> {
    let kept = lvm::thin_info(&base.volume_group, &base.name)?.ok_or_else(|| {
        anyhow!(
            "the base's snapshot {}/{} is gone",
            base.volume_group,
            base.name
        )
    })?;
    if kept.thin_id != base.thin_id || base.volume_group != now.vg || kept.pool != now.pool {
        bail!(
            "{}/{} is not the snapshot the base image was read from",
            base.volume_group,
            base.name
        );
    }
    let pool_dm = format!("{}-{}-tpool", dm(&now.vg), dm(&now.pool));
    let meta = Path::new("/dev/mapper").join(format!("{}-{}_tmeta", dm(&now.vg), dm(&now.pool)));
    message(&pool_dm, "reserve_metadata_snap")?;
    let out = Command::new("thin_delta")
        .arg("-m")
        .args(["--snap1", &base.thin_id.to_string()])
        .args(["--snap2", &now.thin_id.to_string()])
        .arg(&meta)
        .output()
        .context("cannot run thin_delta (thin-provisioning-tools)");
    let released = message(&pool_dm, "release_metadata_snap");
    let out = out?;
    if !out.status.success() {
        bail!(
            "thin_delta: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    released?;
    let changed = parse(&String::from_utf8_lossy(&out.stdout))?;
    let mut unchanged = Extents::full(size);
    for &(start, end) in changed.ranges() {
        unchanged.remove(start, end - start);
    }
    Ok(unchanged)
}

/// Send `msg` to the thin pool device `pool_dm`.
fn message(pool_dm: &str, msg: &str) -> Result<()> {
    let out = Command::new("dmsetup")
        .args(["message", pool_dm, "0", msg])
        .output()
        .context("cannot run dmsetup")?;
    if !out.status.success() {
        bail!(
            "dmsetup message {pool_dm} {msg}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A name as device-mapper spells it inside `vg-lv` (each `-` doubled).
fn dm(name: &str) -> String {
    name.replace('-', "--")
}

/// What changed, by `thin_delta`'s report: its `different`, `left_only` and `right_only`
/// ranges, in bytes (each range's `begin` and `length` count data blocks of
/// `data_block_size` sectors of 512 bytes). A report that is not one comparison is refused.
fn parse(report: &str) -> Result<Extents> {
    let mut block: Option<u64> = None;
    let mut changed = Vec::new();
    let mut diffs = 0;
    for line in report.lines().map(str::trim) {
        let Some(tag) = line
            .strip_prefix('<')
            .and_then(|t| t.split([' ', '>', '/']).next())
        else {
            continue;
        };
        match tag {
            "superblock" => {
                let sectors = attr(line, "data_block_size")?;
                if sectors == 0 || sectors > 1 << 21 {
                    bail!("thin_delta reported data blocks of {sectors} sectors");
                }
                block = Some(sectors * 512);
            }
            "diff" => diffs += 1,
            "same" | "different" | "left_only" | "right_only" => {
                let bytes = block.ok_or_else(|| anyhow!("thin_delta gave no data block size"))?;
                let (begin, length) = (attr(line, "begin")?, attr(line, "length")?);
                let start = begin
                    .checked_mul(bytes)
                    .ok_or_else(|| anyhow!("thin_delta reported block {begin}"))?;
                if tag != "same" {
                    changed.push((start, length.saturating_mul(bytes)));
                }
            }
            _ => {}
        }
    }
    if diffs != 1 {
        bail!("thin_delta printed {diffs} comparisons, not one");
    }
    changed.sort_unstable();
    let mut out = Extents::new();
    for (start, len) in changed {
        out.add(start, len);
    }
    Ok(out)
}

/// The number in attribute `name="…"` of the tag `line`.
fn attr(line: &str, name: &str) -> Result<u64> {
    let key = format!(" {name}=\"");
    let rest = line
        .split_once(&key)
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("thin_delta printed '{line}' without {name}"))?;
    let value = rest.split('"').next().unwrap_or_default();
    value
        .parse()
        .map_err(|_| anyhow!("thin_delta printed {name}=\"{value}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<superblock uuid="" time="3" transaction="4" data_block_size="128" nr_data_blocks="2048">
  <diff left="3" right="5">
    <same begin="0" length="10"/>
    <different begin="10" length="2"/>
    <same begin="12" length="4"/>
    <right_only begin="16" length="3"/>
    <left_only begin="19" length="1"/>
    <same begin="30" length="1"/>
  </diff>
</superblock>
"#;

    #[test]
    fn changed_ranges_become_bytes() {
        let changed = parse(REPORT).expect("parse");
        let b = 64 << 10;
        assert_eq!(changed.ranges(), &[(10 * b, 12 * b), (16 * b, 20 * b)]);
    }

    #[test]
    fn a_report_that_is_not_one_comparison_is_refused() {
        assert!(parse("").is_err());
        assert!(parse(&REPORT.replace("data_block_size=\"128\"", "")).is_err());
        assert!(parse(&REPORT.replace("length=\"10\"", "length=\"x\"")).is_err());
        let twice = REPORT.replace("</diff>", "</diff>\n<diff left=\"1\" right=\"2\">\n</diff>");
        assert!(parse(&twice).is_err());
    }
}
