//! A dm-crypt (LUKS) mapping on a logical volume is imaged from a snapshot of the volume,
//! opened with the live mapping's own key: the image holds the filesystem's used blocks, not
//! ciphertext, and no passphrase is needed.
//!
//! The key comes from the kernel's table of the live mapping (`dmsetup table --showkeys`, as
//! root). LUKS1 mappings, and LUKS2 ones opened with `--disable-keyring`, carry it there.
//! LUKS2 mappings opened the default way name a key in the kernel keyring instead, which
//! cryptsetup drops once the mapping is open: those can only be re-opened while that key is
//! still in a keyring we can see, and are otherwise frozen (the reason is given). The key is
//! held in memory wiped on drop, reaches `dmsetup` on its standard input (never a command
//! line) and is never printed.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use zeroize::Zeroizing;

use crate::device::{devno, read_trim};
use crate::lvm::{self, Volume};

/// The live mapping, with its key.
pub struct Mapping {
    /// Its device-mapper name.
    pub name: String,
    /// Its table's one line, split into fields (the fifth is the key).
    fields: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Mapping {
    /// Its name only: the table holds the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("name", &self.name).finish()
    }
}

/// The dm-crypt mapping `source` is (its device-mapper name) and the logical volume it is
/// on, when it is both.
pub fn on_volume(source: &Path) -> Result<Option<(String, Volume)>> {
    let Ok(meta) = std::fs::metadata(source) else {
        return Ok(None);
    };
    let (major, minor) = devno(meta.rdev());
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    let is_crypt = read_trim(sys.join("dm/uuid")).is_some_and(|u| u.starts_with("CRYPT-"));
    let Some(name) = read_trim(sys.join("dm/name")).filter(|_| is_crypt) else {
        return Ok(None);
    };
    let under: Vec<PathBuf> = std::fs::read_dir(sys.join("slaves"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let [one] = &under[..] else {
        return Ok(None);
    };
    let Some((major, minor)) = read_trim(one.join("dev")).and_then(|d| {
        let (a, b) = d.split_once(':')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }) else {
        return Ok(None);
    };
    Ok(lvm::volume_at(major, minor)?.map(|v| (name, v)))
}

impl Mapping {
    /// Read the live mapping `name`'s table; an error that says why when its key cannot be
    /// had (kept only inside the kernel) or the table is not one crypt segment.
    pub fn read(name: &str) -> Result<Self> {
        let text = table(name, true)?;
        let mapping = Self::parse(name, &text)?;
        if let Some(described) = mapping.fields[4].strip_prefix(':') {
            // `:size:type:description`: usable while that key is in a keyring we can see.
            let description = described.splitn(3, ':').nth(2).unwrap_or_default();
            if !keyring_has(description) {
                bail!("{}", keyring_only(name));
            }
        }
        Ok(mapping)
    }

    fn parse(name: &str, table: &str) -> Result<Self> {
        let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
        let [line] = lines[..] else {
            bail!(
                "the mapping {name} has {} table segments; only a single crypt segment can be \
                 re-opened on a snapshot",
                lines.len()
            );
        };
        let fields: Vec<Zeroizing<String>> = line
            .split_whitespace()
            .map(|f| Zeroizing::new(f.to_owned()))
            .collect();
        if fields.len() < 8 || fields[2].as_str() != "crypt" {
            let kind = fields.get(2).map_or("empty", |f| f.as_str());
            bail!("the mapping {name} is not one crypt segment (its table is of type {kind})");
        }
        Ok(Self {
            name: name.to_owned(),
            fields,
        })
    }

    /// The same mapping over `device` instead: one table line, with the key.
    fn table_over(&self, device: (u32, u32)) -> Zeroizing<String> {
        let mut line = Zeroizing::new(String::new());
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            if i == 6 {
                line.push_str(&format!("{}:{}", device.0, device.1));
            } else {
                line.push_str(f);
            }
        }
        line.push('\n');
        line
    }

    /// Open the snapshot at `device` as a mapping named `name`, with this key.
    pub fn open_over(&self, device: &Path, name: &str) -> Result<PathBuf> {
        let meta = std::fs::metadata(device)
            .with_context(|| format!("cannot find the snapshot '{}'", device.display()))?;
        let table = self.table_over(devno(meta.rdev()));
        let mut child = Command::new("dmsetup")
            // Writable: an XFS log is replayed into the snapshot before it is read.
            .args(["create", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run dmsetup")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(table.as_bytes())
                .context("cannot pass the table to dmsetup")?;
        }
        let out = child.wait_with_output().context("dmsetup")?;
        if !out.status.success() {
            bail!(
                "cannot open the snapshot of {} with its key: dmsetup: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Path::new("/dev/mapper").join(name))
    }
}

/// The table of the mapping `name` (`dmsetup table`), with its key when `with_key`.
pub fn table(name: &str, with_key: bool) -> Result<Zeroizing<String>> {
    let mut cmd = Command::new("dmsetup");
    cmd.arg("table");
    if with_key {
        cmd.arg("--showkeys");
    }
    let out = cmd.arg(name).output().context("cannot run dmsetup")?;
    if !out.status.success() {
        bail!(
            "dmsetup cannot read the table of {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
    // The output's own buffer held the key too: wiped as it goes.
    drop(Zeroizing::new(out.stdout));
    Ok(text)
}

/// Why the LUKS mapping `name`'s key cannot be had.
pub(crate) fn keyring_only(name: &str) -> String {
    format!(
        "the key of the LUKS mapping {name} is kept only inside the kernel (LUKS2 passes it \
         through the kernel keyring, which drops it once the mapping is open), so it cannot \
         be opened a second time without the passphrase; open it with `cryptsetup open \
         --disable-keyring` (or --link-vk-to-keyring) to let it be snapshotted"
    )
}

/// True when a key of type `logon` with `description` is in a keyring this process sees.
pub(crate) fn keyring_has(description: &str) -> bool {
    let Ok(keys) = std::fs::read_to_string("/proc/keys") else {
        return false;
    };
    keys.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 8 && f[7] == "logon" && f[8].trim_end_matches(':') == description
    })
}

/// Close the mapping `name`, trying again for a moment while it is still in use (just
/// closed).
pub fn close(name: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        let out = Command::new("dmsetup")
            .args(["remove", name])
            .output()
            .context("cannot run dmsetup")?;
        if out.status.success() {
            return Ok(());
        }
        if tries >= 10 {
            return Err(anyhow!(
                "the snapshot mapping {name} could not be closed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        tries += 1;
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Device-mapper names of every mapping there is.
pub fn mapping_names() -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| read_trim(e.path().join("dm/name")))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crypt_table_is_moved_to_another_device_with_its_key() {
        let m = Mapping::parse(
            "data",
            "0 98304 crypt aes-xts-plain64 00ff 0 254:0 32768 1 allow_discards\n",
        )
        .expect("one crypt segment");
        assert_eq!(
            m.table_over((254, 7)).as_str(),
            "0 98304 crypt aes-xts-plain64 00ff 0 254:7 32768 1 allow_discards\n"
        );
        let err = Mapping::parse("x", "0 8 linear 8:1 0\n").expect_err("refused");
        assert!(format!("{err}").contains("type linear"), "{err}");
        let err = Mapping::parse("x", "0 8 crypt a k 0 8:1 0\n8 8 crypt a k 0 8:1 8\n")
            .expect_err("refused");
        assert!(format!("{err}").contains("2 table segments"), "{err}");
    }
}
