//! LUKS containers (versions 1 and 2): recognised, named, and imaged sector by sector with a
//! warning that says how to do better.
//!
//! Which blocks of an encrypted volume are in use is known only to the filesystem inside,
//! which can be read only through the opened mapping. So a LUKS container met without its
//! key, as a source or as a partition of a disk, is copied whole (its header, key slots and
//! ciphertext, as they are), and the run says so. Given the volume's passphrase, the agent
//! reads it through its mapping instead ([`crate::plan::plan_decrypted`]): the header and
//! key slots as they are, the contents decrypted by the used blocks of the filesystem inside.
//!
//! | | |
//! |---|---|
//! | recognised | the LUKS1 and LUKS2 headers (`LUKS\xba\xbe`, version 1 or 2): type `crypto_LUKS` as blkid names it, the UUID, and the LUKS2 label |
//! | used set | none is read here: every sector is imaged, with the reason; read through the opened mapping, the header and key slots whole and the contents by the filesystem inside ([`crate::plan::plan_decrypted`]) |
//! | refused through the mapping | LUKS2 with integrity tags (dm-integrity) and several segments: imaged whole (`agent/src/luks.rs`) |

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
             inside knows, readable once opened; give the volume's passphrase or key file \
             (--luks-passphrase-file, --luks-key-file, or the job's LUKS passphrase) and an \
             image password to store its contents decrypted by their used blocks, or image the \
             opened mapping, /dev/mapper/NAME, for the filesystem alone)",
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
                    assert!(feature.contains("--luks-passphrase-file"), "{feature}");
                }
                other => panic!("{version}: expected Unsupported, got {other:?}"),
            }
        }
    }

    /// Through its mapping (here an ext4 volume stands for the decrypted contents: opening a
    /// real one needs device-mapper, which the VM test has), a LUKS volume is planned as its
    /// header whole and the contents by their used blocks.
    #[test]
    fn a_luks_volume_read_through_its_mapping_is_planned_header_whole_and_contents_used() {
        use crate::header::Coverage;
        use crate::plan::plan_decrypted;
        let (Some(cryptsetup), Some(mkfs)) = (tool("cryptsetup"), tool("mkfs.ext4")) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let container = dir.path().join("luks2.img");
        std::fs::File::create(&container)
            .expect("create")
            .set_len(48 << 20)
            .expect("size");
        let mut child = Command::new(&cryptsetup)
            .args(["luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2"])
            .args(["--pbkdf-force-iterations", "1000", "--key-file", "-"])
            .arg(&container)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cryptsetup");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"pw")
            .expect("passphrase");
        assert!(child.wait().expect("cryptsetup").success(), "luksFormat");
        let inside = dir.path().join("inside.img");
        std::fs::File::create(&inside)
            .expect("create")
            .set_len(32 << 20)
            .expect("size");
        let made = Command::new(mkfs)
            .args(["-q", "-F"])
            .arg(&inside)
            .status()
            .expect("mkfs.ext4");
        assert!(made.success(), "mkfs.ext4");
        let (vol, inner) = (open(&container), open(&inside));
        let offset = 16 << 20;
        let plan =
            plan_decrypted(&vol, &inner, offset, 512, false, Default::default()).expect("plan");
        assert_eq!(plan.method, Coverage::UsedSector);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let header = &plan.used.ranges()[0];
        assert_eq!(header.0, 0);
        assert!(
            header.1 > offset,
            "the header and the first ext4 blocks: {header:?}"
        );
        let ext4 = detect(&inner).expect("detect").expect("ext4");
        assert!(ext4.used.total() < 16 << 20, "{}", ext4.used.total());
        assert_eq!(plan.used.total(), offset + ext4.used.total());
        let luks = plan.source.filesystem.as_ref().expect("filesystem");
        assert_eq!(luks.fs_type, "crypto_LUKS");
        assert!(luks.uuid.is_some());
        let decrypted = plan.source.decrypted.as_ref().expect("decrypted");
        assert_eq!(
            (decrypted.data_offset, decrypted.data_size),
            (offset, 32 << 20)
        );
        assert_eq!(
            decrypted.filesystem.as_ref().map(|f| f.fs_type.as_str()),
            Some("ext4")
        );
        // The source identity is the LUKS volume's, as without the key.
        assert_eq!(
            plan.source.identity(),
            Some(format!(
                "filesystem {}",
                luks.uuid.as_deref().unwrap_or_default()
            ))
        );

        let forensic =
            plan_decrypted(&vol, &inner, offset, 512, true, Default::default()).expect("plan");
        assert_eq!(forensic.method, Coverage::Forensic);
        assert_eq!(forensic.used.total(), 48 << 20);
        // A mapping that would end past the volume, and a volume that is not LUKS: refused.
        assert!(plan_decrypted(&vol, &inner, 20 << 20, 512, false, Default::default()).is_err());
        assert!(plan_decrypted(&inner, &inner, 0, 512, false, Default::default()).is_err());
    }
}
