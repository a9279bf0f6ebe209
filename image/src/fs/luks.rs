//! LUKS containers (versions 1 and 2): recognised, named, and imaged sector by sector with a
//! warning that says how to do better.
//!
//! Which blocks of an encrypted volume are in use is known only to the filesystem inside,
//! which can be read only through the opened mapping. So a LUKS container met as a source,
//! or as a partition of a disk, is copied whole (its header, key slots and ciphertext, as
//! they are), and the run says so: the filesystem inside is stored by its used blocks when
//! the opened mapping (`/dev/mapper/NAME`) is imaged instead, from a snapshot while it is
//! mounted (see the consistency methods).
//!
//! | | |
//! |---|---|
//! | recognised | the LUKS1 and LUKS2 headers (`LUKS\xba\xbe`, version 1 or 2): type `crypto_LUKS` as blkid names it, the UUID, and the LUKS2 label |
//! | used set | none is read: every sector is imaged, with the reason |

use super::{read_at, FilesystemReader, FsError, FsInfo};
use crate::extents::Extents;
use crate::io::ReadAt;

const FS: &str = "luks";
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";

/// Recognises LUKS containers.
#[derive(Debug, Clone, Copy, Default)]
pub struct LuksReader;

/// Text of a NUL-padded header field.
fn field(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(String::from_utf8_lossy(&raw[..end]).into_owned()).filter(|t| !t.is_empty())
}

impl FilesystemReader for LuksReader {
    fn name(&self) -> &'static str {
        FS
    }

    fn probe(&self, vol: &dyn ReadAt) -> Result<Option<FsInfo>, FsError> {
        if vol.size() < 512 {
            return Ok(None);
        }
        let mut h = [0u8; 512];
        read_at(vol, FS, &mut h, 0)?;
        let version = u16::from_be_bytes([h[6], h[7]]);
        if &h[..6] != MAGIC || !matches!(version, 1 | 2) {
            return Ok(None);
        }
        Ok(Some(FsInfo {
            fs_type: "crypto_LUKS".to_owned(),
            label: if version == 2 {
                field(&h[24..72])
            } else {
                None
            },
            uuid: field(&h[168..208]),
            fs_size: vol.size(),
            fs_block_size: 512,
            used_bytes: vol.size(),
        }))
    }

    fn used_extents(&self, _vol: &dyn ReadAt, _info: &FsInfo) -> Result<Extents, FsError> {
        Err(FsError::unsupported(
            FS,
            "encryption (a LUKS container: which of its blocks are in use only the filesystem \
             inside knows, readable once opened; image the opened mapping, /dev/mapper/NAME, to \
             store that filesystem by its used blocks)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::detect;
    use crate::fs::test_support::{blkid, open, tool};
    use std::process::Command;

    #[test]
    fn luks_containers_are_named_and_imaged_whole_with_the_reason() {
        let Some(cryptsetup) = tool("cryptsetup") else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        for version in ["luks1", "luks2"] {
            let image = dir.path().join(format!("{version}.img"));
            std::fs::File::create(&image)
                .expect("create")
                .set_len(32 << 20)
                .expect("size");
            let mut format = Command::new(&cryptsetup);
            format
                .args(["luksFormat", "-q", "--type", version, "--pbkdf", "pbkdf2"])
                .args(["--pbkdf-force-iterations", "1000", "--key-file", "-"]);
            if version == "luks2" {
                format.args(["--label", "hfsecret"]);
            }
            let mut child = format
                .arg(&image)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("cryptsetup");
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"pw")
                .expect("passphrase");
            assert!(
                child.wait().expect("cryptsetup").success(),
                "luksFormat {version}"
            );
            let vol = open(&image);
            let info = LuksReader.probe(&vol).expect("probe").expect("luks");
            assert_eq!(info.fs_type, "crypto_LUKS");
            if let Some(said) = blkid(&image) {
                assert_eq!(said.get("TYPE").map(String::as_str), Some("crypto_LUKS"));
                assert_eq!(said.get("UUID"), info.uuid.as_ref(), "{said:?}");
                if version == "luks2" {
                    assert_eq!(said.get("LABEL").map(String::as_str), Some("hfsecret"));
                    assert_eq!(info.label.as_deref(), Some("hfsecret"));
                }
            }
            match detect(&vol) {
                Err(FsError::Unsupported { feature, .. }) => {
                    assert!(feature.contains("/dev/mapper/NAME"), "{feature}");
                }
                other => panic!("{version}: expected Unsupported, got {other:?}"),
            }
        }
    }
}
