//! Linux swap areas: stored as their signature page only.
//!
//! What a swap area holds is memory paged out by a running system, worthless once it stops;
//! what identifies it — the label and UUID `/etc/fstab` names it by, its size — is in its
//! first page. So the used set is that page alone: a restore writes it back, which recreates
//! the same swap area (`swapon` reads only the header), and the image of a 16 GiB swap
//! partition is a few KiB.
//!
//! | | |
//! |---|---|
//! | recognised | version-1 areas (`mkswap` since Linux 2.2) made on a little-endian machine, with any page size from 4 to 64 KiB (the `SWAPSPACE2` signature ends the first page) |
//! | not recognised (imaged forensically) | a swap partition holding a hibernation image (its signature is replaced, e.g. `S1SUSPEND`: that image is the machine's state), old version-0 areas, big-endian ones |
//! | refused | a header whose last page lies past the volume, or before the header itself |

use super::{le32, read_at, uuid_text, FilesystemReader, FsError, FsInfo};
use crate::extents::Extents;
use crate::io::ReadAt;

const FS: &str = "swap";
const SIGNATURE: &[u8; 10] = b"SWAPSPACE2";
/// Page sizes a swap area may have been made with, smallest first.
const PAGE_SIZES: [u64; 5] = [4096, 8192, 16384, 32768, 65536];
/// Offsets in the header page (`union swap_header`, after 1024 bytes of boot bits).
const VERSION: usize = 1024;
const LAST_PAGE: usize = 1028;
const UUID: usize = 1036;
const LABEL: usize = 1052;

/// Reads Linux swap areas.
#[derive(Debug, Clone, Copy, Default)]
pub struct SwapReader;

/// The header: its page size and what it says.
struct Header {
    page: u64,
    pages: u64,
    uuid: [u8; 16],
    label: Option<String>,
}

impl Header {
    fn read(vol: &dyn ReadAt) -> Result<Option<Self>, FsError> {
        for page in PAGE_SIZES {
            if vol.size() < page {
                break;
            }
            let mut sig = [0u8; 10];
            read_at(vol, FS, &mut sig, page - 10)?;
            if &sig != SIGNATURE {
                continue;
            }
            let mut h = vec![0u8; 1088];
            read_at(vol, FS, &mut h, 0)?;
            if le32(&h, VERSION) != 1 {
                return Ok(None);
            }
            let pages = u64::from(le32(&h, LAST_PAGE)) + 1;
            if pages < 2 || pages * page > vol.size() {
                return Err(FsError::corrupt(
                    FS,
                    format!(
                        "the header says {pages} pages of {page} bytes, and the volume has {}",
                        vol.size()
                    ),
                ));
            }
            let mut uuid = [0u8; 16];
            uuid.copy_from_slice(&h[UUID..UUID + 16]);
            let raw = &h[LABEL..LABEL + 16];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let label =
                Some(String::from_utf8_lossy(&raw[..end]).into_owned()).filter(|l| !l.is_empty());
            return Ok(Some(Self {
                page,
                pages,
                uuid,
                label,
            }));
        }
        Ok(None)
    }
}

impl FilesystemReader for SwapReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        let Some(h) = Header::read(vol)? else {
            return Ok(None);
        };
        Ok(Some(FsInfo {
            fs_type: "swap".to_owned(),
            label: h.label,
            uuid: Some(uuid_text(&h.uuid)),
            fs_size: h.pages * h.page,
            // At most 64 KiB.
            fs_block_size: u32::try_from(h.page).unwrap_or(u32::MAX),
            used_bytes: h.page,
        }))
    }

    fn used_extents(&self, vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        let h = Header::read(vol)?.ok_or_else(|| FsError::corrupt(FS, "the header is gone"))?;
        let mut used = Extents::new();
        used.add(0, h.page);
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{blkid, copy_used, image_file, open, pseudo_random, run, tool};
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    /// A swap area of `size` bytes made by `mkswap` with `page` bytes per page, then filled
    /// with paged-out "memory" after its header; the used-only copy must be the same swap
    /// area to blkid (type, UUID, label).
    fn roundtrip(size: u64, page: u64) {
        let Some(mkswap) = tool("mkswap") else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let area = image_file(dir.path(), "swap.img", size);
        let uuid = "8c3b2a1d-4e5f-4a6b-9c7d-0e1f2a3b4c5d";
        run(Command::new(mkswap)
            .args(["-L", "hfswap", "-U", uuid, "-p", &page.to_string()])
            .arg(&area));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&area)
            .expect("open");
        f.write_all_at(&pseudo_random(1 << 20, 9), page * 3)
            .expect("paged out");
        let vol = open(&area);
        let found = detect(&vol).expect("detect").expect("recognised");
        assert_eq!(found.info.fs_type, "swap");
        assert_eq!(found.info.uuid.as_deref(), Some(uuid));
        assert_eq!(found.info.label.as_deref(), Some("hfswap"));
        assert_eq!(found.info.fs_size, size / page * page);
        assert_eq!(found.used.ranges(), &[(0, page)], "the header page only");
        let copy = dir.path().join("copy.img");
        copy_used(&area, &found.used, &copy);
        if let Some(said) = blkid(&copy) {
            assert_eq!(
                said.get("TYPE").map(String::as_str),
                Some("swap"),
                "{said:?}"
            );
            assert_eq!(said.get("UUID").map(String::as_str), Some(uuid), "{said:?}");
            assert_eq!(
                said.get("LABEL").map(String::as_str),
                Some("hfswap"),
                "{said:?}"
            );
        }
    }

    #[test]
    fn a_swap_area_is_its_header_page() {
        roundtrip(64 << 20, 4096);
    }

    #[test]
    fn a_swap_area_with_64k_pages() {
        roundtrip(64 << 20, 65536);
    }

    #[test]
    fn hibernation_images_and_damage_are_not_swap() {
        let mut area = vec![0u8; 1 << 20];
        area[VERSION..VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        area[LAST_PAGE..LAST_PAGE + 4].copy_from_slice(&255u32.to_le_bytes());
        area[4086..4096].copy_from_slice(SIGNATURE);
        let found = detect(&area).expect("detect").expect("swap");
        assert_eq!(found.info.fs_size, 1 << 20);
        // A hibernation image replaces the signature: it is not swap (imaged whole).
        let mut resumed = area.clone();
        resumed[4086..4096].copy_from_slice(b"S1SUSPEND\0");
        assert!(SwapReader.probe(&resumed).expect("probe").is_none());
        // A header claiming more pages than the volume has.
        let mut long = area.clone();
        long[LAST_PAGE..LAST_PAGE + 4].copy_from_slice(&4096u32.to_le_bytes());
        assert!(matches!(detect(&long), Err(FsError::Corrupt { .. })));
        // Version 0 or big-endian: not ours.
        let mut old = area;
        old[VERSION..VERSION + 4].copy_from_slice(&1u32.to_be_bytes());
        assert!(SwapReader.probe(&old).expect("probe").is_none());
    }
}
