//! Change-tracked incrementals: which blocks can be taken from the base image unread.
//!
//! A plain incremental reads and hashes every used block to find the few that changed. With
//! change tracking, the filesystem readers name the byte ranges that hold only file data
//! unchanged since the base image's snapshot ([`crate::fs::FilesystemReader::unchanged_since`]);
//! an image block lying wholly inside them is recorded as inherited with the base's hash,
//! without being read. Every other block is read and hashed as before, so a range a reader
//! fails to name costs a read, never a wrong image.
//!
//! Safeguards: every image records a [`ChangeState`] in its metadata (when its source was
//! held, the filesystems' mount counts, how many change-tracked incrementals ran since the
//! last full hash pass). [`plan`] runs a full hash pass instead, and says why, when the
//! base's state is missing or cannot be trusted (clock behind the base's snapshot time,
//! a filesystem mounted in between, different volumes) and every `full_hash_every`-th
//! incremental.

use crate::blocks::{BlockBuf, BlockSource, Class};
use crate::extents::Extents;
use crate::fs;
use crate::header::Kind;
use crate::index::{BlockState, Entry, Index};
use crate::io::{ReadAt, SliceReadAt};
use crate::meta::SourceMeta;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Full hash pass every this many incrementals unless the job says otherwise.
pub const DEFAULT_FULL_HASH_EVERY: u32 = 7;

/// Files whose ctime is less than this many seconds before the base's snapshot are read
/// again unless the caller says otherwise: the kernel stamps with its tick, the snapshot time
/// is taken by the agent, and NTP may slew the clock in between.
pub const DEFAULT_MARGIN_SECS: u32 = 60;

/// What an image records for the change-tracked incremental after it (metadata `changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeState {
    /// When the source was held for this image (Unix seconds, taken just before the hold).
    pub held_at: i64,
    /// Change-tracked incrementals since the last full hash pass (0: this image was one).
    pub tracked_since_full_pass: u32,
    /// The filesystems imaged used-sector, in source order.
    pub volumes: Vec<VolumeState>,
    /// How this image found its changed blocks: a change source (e.g. `ext4 inode change
    /// times`) or `full hash pass`.
    pub pass: String,
    /// Why a full hash pass ran (none for a full image or a change-tracked one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The LVM thin snapshot this image was read from, kept for the next incremental to
    /// compare block mappings with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_snapshot: Option<KeptSnapshot>,
    /// Where this image's place in the agent's record of the source's block writes is: the
    /// next incremental reads what was written after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_mark: Option<WriteMark>,
}

/// A cut in the agent's record of one device's block writes (see `holdfast-agent`'s
/// `write_log`), made just before the source was held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMark {
    /// The recording it belongs to: a new one starts whenever the record could have missed
    /// a write (a reboot, lost events, the device replaced).
    pub session: String,
    /// The cut's number within the recording.
    pub cut: u64,
}

/// An LVM thin snapshot kept after imaging (see `holdfast-agent`'s `thin_changes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSnapshot {
    /// Its volume group.
    pub volume_group: String,
    /// Its logical volume name.
    pub name: String,
    /// Its device id in the thin pool.
    pub thin_id: u64,
}

/// Unchanged ranges found by a change source below the filesystem (LVM thin mappings, traced
/// block writes), tried before the filesystems' own.
#[derive(Debug, Clone)]
pub struct Found {
    /// Byte ranges of the source.
    pub ranges: Extents,
    /// The source's name, for reports.
    pub source: String,
}

/// One filesystem of the source as it was held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// Byte offset of the volume in the source.
    pub offset: u64,
    /// Its filesystem, as blkid names it.
    pub fs_type: String,
    /// The filesystem's own mount count, when it keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_count: Option<u64>,
    /// The filesystem's last committed transaction, when it numbers them (btrfs: the
    /// generation; XFS v5: the superblock's log sequence number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl VolumeState {
    fn history(&self) -> fs::History {
        fs::History {
            mount_count: self.mount_count,
            generation: self.generation,
        }
    }
}

/// The pass name of an image that hashed every used block.
pub const FULL_HASH_PASS: &str = "full hash pass";

/// What the caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Use change sources at all.
    pub enabled: bool,
    /// Every this many incrementals hash every block (0: only when a safeguard asks).
    pub full_hash_every: u32,
    /// Files changed up to this many seconds before the base's snapshot are read again.
    pub margin_secs: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            full_hash_every: DEFAULT_FULL_HASH_EVERY,
            margin_secs: DEFAULT_MARGIN_SECS,
        }
    }
}

/// The outcome of [`plan`].
#[derive(Debug, Clone)]
pub struct Tracking {
    /// To record in the new image's metadata.
    pub state: ChangeState,
    /// Byte ranges of the source whose blocks may come from the base unread (empty for a
    /// full hash pass).
    pub unchanged: Extents,
    /// Bytes read from the source to find them.
    pub scanned_bytes: u64,
}

/// The used-sector filesystems of `source`: `(offset, len, fs_type)`.
pub fn filesystems(source: &SourceMeta) -> Vec<(u64, u64, String)> {
    if !source.partitions.is_empty() {
        return source
            .partitions
            .iter()
            .filter(|p| p.method == crate::header::Coverage::UsedSector)
            .filter_map(|p| {
                let fs = p.filesystem.as_ref()?;
                Some((p.start, p.len, fs.fs_type.clone()))
            })
            .collect();
    }
    if let Some(d) = &source.decrypted {
        return d
            .filesystem
            .iter()
            .map(|fs| (d.data_offset, d.data_size, fs.fs_type.clone()))
            .collect();
    }
    source
        .filesystem
        .iter()
        .map(|fs| (0, source.size, fs.fs_type.clone()))
        .collect()
}

/// Counts the bytes read through it.
struct Counted<'a> {
    inner: &'a dyn ReadAt,
    read: &'a AtomicU64,
}

impl ReadAt for Counted<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_exact_at(buf, offset)
    }
}

/// Decide how the image of `view` (the held source, described by `source`) finds its
/// changes, and find them. `base` is the state the base image recorded; `held_at` is when
/// the source was held for this image; `below` what a change source below the filesystem
/// found (or why it could not, naming the source), used first when the base can be trusted.
pub fn plan(
    view: &dyn ReadAt,
    source: &SourceMeta,
    kind: Kind,
    base: Option<&ChangeState>,
    held_at: i64,
    settings: Settings,
    below: Option<std::result::Result<Found, String>>,
) -> Tracking {
    let read = AtomicU64::new(0);
    let counted = Counted {
        inner: view,
        read: &read,
    };
    let vols: Vec<_> = filesystems(source)
        .into_iter()
        .map(|(offset, len, fs_type)| {
            let vol = SliceReadAt::new(&counted, offset, len);
            let reader = fs::reader_of(&vol).ok().flatten();
            let history = reader
                .and_then(|r| r.history(&vol).ok())
                .unwrap_or_default();
            (
                len,
                reader,
                VolumeState {
                    offset,
                    fs_type,
                    mount_count: history.mount_count,
                    generation: history.generation,
                },
            )
        })
        .collect();
    let volumes: Vec<VolumeState> = vols.iter().map(|v| v.2.clone()).collect();
    let full_pass = |reason: Option<String>| Tracking {
        state: ChangeState {
            held_at,
            tracked_since_full_pass: 0,
            volumes: volumes.clone(),
            pass: FULL_HASH_PASS.into(),
            reason,
            kept_snapshot: None,
            write_mark: None,
        },
        unchanged: Extents::new(),
        scanned_bytes: read.load(Ordering::Relaxed),
    };
    if kind == Kind::Full {
        return full_pass(None);
    }
    let base = match untrusted(base, held_at, &volumes, settings) {
        Err(reason) => return full_pass(Some(reason)),
        Ok(base) => base,
    };

    let not_below = match below {
        Some(Ok(found)) => {
            return Tracking {
                state: ChangeState {
                    held_at,
                    tracked_since_full_pass: base.tracked_since_full_pass + 1,
                    volumes,
                    pass: found.source,
                    reason: None,
                    kept_snapshot: None,
                    write_mark: None,
                },
                unchanged: found.ranges,
                scanned_bytes: read.load(Ordering::Relaxed),
            };
        }
        Some(Err(why)) => Some(why),
        None => None,
    };
    let since = base.held_at - i64::from(settings.margin_secs);
    let mut unchanged = Extents::new();
    let mut sources = Vec::new();
    let mut refused = Vec::new();
    for ((len, reader, v), was) in vols.iter().zip(&base.volumes) {
        let vol = SliceReadAt::new(&counted, v.offset, *len);
        match reader.map(|r| r.unchanged_since(&vol, since, &was.history())) {
            Some(Ok(Some(found))) => {
                unchanged.add_shifted(&found.ranges, v.offset);
                sources.push(format!("{} {}", v.fs_type, found.source));
            }
            Some(Err(e)) => refused.push(format!("{}: {e}", v.fs_type)),
            Some(Ok(None)) | None => refused.push(format!("{}: no change source", v.fs_type)),
        }
    }
    if sources.is_empty() {
        let why = if refused.is_empty() {
            "no filesystem to track".to_owned()
        } else {
            refused.join("; ")
        };
        return full_pass(Some(format!("no change source could be used ({why})")));
    }
    sources.dedup();
    let mut pass = sources.join(", ");
    if let Some(why) = not_below {
        pass += &format!(" ({why})");
    }
    if !refused.is_empty() {
        pass += &format!(
            "; every block hashed on the others ({})",
            refused.join("; ")
        );
    }
    Tracking {
        state: ChangeState {
            held_at,
            tracked_since_full_pass: base.tracked_since_full_pass + 1,
            volumes,
            pass,
            reason: None,
            kept_snapshot: None,
            write_mark: None,
        },
        unchanged,
        scanned_bytes: read.load(Ordering::Relaxed),
    }
}

/// The base state when change times since it can be trusted; otherwise why not.
fn untrusted<'a>(
    base: Option<&'a ChangeState>,
    held_at: i64,
    volumes: &[VolumeState],
    settings: Settings,
) -> std::result::Result<&'a ChangeState, String> {
    if !settings.enabled {
        return Err("change tracking is off".into());
    }
    let base = base.ok_or_else(|| {
        "the base image records no change-tracking state (made by an older version)".to_owned()
    })?;
    if base.held_at <= 0 {
        return Err("the base image's snapshot time is unknown".into());
    }
    if held_at < base.held_at {
        return Err(format!(
            "the clock is {} s behind the base image's snapshot time: change times cannot be trusted",
            base.held_at - held_at
        ));
    }
    let every = settings.full_hash_every;
    if every > 0 && base.tracked_since_full_pass + 1 >= every {
        return Err(format!(
            "a full hash pass runs every {every} incrementals ({} change-tracked since the last)",
            base.tracked_since_full_pass
        ));
    }
    let layout = |v: &[VolumeState]| -> Vec<(u64, String)> {
        v.iter().map(|v| (v.offset, v.fs_type.clone())).collect()
    };
    if layout(&base.volumes) != layout(volumes) {
        return Err("the source's filesystems differ from the base image's".into());
    }
    for (was, now) in base.volumes.iter().zip(volumes) {
        if let (Some(then), Some(gen)) = (was.generation, now.generation) {
            if gen < then {
                return Err(format!(
                    "the {} filesystem at offset {} has committed up to transaction {gen}, before the base image's {then}: an older copy of it",
                    now.fs_type, now.offset
                ));
            }
        }
        if was.mount_count != now.mount_count {
            return Err(format!(
                "the {} filesystem at offset {} was mounted since the base image (mount count {} then, {} now)",
                now.fs_type,
                now.offset,
                count(was.mount_count),
                count(now.mount_count)
            ));
        }
    }
    Ok(base)
}

fn count(c: Option<u64>) -> String {
    c.map_or_else(|| "unknown".into(), |c| c.to_string())
}

/// A block source that takes from the base image, unread, every block lying wholly inside
/// the unchanged ranges (when the base holds it), and asks `inner` for the rest.
pub struct TrackedBlocks<'a> {
    inner: &'a dyn BlockSource,
    base: &'a Index,
    unchanged: Vec<bool>,
}

impl<'a> TrackedBlocks<'a> {
    /// `unchanged` is in source bytes; `base` is the base image's index.
    pub fn new(inner: &'a dyn BlockSource, base: &'a Index, unchanged: &Extents) -> Self {
        let bs = u64::from(inner.block_size());
        let size = inner.size();
        let n = size.div_ceil(bs);
        let mut marks = vec![false; usize::try_from(n).unwrap_or(0)];
        for &(s, e) in unchanged.ranges() {
            let e = e.min(size);
            let first = s.div_ceil(bs);
            // The last block may be short: whole when the range reaches the source's end.
            let last = if e == size { n } else { e / bs };
            for m in marks
                .iter_mut()
                .take(usize::try_from(last).unwrap_or(0))
                .skip(usize::try_from(first).unwrap_or(usize::MAX))
            {
                *m = true;
            }
        }
        Self {
            inner,
            base,
            unchanged: marks,
        }
    }

    /// Bytes of blocks taken from the base unread.
    pub fn skipped_bytes(&self) -> u64 {
        let bs = u64::from(self.inner.block_size());
        let size = self.inner.size();
        (0..self.unchanged.len() as u64)
            .filter(|&n| matches!(self.classify(n), Class::Fixed(_)))
            .filter(|&n| self.inner.classify(n) == Class::Read)
            .map(|n| bs.min(size - n * bs))
            .sum()
    }
}

impl BlockSource for TrackedBlocks<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn classify(&self, n: u64) -> Class {
        let class = self.inner.classify(n);
        let marked = self.unchanged.get(n as usize).copied().unwrap_or(false);
        let base = self.base.entries.get(n as usize);
        match (class, marked, base) {
            (Class::Read, true, Some(b)) => match b.state {
                BlockState::Data | BlockState::Inherited => Class::Fixed(Entry {
                    state: BlockState::Inherited,
                    slot: 0,
                    frame: 0,
                    hash: b.hash,
                }),
                BlockState::Zero => Class::Fixed(Entry::ZERO),
                // Free then: whatever it holds now was written since.
                BlockState::Unallocated => Class::Read,
            },
            (class, _, _) => class,
        }
    }
    fn read_blocks(&self, blocks: &[u64], buf: &mut BlockBuf) -> Result<()> {
        self.inner.read_blocks(blocks, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::DeviceBlocks;
    use crate::crypto::HASH_LEN;

    fn state(held_at: i64, tracked: u32, mounts: Option<u64>) -> ChangeState {
        ChangeState {
            held_at,
            tracked_since_full_pass: tracked,
            volumes: vec![VolumeState {
                offset: 0,
                fs_type: "ext4".into(),
                mount_count: mounts,
                generation: None,
            }],
            pass: FULL_HASH_PASS.into(),
            reason: None,
            kept_snapshot: None,
            write_mark: None,
        }
    }

    fn why(base: Option<&ChangeState>, held_at: i64, settings: Settings) -> String {
        let now = state(held_at, 0, Some(3)).volumes;
        match untrusted(base, held_at, &now, settings) {
            Err(reason) => reason,
            Ok(_) => "trusted".into(),
        }
    }

    #[test]
    fn a_base_that_cannot_be_trusted_asks_for_a_full_pass_and_says_why() {
        let on = Settings::default();
        let base = state(1_000_000, 2, Some(3));
        assert_eq!(why(Some(&base), 1_000_100, on), "trusted");
        assert!(why(None, 1_000_100, on).contains("records no change-tracking state"));
        assert!(why(
            Some(&base),
            1_000_100,
            Settings {
                enabled: false,
                ..on
            }
        )
        .contains("off"));
        // A planted state from the future: the clock is behind it.
        let future = state(4_000_000_000, 0, Some(3));
        let w = why(Some(&future), 1_000_100, on);
        assert!(w.contains("behind the base image's snapshot time"), "{w}");
        assert!(w.starts_with("the clock is 3998999900 s behind"), "{w}");
        assert!(why(Some(&state(0, 0, Some(3))), 1_000_100, on).contains("unknown"));
        let w = why(Some(&state(1_000_000, 0, Some(2))), 1_000_100, on);
        assert!(
            w.contains("mounted since the base image (mount count 2 then, 3 now)"),
            "{w}"
        );
        let w = why(Some(&state(1_000_000, 6, Some(3))), 1_000_100, on);
        assert!(w.contains("every 7 incrementals (6 change-tracked"), "{w}");
        let never = Settings {
            full_hash_every: 0,
            ..on
        };
        assert_eq!(
            why(Some(&state(1_000_000, 600, Some(3))), 1_000_100, never),
            "trusted"
        );
        let mut other = base.clone();
        other.volumes[0].fs_type = "xfs".into();
        assert!(why(Some(&other), 1_000_100, on).contains("differ"));
    }

    #[test]
    fn only_whole_blocks_the_base_holds_are_taken_unread() {
        // 10 blocks of 4 KiB, the last one short; all used.
        let size = 9 * 4096 + 100;
        let data = vec![7u8; size];
        let inner = DeviceBlocks::new(data, Extents::full(size as u64), 4096, "mem");
        let mut base = Index {
            entries: vec![Entry::UNALLOCATED; 10],
            frames: Vec::new(),
        };
        for (n, e) in base.entries.iter_mut().enumerate() {
            e.state = [BlockState::Data, BlockState::Inherited, BlockState::Zero][n % 3];
            e.hash = [n as u8; HASH_LEN];
        }
        base.entries[4].state = BlockState::Unallocated;
        let mut unchanged = Extents::new();
        unchanged.add(4096, 3 * 4096 + 10); // blocks 1, 2, 3 whole; 4 in part
        unchanged.add(4 * 4096 + 1, 4096); // nothing whole
        unchanged.add(8 * 4096, size as u64 - 8 * 4096); // 8 and the short last block
        let t = TrackedBlocks::new(&inner, &base, &unchanged);
        let inherited = |n: u8| {
            Class::Fixed(Entry {
                state: BlockState::Inherited,
                slot: 0,
                frame: 0,
                hash: [n; HASH_LEN],
            })
        };
        assert_eq!(t.classify(0), Class::Read);
        assert_eq!(t.classify(1), inherited(1));
        assert_eq!(t.classify(2), Class::Fixed(Entry::ZERO));
        assert_eq!(t.classify(3), inherited(3));
        assert_eq!(t.classify(4), Class::Read);
        assert_eq!(t.classify(5), Class::Read);
        assert_eq!(t.classify(8), Class::Fixed(Entry::ZERO));
        assert_eq!(t.classify(9), inherited(9));
        assert_eq!(t.skipped_bytes(), 4 * 4096 + 100);
    }
}
