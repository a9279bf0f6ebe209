//! What this machine has: disks and volumes (loop devices, LVM volumes and LUKS mappings
//! among them, with what they are made of), how each can be imaged consistently, from sysfs,
//! `/proc` and the devices' first sectors (no external commands).

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::path::Path;

use holdfast_proto::inventory::Backing;
use holdfast_proto::job::ConsistencyMethod;
use holdfast_proto::{Disk, Inventory, Volume};

use crate::device::{hostname, parse_devno, read_mounts, read_trim, used_bytes};

/// Kernel device names that are never disks worth imaging.
const SKIP: [&str; 4] = ["ram", "zram", "fd", "sr"];

/// Filesystems the kernel can freeze (`FIFREEZE`).
const FREEZABLE: [&str; 6] = ["ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"];

/// The machine's inventory now.
pub fn collect() -> Inventory {
    // A filesystem mounted in several places (bind mounts) is shown at its shortest path.
    let mut mounts: HashMap<(u32, u32), (String, String, bool)> = HashMap::new();
    for m in read_mounts().unwrap_or_default() {
        let point = m.mount_point.display().to_string();
        let shorter = mounts
            .get(&m.devno)
            .is_none_or(|(p, _, _)| point.len() < p.len());
        if shorter {
            mounts.insert(m.devno, (point, m.fstype, m.read_write));
        }
    }
    let labels = links("/dev/disk/by-label");
    let uuids = links("/dev/disk/by-uuid");
    let mut disks = Vec::new();
    let mut volumes = Vec::new();
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names
        .into_iter()
        .filter(|n| !SKIP.iter().any(|s| n.starts_with(s)))
    {
        let sys = Path::new("/sys/block").join(&name);
        let size = sectors(&sys.join("size"));
        if size == 0 {
            continue;
        }
        let dev = Path::new("/dev").join(&name);
        let head = first_sectors(&dev);
        disks.push(Disk {
            name: name.clone(),
            model: read_trim(sys.join("device/model")),
            serial: read_trim(sys.join("device/serial"))
                .or_else(|| read_trim(sys.join("device/wwid"))),
            size,
            logical_sector_size: read_trim(sys.join("queue/logical_block_size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(512),
            partition_table: head.as_deref().and_then(table_kind).map(str::to_owned),
            removable: read_trim(sys.join("removable")).as_deref() == Some("1"),
            backing: backing(&sys),
        });
        // An LVM snapshot can be had of a logical volume, and of a LUKS mapping on one whose
        // key the kernel shows; a device-mapper one of other mappings that can be made twice,
        // when the snapshot store is fit for it.
        let lvm_snapshot = match disks.last().and_then(|d| d.backing.as_ref()) {
            Some(Backing::Lvm { .. }) => true,
            Some(Backing::Crypt { name, .. }) => {
                matches!(crate::crypt::on_volume(&dev), Ok(Some(_)))
                    && crate::crypt::Mapping::read(name).is_ok()
            }
            _ => false,
        };
        let snapshot = if lvm_snapshot {
            Some(ConsistencyMethod::LvmSnapshot)
        } else {
            dm_snapshot_possible(&dev).then_some(ConsistencyMethod::DmSnapshot)
        };
        let mut parts: Vec<(u32, String)> = fs::read_dir(&sys)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .filter_map(|e| {
                        let n = read_trim(e.path().join("partition"))?.parse().ok()?;
                        Some((n, e.file_name().to_string_lossy().into_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        let whole = parts.is_empty().then(|| (0u32, name.clone()));
        for (number, part) in parts.into_iter().chain(whole) {
            let psys = if number == 0 {
                sys.clone()
            } else {
                sys.join(&part)
            };
            let devno = read_trim(psys.join("dev")).and_then(|s| parse_devno(&s));
            let mounted = devno.and_then(|d| mounts.get(&d));
            let pdev = Path::new("/dev").join(&part);
            let filesystem = mounted
                .map(|(_, t, _)| t.clone())
                .or_else(|| first_sectors_fs(&pdev));
            let used = mounted.and_then(|(p, _, _)| used_bytes(Path::new(p)));
            let read_write = mounted.is_some_and(|(_, _, rw)| *rw);
            volumes.push(Volume {
                name: part.clone(),
                disk: (number != 0).then(|| name.clone()),
                number: (number != 0).then_some(number),
                start: if number == 0 {
                    0
                } else {
                    sectors(&psys.join("start"))
                },
                size: sectors(&psys.join("size")),
                label: labels.get(&part).cloned(),
                uuid: uuids.get(&part).cloned(),
                mount_point: mounted.map(|(p, _, _)| p.clone()),
                used,
                read_write,
                consistency: methods(read_write, snapshot, filesystem.as_deref()),
                filesystem,
            });
        }
    }
    Inventory {
        hostname: hostname(),
        os: os_name(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        disks,
        volumes,
    }
}

/// `holdfast-agent inventory`: the inventory as JSON, or a table for people.
pub fn print(json: bool) -> anyhow::Result<std::process::ExitCode> {
    let inv = collect();
    if json {
        crate::outcome::print(&inv);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("{} · {}", inv.hostname, inv.os);
    for d in &inv.disks {
        let what = match (&d.backing, &d.model) {
            (Some(b), _) => b.describe(),
            (None, Some(m)) => m.clone(),
            (None, None) => "disk".to_owned(),
        };
        println!(
            "{} · {} · {what}",
            d.name,
            holdfast_proto::human_bytes(d.size)
        );
        for v in inv.volumes.iter().filter(|v| {
            v.disk.as_deref() == Some(d.name.as_str()) || (v.disk.is_none() && v.name == d.name)
        }) {
            let methods: Vec<&str> = v.consistency.iter().map(|m| m.as_str()).collect();
            println!(
                "  {} {} {} {} consistency: {}",
                v.name,
                holdfast_proto::human_bytes(v.size),
                v.filesystem.as_deref().unwrap_or("-"),
                v.mount_point.as_deref().unwrap_or("(not mounted)"),
                methods.join(", ")
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// How a volume can be imaged consistently now.
fn methods(
    read_write: bool,
    snapshot: Option<ConsistencyMethod>,
    filesystem: Option<&str>,
) -> Vec<ConsistencyMethod> {
    use ConsistencyMethod::{Freeze, Live, Lock, Unmounted};
    if !read_write {
        return vec![Unmounted];
    }
    let mut m: Vec<ConsistencyMethod> = snapshot.into_iter().collect();
    if filesystem.is_some_and(|f| FREEZABLE.contains(&f)) {
        m.push(Freeze);
    }
    m.extend([Lock, Live]);
    m
}

/// Whether `dev` is a device-mapper device a `dm-snapshot` can be taken of now (with the
/// default snapshot size).
fn dm_snapshot_possible(dev: &Path) -> bool {
    use crate::dmsnap::{source_of, Plan, Store};
    let Ok(Some(source)) = source_of(dev) else {
        return false;
    };
    let percent = holdfast_proto::job::DEFAULT_SNAPSHOT_PERCENT;
    Plan::new(source, Store::configured(), percent).is_ok()
}

/// What the device at `sys` (`/sys/block/NAME`) is made of, when it is not a disk.
fn backing(sys: &Path) -> Option<Backing> {
    if let Some(file) = read_trim(sys.join("loop/backing_file")) {
        return Some(Backing::Loop { file });
    }
    let name = read_trim(sys.join("dm/name"))?;
    let uuid = read_trim(sys.join("dm/uuid")).unwrap_or_default();
    let mut on: Vec<String> = fs::read_dir(sys.join("slaves"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    on.sort();
    Some(if uuid.starts_with("LVM-") {
        let (vg, lv) = crate::lvm::names(&name);
        Backing::Lvm { vg, lv, on }
    } else if uuid.starts_with("CRYPT-") {
        Backing::Crypt { name, on }
    } else {
        Backing::DeviceMapper { name, on }
    })
}

/// A sysfs count of 512-byte sectors, in bytes.
fn sectors(p: &Path) -> u64 {
    read_trim(p)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |n| n * 512)
}

/// `/dev/disk/by-*` links: device name → link name (label or UUID, unescaped).
fn links(dir: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                if let Some(dev) = target.file_name() {
                    let key = e.file_name().to_string_lossy().replace("\\x20", " ");
                    out.insert(dev.to_string_lossy().into_owned(), key);
                }
            }
        }
    }
    out
}

/// The first 68 KiB of a device (enough for the tables and superblocks we recognise).
fn first_sectors(dev: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 68 << 10];
    let mut f = fs::File::open(dev).ok()?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some(buf)
}

/// `gpt` or `mbr` from a disk's first sectors.
fn table_kind(head: &[u8]) -> Option<&'static str> {
    if head.get(512..520) == Some(b"EFI PART") {
        return Some("gpt");
    }
    let mbr = head.get(..512)?;
    let has_entry = (0..4).any(|i| mbr[446 + i * 16 + 4] != 0);
    (mbr[510..512] == [0x55, 0xAA] && has_entry && filesystem(head).is_none()).then_some("mbr")
}

fn first_sectors_fs(dev: &Path) -> Option<String> {
    first_sectors(dev).and_then(|h| filesystem(&h).map(str::to_owned))
}

/// The filesystem whose signature a volume's first sectors carry.
fn filesystem(h: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| h.get(off..off + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        // ext4 when it has extents or 64-bit, ext3 with a journal, else ext2.
        let incompat = h
            .get(1120..1124)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let compat = h
            .get(1116..1120)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        return Some(if incompat & (0x40 | 0x80) != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        });
    }
    if at(0, b"XFSB") {
        return Some("xfs");
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some("btrfs");
    }
    if at(3, b"NTFS    ") {
        return Some("ntfs");
    }
    if at(3, b"EXFAT   ") {
        return Some("exfat");
    }
    if at(0x52, b"FAT32   ") || at(0x36, b"FAT16   ") || at(0x36, b"FAT12   ") {
        return Some("vfat");
    }
    if at(4086, b"SWAPSPACE2") {
        return Some("swap");
    }
    None
}

/// `PRETTY_NAME` of os-release and the kernel release.
fn os_name() -> String {
    let pretty = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "Linux".into());
    match read_trim("/proc/sys/kernel/osrelease") {
        Some(k) => format!("{pretty} (kernel {k})"),
        None => pretty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut h = vec![0u8; 68 << 10];
        assert_eq!(filesystem(&h), None);
        h[1080] = 0x53;
        h[1081] = 0xEF;
        assert_eq!(filesystem(&h), Some("ext2"));
        h[1120] = 0x40;
        assert_eq!(filesystem(&h), Some("ext4"));
        let mut g = vec![0u8; 1024];
        g[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(table_kind(&g), Some("gpt"));
        let mut m = vec![0u8; 1024];
        m[510] = 0x55;
        m[511] = 0xAA;
        m[446 + 4] = 0x83;
        assert_eq!(table_kind(&m), Some("mbr"));
    }

    #[test]
    fn a_mounted_loop_device_is_listed_with_its_file_and_how_to_image_it() {
        use holdfast_testkit::devices::{
            mkfs, require_devices, sparse_file, tempdir, Loop, Mounted,
        };
        use ConsistencyMethod::{Freeze, Live, Lock, Unmounted};
        if !require_devices("inventory of a loop device") {
            return;
        }
        let t = tempdir();
        let file = t.path().join("inventory.img");
        sparse_file(&file, 32 << 20);
        let lo = Loop::new(&file);
        mkfs(lo.path(), "ext4");
        let name = lo.path().trim_start_matches("/dev/").to_owned();
        let m = Mounted::new(lo.path(), &t.path().join("mnt"), "rw");
        let inv = collect();
        let disk = inv.disks.iter().find(|d| d.name == name).expect("listed");
        let file = fs::canonicalize(&file).expect("path").display().to_string();
        assert_eq!(disk.backing, Some(Backing::Loop { file }));
        let v = inv.volumes.iter().find(|v| v.name == name).expect("volume");
        assert_eq!(
            v.mount_point.as_deref(),
            Some(m.dir.to_str().expect("path"))
        );
        assert_eq!(v.filesystem.as_deref(), Some("ext4"));
        assert!(v.read_write && v.used.is_some_and(|u| u > 0), "{v:?}");
        assert_eq!(v.consistency, [Freeze, Lock, Live]);
        drop(m);
        let inv = collect();
        let v = inv.volumes.iter().find(|v| v.name == name).expect("volume");
        assert_eq!(
            (v.read_write, &v.consistency[..]),
            (false, &[Unmounted][..])
        );
    }

    #[test]
    fn collects_this_machine() {
        let inv = collect();
        assert!(!inv.hostname.is_empty() && !inv.os.is_empty());
        for v in &inv.volumes {
            assert!(v.size > 0 || v.number.is_some(), "{v:?}");
        }
    }
}
