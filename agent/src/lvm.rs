//! LVM snapshots of the logical volume being imaged: the image is read from a snapshot taken
//! at one instant while the volume stays in use, then the snapshot is removed.
//!
//! A thin volume gets a thin snapshot (it shares the pool). A classic ("thick") volume gets a
//! snapshot whose copy-on-write space is a share of the volume's size, capped by the volume
//! group's free space and checked before anything is created; if writes to the volume fill
//! that space the snapshot becomes invalid, and the image made from it is refused.
//!
//! Snapshots are named `holdfast-snap-<process id>`, so one left by a killed process is
//! recognised and removed by the next snapshot, and when the agent starts. The `lvm2` tools do the
//! work; their JSON reports are parsed into types.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::crypt;
use crate::device::read_trim;
use crate::exit::Refused;

/// The prefix of every snapshot this agent makes.
pub const PREFIX: &str = "holdfast-snap-";

/// A logical volume, as `lvs` reports it.
#[derive(Debug, Clone)]
pub struct Volume {
    pub vg: String,
    pub lv: String,
    /// A thin volume (its snapshot is thin too).
    pub thin: bool,
    pub size: u64,
    /// Free space in its volume group.
    pub vg_free: u64,
}

#[derive(Deserialize)]
struct Report {
    report: Vec<Section>,
}

#[derive(Deserialize)]
struct Section {
    #[serde(default)]
    lv: Vec<LvRow>,
}

#[derive(Deserialize)]
struct LvRow {
    lv_name: String,
    vg_name: String,
    #[serde(default)]
    segtype: String,
    #[serde(default)]
    lv_size: String,
    #[serde(default)]
    vg_free: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    snap_percent: String,
    #[serde(default)]
    data_percent: String,
    #[serde(default)]
    metadata_percent: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    thin_id: String,
}

/// A thin volume's place in its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinInfo {
    /// The pool's logical volume name.
    pub pool: String,
    /// The volume's device id inside the pool (what `thin_delta` names it by).
    pub thin_id: u64,
}

/// A thin snapshot being read, and the volume it is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinSnapshot {
    pub vg: String,
    pub pool: String,
    pub thin_id: u64,
    /// The volume snapshotted.
    pub origin: String,
}

/// Where `vg/lv` is in its thin pool; `None` when there is no such volume, or it is not thin.
pub fn thin_info(vg: &str, lv: &str) -> Result<Option<ThinInfo>> {
    let rows = lvs(Some(vg), "lv_name,vg_name,segtype,pool_lv,thin_id")?;
    let Some(row) = rows
        .into_iter()
        .find(|r| r.lv_name == lv && r.segtype == "thin")
    else {
        return Ok(None);
    };
    Ok(Some(ThinInfo {
        thin_id: number(&row.thin_id, "the thin volume's id")?,
        pool: row.pool_lv,
    }))
}

/// How full the thin pool `vg/pool` is: data and metadata, in percent.
pub fn pool_fill(vg: &str, pool: &str) -> Result<(f64, f64)> {
    let row = lvs(
        Some(&format!("{vg}/{pool}")),
        "lv_name,vg_name,data_percent,metadata_percent",
    )?
    .into_iter()
    .next()
    .ok_or_else(|| anyhow!("lvs does not know the pool {vg}/{pool}"))?;
    let percent = |text: &str, what: &str| -> Result<f64> {
        text.trim()
            .parse()
            .map_err(|_| anyhow!("lvs reported the pool's {what} use as '{text}'"))
    };
    Ok((
        percent(&row.data_percent, "data")?,
        percent(&row.metadata_percent, "metadata")?,
    ))
}

/// Remove `vg/name` when it exists.
pub fn remove_if_present(vg: &str, name: &str) -> Result<()> {
    let rows = lvs(Some(vg), "lv_name,vg_name")?;
    if rows.iter().any(|r| r.lv_name == name) {
        remove(vg, name)?;
    }
    Ok(())
}

/// Run an LVM tool; its standard output, or its own words when it fails.
fn lvm(args: &[&str]) -> Result<String> {
    let out = Command::new("lvm")
        .args(args)
        .output()
        .context("cannot run lvm (the lvm2 tools)")?;
    if !out.status.success() {
        bail!(
            "lvm {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `lvs` rows for `what` (a `vg/lv`, or none for all), with `fields`.
fn lvs(what: Option<&str>, fields: &str) -> Result<Vec<LvRow>> {
    let mut args = vec![
        "lvs",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
    ];
    args.extend(what);
    let text = lvm(&args)?;
    let report: Report =
        serde_json::from_str(&text).map_err(|e| anyhow!("lvs printed what it should not: {e}"))?;
    Ok(report.report.into_iter().flat_map(|s| s.lv).collect())
}

fn number(text: &str, what: &str) -> Result<u64> {
    text.trim()
        .parse()
        .map_err(|_| anyhow!("lvs reported {what} as '{text}'"))
}

/// The (vg, lv) of an LVM device-mapper name (`vg-lv`, each `-` inside a name doubled).
pub fn names(dm_name: &str) -> (String, String) {
    let bytes = dm_name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' {
            if bytes.get(i + 1) == Some(&b'-') {
                i += 2;
                continue;
            }
            let undouble = |s: &str| s.replace("--", "-");
            return (undouble(&dm_name[..i]), undouble(&dm_name[i + 1..]));
        }
        i += 1;
    }
    (dm_name.replace("--", "-"), String::new())
}

/// The logical volume `source` is, when it is one.
pub fn volume_of(source: &Path) -> Result<Option<Volume>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // By device number: without udev, /dev/VG/LV may lead to a node under /dev/mapper.
    let Ok(meta) = std::fs::metadata(source) else {
        return Ok(None);
    };
    if !meta.file_type().is_block_device() {
        return Ok(None);
    }
    let (major, minor) = crate::device::devno(meta.rdev());
    volume_at(major, minor)
}

/// The logical volume with device number `major:minor`, when it is one.
pub fn volume_at(major: u32, minor: u32) -> Result<Option<Volume>> {
    let sys = Path::new(&format!("/sys/dev/block/{major}:{minor}")).join("dm");
    let is_lv = read_trim(sys.join("uuid")).is_some_and(|u| u.starts_with("LVM-"));
    let Some(dm_name) = read_trim(sys.join("name")).filter(|_| is_lv) else {
        return Ok(None);
    };
    let (vg, lv) = names(&dm_name);
    let row = lvs(
        Some(&format!("{vg}/{lv}")),
        "lv_name,vg_name,segtype,lv_size,vg_free",
    )?
    .into_iter()
    .next()
    .ok_or_else(|| anyhow!("lvs does not know {vg}/{lv}"))?;
    Ok(Some(Volume {
        thin: row.segtype == "thin",
        size: number(&row.lv_size, "the volume's size")?,
        vg_free: number(&row.vg_free, "the group's free space")?,
        vg: row.vg_name,
        lv: row.lv_name,
    }))
}

impl Volume {
    /// `vg/lv`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.vg, self.lv)
    }

    /// The copy-on-write space a classic snapshot gets at `percent`; refused when the group
    /// has not that much free.
    pub fn cow_size(&self, percent: u32) -> Result<u64> {
        // In whole MiB (LVM wants sectors, and rounds up to extents: 4 MiB by default), at
        // least one extent.
        let want = (self.size / 100 * u64::from(percent))
            .next_multiple_of(1 << 20)
            .max(4 << 20);
        if want > self.vg_free {
            return Err(Refused(format!(
                "no room for a snapshot of {}: it needs {} ({percent} % of the volume), and its volume group has {} free; free space in the group, lower the snapshot size, or choose another consistency method",
                self.path(),
                crate::output::bytes(want),
                crate::output::bytes(self.vg_free)
            ))
            .into());
        }
        Ok(want)
    }
}

/// A snapshot we made; removed by [`Snapshot::remove`], or when dropped.
pub struct Snapshot {
    vg: String,
    name: String,
    /// The volume it is of.
    origin: String,
    thin: bool,
    /// The LUKS mapping opened over the snapshot with the live mapping's key, if any.
    opened: Option<String>,
    removed: bool,
    /// Held while the snapshot exists: two runs never snapshot one volume at once.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Take the lock on snapshots of `volume`; refused while another run holds it.
fn lock(volume: &Volume) -> Result<nix::fcntl::Flock<std::fs::File>> {
    lock_name(&format!("{}-{}", volume.vg, volume.lv), &volume.path())
}

/// Take the lock on snapshots of the volume `key` (shown as `shown`); refused while another
/// run holds it.
pub(crate) fn lock_name(key: &str, shown: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = Path::new("/run/lock");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let path = dir.join(format!("holdfast-{key}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open '{}'", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Refused(format!(
            "another run is imaging {shown} from a snapshot now; try again when it is done"
        ))
        .into()
    })
}

impl Snapshot {
    /// Snapshot `volume` (a classic one with `cow` bytes of copy-on-write space), and open
    /// it with `key_of`'s key when the source is that LUKS mapping on the volume.
    pub fn take(volume: &Volume, cow: u64, key_of: Option<&crypt::Mapping>) -> Result<Self> {
        let lock = lock(volume)?;
        remove_stale();
        let name = format!("{PREFIX}{}", std::process::id());
        let size = format!("{cow}b");
        let path = volume.path();
        let mut args = vec!["lvcreate", "-q", "-y", "-s", "-n", &name];
        if volume.thin {
            // Thin snapshots are made inactive ("activation skip") unless told otherwise.
            args.extend(["-k", "n"]);
        } else {
            args.extend(["-L", &size]);
        }
        args.push(&path);
        lvm(&args).with_context(|| format!("cannot snapshot {path}"))?;
        let mut snapshot = Self {
            vg: volume.vg.clone(),
            name,
            origin: volume.lv.clone(),
            thin: volume.thin,
            opened: None,
            removed: false,
            _lock: lock,
        };
        if let Some(mapping) = key_of {
            let opened = format!("{}-open", snapshot.name);
            mapping.open_over(&snapshot.volume_device(), &opened)?;
            snapshot.opened = Some(opened);
        }
        Ok(snapshot)
    }

    /// The snapshot's logical volume.
    fn volume_device(&self) -> PathBuf {
        Path::new("/dev").join(&self.vg).join(&self.name)
    }

    /// What to read: the snapshot, or the mapping opened over it.
    pub fn device(&self) -> PathBuf {
        match &self.opened {
            Some(name) => Path::new("/dev/mapper").join(name),
            None => self.volume_device(),
        }
    }

    /// An error when the snapshot is no longer a true copy (its copy-on-write space or its
    /// thin pool ran full); how full it is otherwise, in percent.
    pub fn fill(&self) -> Result<f64> {
        let path = format!("{}/{}", self.vg, self.name);
        let row = lvs(
            Some(&path),
            "lv_name,vg_name,lv_attr,snap_percent,data_percent",
        )?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the snapshot {path} is gone"))?;
        // The fifth attribute character is the state: `I` invalid (overflowed).
        if row.lv_attr.chars().nth(4) == Some('I') {
            bail!("the snapshot {path} overflowed: writes to the volume filled its copy-on-write space");
        }
        let used = if self.thin {
            &row.data_percent
        } else {
            &row.snap_percent
        };
        let used: f64 = used.trim().parse().unwrap_or(0.0);
        if !self.thin && used >= 100.0 {
            bail!(
                "the snapshot {path} is full: writes to the volume filled its copy-on-write space"
            );
        }
        Ok(used)
    }

    /// Where it is in its thin pool, for a thin snapshot.
    pub fn thin(&self) -> Result<Option<ThinSnapshot>> {
        if !self.thin {
            return Ok(None);
        }
        let info = thin_info(&self.vg, &self.name)?
            .ok_or_else(|| anyhow!("lvs does not know the snapshot {}/{}", self.vg, self.name))?;
        Ok(Some(ThinSnapshot {
            vg: self.vg.clone(),
            pool: info.pool,
            thin_id: info.thin_id,
            origin: self.origin.clone(),
        }))
    }

    /// Keep it, under `name` (replacing a volume of that name), instead of removing it.
    pub fn keep_as(mut self, name: &str) -> Result<()> {
        if let Some(opened) = self.opened.take() {
            crypt::close(&opened)?;
        }
        remove_if_present(&self.vg, name)?;
        lvm(&["lvrename", "-q", &self.vg, &self.name, name])
            .with_context(|| format!("cannot rename {}/{} to {name}", self.vg, self.name))?;
        self.removed = true;
        Ok(())
    }

    /// Remove it.
    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        let closed = self.opened.take().map_or(Ok(()), |n| crypt::close(&n));
        let removed = remove(&self.vg, &self.name);
        closed.and(removed)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.removed {
            if let Some(name) = self.opened.take() {
                let _ = crypt::close(&name);
            }
            let _ = remove(&self.vg, &self.name);
        }
    }
}

/// Remove `vg/name`, trying again for a moment while it is still in use (just closed).
fn remove(vg: &str, name: &str) -> Result<()> {
    let path = format!("{vg}/{name}");
    let mut tries = 0;
    loop {
        match lvm(&["lvremove", "-q", "-f", &path]) {
            Ok(_) => return Ok(()),
            Err(_) if tries < 10 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            Err(e) => return Err(e.context(format!("the snapshot {path} could not be removed"))),
        }
    }
}

/// Whether the agent process whose id ends a name of ours (`holdfast-snap-<pid>`) is gone:
/// no such process, a zombie (no command line: killed, not yet reaped), or another program
/// that took the id since.
pub(crate) fn made_by_a_gone_process(pid: &str) -> bool {
    let cmdline = std::fs::read(Path::new("/proc").join(pid).join("cmdline")).unwrap_or_default();
    !cmdline
        .split(|&b| b == 0)
        .next()
        .is_some_and(|exe| exe.ends_with(b"holdfast-agent"))
}

/// Remove snapshots of ours whose process is gone (killed while imaging), and first the
/// LUKS mappings opened over them.
pub fn remove_stale() {
    for name in crypt::mapping_names() {
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_suffix("-open"));
        if pid.is_some_and(made_by_a_gone_process) {
            let _ = crypt::close(&name);
        }
    }
    let Ok(rows) = lvs(None, "lv_name,vg_name") else {
        return;
    };
    for row in rows {
        let Some(pid) = row.lv_name.strip_prefix(PREFIX) else {
            continue;
        };
        if made_by_a_gone_process(pid) {
            let _ = remove(&row.vg_name, &row.lv_name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_at_the_single_hyphen() {
        for (dm, vg, lv) in [
            ("vg0-root", "vg0", "root"),
            ("my--vg-my--lv", "my-vg", "my-lv"),
            ("vg-lv--x", "vg", "lv-x"),
            ("vg--only", "vg-only", ""),
        ] {
            assert_eq!(names(dm), (vg.to_owned(), lv.to_owned()), "{dm}");
        }
    }

    #[test]
    fn lvs_reports_are_read_into_types() {
        let text = r#"{"report": [{"lv": [{"lv_name":"thick", "vg_name":"hfvg", "segtype":"linear", "lv_size":"67108864", "vg_free":"12582912"}]}]}"#;
        let r: Report = serde_json::from_str(text).expect("parse");
        let row = &r.report[0].lv[0];
        assert_eq!(
            (row.lv_name.as_str(), row.segtype.as_str()),
            ("thick", "linear")
        );
        assert_eq!(number(&row.lv_size, "size").expect("size"), 64 << 20);
        let v = Volume {
            vg: "hfvg".into(),
            lv: "thick".into(),
            thin: false,
            size: 64 << 20,
            vg_free: 12 << 20,
        };
        assert_eq!(
            v.cow_size(10).expect("fits"),
            7 << 20,
            "6.4 MiB, in whole MiB"
        );
        assert_eq!(v.cow_size(1).expect("fits"), 4 << 20, "at least one extent");
        assert!(v.cow_size(50).is_err(), "32 MiB do not fit in 12");
    }
}
