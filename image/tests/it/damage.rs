//! Damage anywhere is detected, named, and never panics.

use std::sync::Arc;

use holdfast_image::crypto::Cipher;
use holdfast_image::header::HEADER_LEN;
use holdfast_image::image::Image;
use holdfast_image::parts::MemParts;
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::validate::validate;
use holdfast_image::ImageError;

use crate::mem::*;

fn open(bytes: Vec<u8>) -> Result<Image, ImageError> {
    Image::open(Arc::new(MemParts {
        data: bytes,
        name: "x.hfi".into(),
    }))
}

fn plain() -> (Vec<u8>, Vec<u8>, holdfast_image::extents::Extents) {
    let (data, used) = source(11);
    let bytes = write_full(&data, &used, Cipher::None);
    (bytes, data, used)
}

#[test]
fn every_truncation_is_refused() {
    let (bytes, _, _) = plain();
    for len in (0..bytes.len())
        .step_by(97)
        .chain([bytes.len() - 1, bytes.len() - 168])
    {
        let err = open(bytes[..len].to_vec()).expect_err("truncated image opened");
        assert!(
            matches!(
                err,
                ImageError::Truncated { .. }
                    | ImageError::NotAnImage { .. }
                    | ImageError::Corrupt { .. }
            ),
            "length {len}: {err}"
        );
    }
}

#[test]
fn flipped_bytes_in_records_are_refused_at_open() {
    let (bytes, _, _) = plain();
    let img = open(bytes.clone()).expect("open");
    let index_at = img.trailer.index_offset as usize;
    let index_len = img.trailer.index_len as usize;
    let mut both = bytes.clone();
    both[index_at + 40] ^= 0x10;
    both[index_at + index_len + 41] ^= 0x10;
    let err = open(both).expect_err("both copies of the index damaged");
    assert!(err.to_string().contains("index"), "{err}");
    // Header, metadata, trailer: each must fail the open (the index has a second copy).
    for at in [
        9,
        100,
        4000,
        HEADER_LEN + 5,
        bytes.len() - 100,
        bytes.len() - 3,
    ] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        assert!(open(b).is_err(), "flip at {at} was not noticed");
    }
}

/// One damaged byte in either copy of the index (format version 2) costs nothing: the other
/// copy stands in, the restore is whole and says so, and validation names the damaged copy.
#[test]
fn a_damaged_copy_of_the_index_is_read_around_and_named() {
    let (bytes, data, used) = plain();
    let img = open(bytes.clone()).expect("open");
    assert_eq!(img.trailer.index_copies(), 2);
    let at = img.trailer.index_offset as usize;
    let len = img.trailer.index_len as usize;
    let sound = validate(&img, 1, &NoProgress, &Cancel::new()).expect("validate");
    assert!(sound.is_ok(), "{sound:?}");
    for (copy, offset) in [("first", at + len / 2), ("second", at + len + len / 2)] {
        let mut b = bytes.clone();
        b[offset] ^= 0x20;
        let img = open(b.clone()).expect("opens from the other copy");
        assert_eq!(img.index_repaired().is_some(), copy == "first");
        let report = validate(&img, 1, &NoProgress, &Cancel::new()).expect("validate");
        assert!(!report.is_ok() && report.damage.is_empty(), "{report:?}");
        assert_eq!(report.records.len(), 1, "{report:?}");
        assert!(
            report.records[0].contains(&format!("the index's {copy} copy")),
            "{report:?}"
        );
        let dir = MemDir::default();
        dir.put("x.hfi", b);
        let got = restore_mem(&dir, "x.hfi", None, data.len()).expect("restore");
        assert!(got == expected(&data, &used), "{copy} copy damaged");
    }
}

#[test]
fn flipped_byte_in_a_frame_is_named_by_block() {
    let (bytes, data, used) = plain();
    let img = open(bytes.clone()).expect("open");
    let f = img.index.frames[0];
    let mut b = bytes;
    b[(f.offset + u64::from(f.len) - 10) as usize] ^= 1;
    let img = open(b.clone()).expect("structure still opens");
    let report = validate(&img, 1, &NoProgress, &Cancel::new()).expect("validate");
    assert_eq!(report.damage.len(), 1, "{report:?}");
    let d = &report.damage[0];
    assert!(d.detail.contains("checksum"), "{d:?}");
    assert!(d.last_block >= d.first_block && d.end <= data.len() as u64);
    let dir = MemDir::default();
    dir.put("x.hfi", b);
    let err = restore_mem(&dir, "x.hfi", None, data.len()).expect_err("restore of damage");
    assert!(matches!(err, ImageError::DamagedBlocks { .. }), "{err}");
    let _ = used;
}

#[test]
fn tampered_ciphertext_with_fixed_checksum_fails_authentication() {
    let (data, used) = source(3);
    let bytes = write_full(&data, &used, Cipher::Aes128);
    let img = open(bytes.clone()).expect("open");
    let f = img.index.frames[0];
    let rec_start = f.offset as usize;
    let rec = &bytes[rec_start..rec_start + f.len as usize];
    let count = u16::from_le_bytes([rec[6], rec[7]]) as usize;
    let payload_at = rec_start + 32 + 8 * count;
    let mut b = bytes.clone();
    b[payload_at + 3] ^= 0x80;
    // Recompute the stored checksum so only the AEAD can notice.
    let crc = crc32c::crc32c(&b[payload_at..rec_start + f.len as usize]);
    b[rec_start + 24..rec_start + 28].copy_from_slice(&crc.to_le_bytes());
    // The frame header checksum covers the payload checksum: fix it too.
    let mut h = b[rec_start..payload_at].to_vec();
    h[28..32].fill(0);
    let c = crc32c::crc32c_append(crc32c::crc32c(&h[..28]), &[0; 4]);
    let c = crc32c::crc32c_append(c, &h[32..]);
    b[rec_start + 28..rec_start + 32].copy_from_slice(&c.to_le_bytes());
    // Without the password the stored checksums agree: structure is fine.
    let img = open(b.clone()).expect("open");
    assert!(validate(&img, 1, &NoProgress, &Cancel::new())
        .expect("validate")
        .is_ok());
    let mut img = open(b).expect("open");
    img.unlock(Some(b"pw")).expect("unlock");
    let r = validate(&img, 1, &NoProgress, &Cancel::new()).expect("validate");
    assert_eq!(r.damage.len(), 1);
    assert!(r.damage[0].detail.contains("authentication"), "{r:?}");
}

#[test]
fn random_damage_never_panics() {
    let (bytes, data, _) = plain();
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.clone();
        let at = (x % b.len() as u64) as usize;
        b[at] = b[at].wrapping_add((x >> 40) as u8 | 1);
        if let Ok(img) = open(b.clone()) {
            let _ = validate(&img, 1, &NoProgress, &Cancel::new());
            let dir = MemDir::default();
            dir.put("x.hfi", b);
            let _ = restore_mem(&dir, "x.hfi", None, data.len());
        }
    }
}

#[test]
fn round_trip_full_and_incremental_in_memory() {
    let (data, used) = source(21);
    let dir = MemDir::default();
    let (f, s) = write(
        &data,
        &used,
        &fixed_identity(Cipher::None),
        None,
        &opts(Cipher::None),
        &meta(),
    )
    .expect("write");
    assert_eq!(s.blocks.unallocated, 4);
    assert!(s.blocks.zero >= 9);
    dir.put("full.hfi", f.clone());
    let full = open(f).expect("open");
    let mut data2 = data.clone();
    data2[2 * BS as usize + 5] ^= 0xFF;
    let ident = holdfast_image::writer::Identity::child_of(
        &full,
        holdfast_image::header::Kind::Incremental,
        Cipher::None,
    )
    .expect("child");
    let mut m = meta();
    m.parent_name = Some("full.hfi".into());
    let (i, s) = write(
        &data2,
        &used,
        &ident,
        Some(&full.index),
        &opts(Cipher::None),
        &m,
    )
    .expect("write inc");
    assert_eq!(s.blocks.data, 1, "{s:?}");
    dir.put("inc.hfi", i);
    assert!(
        restore_mem(&dir, "inc.hfi", None, data.len()).expect("restore") == expected(&data2, &used)
    );
    // A changed base is detected.
    let (other, _) = write(
        &data2,
        &used,
        &fixed_identity(Cipher::None),
        None,
        &opts(Cipher::None),
        &meta(),
    )
    .expect("write");
    dir.put("full.hfi", other);
    let err = restore_mem(&dir, "inc.hfi", None, data.len()).expect_err("changed base");
    assert!(err.to_string().contains("has changed"), "{err}");
}

/// A hand-made image whose header claims a 1 PiB source and whose index claims 512 GiB once
/// decompressed, every unkeyed checksum recomputed (what anyone who can write to the backup
/// share can make): opening it is a clear error, not an aborted process.
#[test]
fn an_image_claiming_a_huge_index_is_refused_without_allocating_it() {
    let (bytes, _, _) = plain();
    let img = open(bytes.clone()).expect("open");
    let mut header = img.header.clone();
    header.source_size = 1 << 50;
    let mut forged = bytes.clone();
    forged[..HEADER_LEN].copy_from_slice(&header.encode());
    let at = img.trailer.index_offset as usize;
    forged[at + 24..at + 32].copy_from_slice(&(512u64 << 30).to_le_bytes());
    let meta_end = HEADER_LEN + img.meta_bytes().len();
    let index_end = at + img.trailer.index_len as usize;
    let mut trailer = img.trailer.clone();
    trailer.index_digest =
        holdfast_image::image::digest_of(&forged[..meta_end], &forged[at..index_end]);
    let len = forged.len();
    forged[len - holdfast_image::trailer::TRAILER_LEN..].copy_from_slice(&trailer.encode());
    match open(forged) {
        Err(ImageError::Corrupt { detail, .. }) => {
            assert!(detail.contains("index"), "{detail}");
        }
        other => panic!("expected a damaged index, got {:?}", other.map(|_| ())),
    }
}

/// Every byte of the trailer and the header's version field: a flip is damage, named as
/// damage (not as a truncated image or a newer format), wherever it lands.
#[test]
fn every_trailer_byte_and_the_version_are_covered_and_named_as_damage() {
    let (bytes, _, _) = plain();
    let tail = bytes.len() - holdfast_image::trailer::TRAILER_LEN;
    for i in 0..holdfast_image::trailer::TRAILER_LEN {
        let mut b = bytes.clone();
        b[tail + i] ^= 0x04;
        match open(b) {
            Err(ImageError::Corrupt { .. }) => {}
            // Its magic numbers gone, the trailer is not found at all.
            Err(ImageError::Truncated { .. }) if !(8..160).contains(&i) => {}
            Err(e) => panic!("trailer byte {i}: {e}"),
            Ok(_) => panic!("a flip of trailer byte {i} was not noticed"),
        }
    }
    for at in [8, 9] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        match open(b) {
            Err(ImageError::Corrupt { detail, .. }) => {
                assert!(detail.contains("checksum"), "{detail}");
            }
            other => panic!("version byte {at}: {:?}", other.map(|_| ())),
        }
    }
}
