//! Golden vectors: they pin the byte layout. If one of these fails after a change, the change
//! altered the format: bump the version instead (see docs/image-format.md, "Versioning").
//!
//! Regenerate the stored vectors (only when the version is bumped) with
//! `HOLDFAST_WRITE_VECTORS=1 cargo test -p holdfast-image --test it golden`.

use std::path::PathBuf;

use holdfast_image::crypto::Cipher;
use holdfast_image::header::{Kind, HEADER_LEN};
use holdfast_image::image::Image;
use holdfast_image::parts::MemParts;
use holdfast_image::writer::Identity;

use crate::mem::*;

fn vector(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

fn load_or_write(name: &str, bytes: &[u8]) -> Vec<u8> {
    let p = vector(name);
    if std::env::var_os("HOLDFAST_WRITE_VECTORS").is_some() {
        std::fs::write(&p, bytes).expect("write vector");
    }
    std::fs::read(&p).unwrap_or_else(|e| panic!("golden vector {} missing: {e}", p.display()))
}

#[test]
fn plain_image_is_byte_for_byte_stable() {
    let (data, used) = source(7);
    let bytes = write_full(&data, &used, Cipher::None);
    let stored = load_or_write("plain-v1.hfi", &bytes);
    assert!(
        bytes == stored,
        "the writer no longer produces tests/vectors/plain-v1.hfi byte for byte"
    );
    assert_eq!(&stored[..8], b"HFIMAGE\n");
    assert_eq!(u16::from_le_bytes([stored[8], stored[9]]), 1);
    assert_eq!(&stored[stored.len() - 8..], b"HFEND\n\0\0");
    let dir = MemDir::default();
    dir.put("plain-v1.hfi", stored);
    let got = restore_mem(&dir, "plain-v1.hfi", None, data.len()).expect("restore");
    assert!(got == expected(&data, &used));
}

#[test]
fn stored_encrypted_chain_still_reads() {
    // Written once with random keys; the reader must keep opening it.
    let (data, used) = source(7);
    let (mut data2, _) = source(7);
    data2[5 * BS as usize..6 * BS as usize].fill(0x42);
    let full_bytes;
    let inc_bytes;
    if std::env::var_os("HOLDFAST_WRITE_VECTORS").is_some() {
        let mut id = fixed_identity(Cipher::Aes256);
        id.keys = holdfast_image::crypto::Keys::new_chain(Cipher::Aes256);
        let (f, _) = write(&data, &used, &id, None, &opts(Cipher::Aes256), &meta()).expect("write");
        let mut full = Image::open(std::sync::Arc::new(MemParts {
            data: f.clone(),
            name: "enc-full-v1.hfi".into(),
        }))
        .expect("open");
        full.unlock(Some(b"pw")).expect("unlock");
        let child = Identity::child_of(&full, Kind::Incremental, Cipher::Aes256).expect("child");
        let mut m = meta();
        m.parent_name = Some("enc-full-v1.hfi".into());
        let (i, s) = write(
            &data2,
            &used,
            &child,
            Some(&full.index),
            &opts(Cipher::Aes256),
            &m,
        )
        .expect("write inc");
        assert_eq!(s.blocks.data, 1);
        full_bytes = load_or_write("enc-full-v1.hfi", &f);
        inc_bytes = load_or_write("enc-inc-v1.hfi", &i);
    } else {
        full_bytes = load_or_write("enc-full-v1.hfi", &[]);
        inc_bytes = load_or_write("enc-inc-v1.hfi", &[]);
    }
    let dir = MemDir::default();
    dir.put("enc-full-v1.hfi", full_bytes);
    dir.put("enc-inc-v1.hfi", inc_bytes);
    assert!(
        restore_mem(&dir, "enc-full-v1.hfi", Some(b"pw"), data.len()).expect("full")
            == expected(&data, &used)
    );
    assert!(
        restore_mem(&dir, "enc-inc-v1.hfi", Some(b"pw"), data.len()).expect("inc")
            == expected(&data2, &used)
    );
    let err =
        restore_mem(&dir, "enc-inc-v1.hfi", Some(b"nope"), data.len()).expect_err("wrong password");
    assert!(err.to_string().contains("wrong password"), "{err}");
}

#[test]
fn header_layout_is_pinned() {
    let (data, used) = source(7);
    let bytes = write_full(&data, &used, Cipher::None);
    // Fields at the offsets the specification gives.
    assert_eq!(
        u32::from_le_bytes(bytes[12..16].try_into().expect("4")),
        HEADER_LEN as u32
    );
    assert_eq!(&bytes[16..32], &[1; 16]);
    assert_eq!(&bytes[32..48], &[2; 16]);
    assert_eq!(bytes[96], 0, "kind full");
    assert_eq!(bytes[97], 0, "method used-sector");
    assert_eq!(bytes[98], 0, "no cipher");
    assert_eq!(
        u32::from_le_bytes(bytes[100..104].try_into().expect("4")),
        BS
    );
    assert_eq!(
        u64::from_le_bytes(bytes[104..112].try_into().expect("8")),
        data.len() as u64
    );
    assert_eq!(
        &bytes[180..212],
        &[3; 32],
        "clear chain key of an unencrypted image"
    );
    assert_eq!(
        crc32c::crc32c(&bytes[..4092]).to_le_bytes(),
        bytes[4092..4096]
    );
}
