//! Golden vectors: they pin the byte layout. If one of these fails after a change, the change
//! altered the format: bump the version instead (see docs/image-format.md, "Versioning").
//!
//! Write the current version's vectors (only when the version is bumped) with
//! `HOLDFAST_WRITE_VECTORS=1 cargo test -p holdfast-image --test it golden`; those of older
//! versions are never rewritten: they prove old images still read.

use std::path::PathBuf;

use holdfast_image::crypto::Cipher;
use holdfast_image::extents::Extents;
use holdfast_image::header::{Kind, HEADER_LEN};
use holdfast_image::image::Image;
use holdfast_image::magic::FORMAT_VERSION;
use holdfast_image::parts::MemParts;
use holdfast_image::trailer::TRAILER_LEN;
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
    let stored = load_or_write("plain-v2.hfi", &bytes);
    assert!(
        bytes == stored,
        "the writer no longer produces tests/vectors/plain-v2.hfi byte for byte"
    );
    assert_eq!(&stored[..8], b"HFIMAGE\n");
    assert_eq!(u16::from_le_bytes([stored[8], stored[9]]), 2);
    assert_eq!(&stored[stored.len() - 8..], b"HFEND\n\0\0");
    // Version 2: the index record twice, right before the trailer.
    let trailer = &stored[stored.len() - TRAILER_LEN..];
    let at = u64::from_le_bytes(trailer[24..32].try_into().expect("8")) as usize;
    let len = u64::from_le_bytes(trailer[32..40].try_into().expect("8")) as usize;
    assert_eq!(at + 2 * len, stored.len() - TRAILER_LEN);
    assert_eq!(stored[at..at + len], stored[at + len..at + 2 * len]);
    assert_eq!(&stored[at..at + 8], b"HFINDEX\n");
    let dir = MemDir::default();
    dir.put("plain-v2.hfi", stored);
    let got = restore_mem(&dir, "plain-v2.hfi", None, data.len()).expect("restore");
    assert!(got == expected(&data, &used));
}

#[test]
fn version_1_images_still_read() {
    // Written by the version-1 writer (one copy of the index); kept, never rewritten.
    let (data, used) = source(7);
    let stored = std::fs::read(vector("plain-v1.hfi")).expect("plain-v1.hfi");
    assert_eq!(u16::from_le_bytes([stored[8], stored[9]]), 1);
    let dir = MemDir::default();
    dir.put("plain-v1.hfi", stored);
    let got = restore_mem(&dir, "plain-v1.hfi", None, data.len()).expect("restore");
    assert!(got == expected(&data, &used));
}

#[test]
fn stored_encrypted_chains_still_read() {
    // Written once with random keys (version 1 by the version-1 writer, version 2 by this
    // one); the reader must keep opening every version.
    let (data, used) = source(7);
    let (mut data2, _) = source(7);
    data2[5 * BS as usize..6 * BS as usize].fill(0x42);
    for version in [1, 2] {
        let full_name = format!("enc-full-v{version}.hfi");
        let inc_name = format!("enc-inc-v{version}.hfi");
        let (full_bytes, inc_bytes) = if version == FORMAT_VERSION
            && std::env::var_os("HOLDFAST_WRITE_VECTORS").is_some()
        {
            let (f, i) = encrypted_chain(&data, &data2, &used, &full_name);
            (load_or_write(&full_name, &f), load_or_write(&inc_name, &i))
        } else {
            let read = |n: &str| std::fs::read(vector(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            (read(&full_name), read(&inc_name))
        };
        assert_eq!(u16::from_le_bytes([full_bytes[8], full_bytes[9]]), version);
        let dir = MemDir::default();
        dir.put(&full_name, full_bytes);
        dir.put(&inc_name, inc_bytes);
        assert!(
            restore_mem(&dir, &full_name, Some(b"pw"), data.len()).expect("full")
                == expected(&data, &used)
        );
        assert!(
            restore_mem(&dir, &inc_name, Some(b"pw"), data.len()).expect("inc")
                == expected(&data2, &used)
        );
        let err =
            restore_mem(&dir, &inc_name, Some(b"nope"), data.len()).expect_err("wrong password");
        assert!(err.to_string().contains("wrong password"), "{err}");
    }
}

/// An encrypted full image of `data` (named `full_name`) and an incremental of `data2` on it.
fn encrypted_chain(
    data: &[u8],
    data2: &[u8],
    used: &Extents,
    full_name: &str,
) -> (Vec<u8>, Vec<u8>) {
    let mut id = fixed_identity(Cipher::Aes256);
    id.keys = holdfast_image::crypto::Keys::new_chain(Cipher::Aes256);
    let (f, _) = write(data, used, &id, None, &opts(Cipher::Aes256), &meta()).expect("write");
    let mut full = Image::open(std::sync::Arc::new(MemParts {
        data: f.clone(),
        name: full_name.into(),
    }))
    .expect("open");
    full.unlock(Some(b"pw")).expect("unlock");
    let child = Identity::child_of(&full, Kind::Incremental, Cipher::Aes256).expect("child");
    let mut m = meta();
    m.parent_name = Some(full_name.into());
    let (i, s) = write(
        data2,
        used,
        &child,
        Some(&full.index),
        &opts(Cipher::Aes256),
        &m,
    )
    .expect("write inc");
    assert_eq!(s.blocks.data, 1);
    (f, i)
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
