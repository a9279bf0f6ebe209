//! Salvage of a full image whose index is lost in both copies, or which was cut off: every
//! intact frame comes back, and what could not be recovered is named as block ranges.

use std::sync::{Arc, Mutex};

use holdfast_image::crypto::Cipher;
use holdfast_image::extents::Extents;
use holdfast_image::header::Kind;
use holdfast_image::image::Image;
use holdfast_image::index::BlockState;
use holdfast_image::parts::MemParts;
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::salvage::{salvage, SalvageReport};
use holdfast_image::writer::Identity;
use holdfast_image::ImageError;

use crate::mem::*;

/// 20 MiB and a short tail, block by block zeros, text or noise: five frames of 4 MiB.
fn big_source() -> (Vec<u8>, Extents) {
    let size = (20 << 20) + 1000;
    let mut data = vec![0u8; size];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for (b, chunk) in data.chunks_mut(BS as usize).enumerate() {
        match b % 3 {
            0 => {}
            1 => chunk
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = b"salvage me "[i % 11]),
            _ => chunk.iter_mut().for_each(|v| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = (x >> 32) as u8;
            }),
        }
    }
    let used = Extents::full(size as u64);
    (data, used)
}

fn mem(bytes: Vec<u8>) -> Arc<MemParts> {
    Arc::new(MemParts {
        data: bytes,
        name: "x.hfi".into(),
    })
}

/// Salvage `bytes` into a zeroed buffer of `size` bytes (a new, sparse file).
fn salvaged(
    bytes: Vec<u8>,
    password: Option<&[u8]>,
    size: usize,
) -> Result<(SalvageReport, Vec<u8>), ImageError> {
    let out = MemTarget(Mutex::new(vec![0; size]));
    let report = salvage(mem(bytes), password, &out, &NoProgress, &Cancel::new())?;
    Ok((report, out.0.into_inner().expect("lock")))
}

/// Both copies of the index damaged: the image no longer opens.
fn without_index(bytes: &[u8]) -> Vec<u8> {
    let img = Image::open(mem(bytes.to_vec())).expect("open");
    let (at, len) = (
        img.trailer.index_offset as usize,
        img.trailer.index_len as usize,
    );
    let mut b = bytes.to_vec();
    b[at + len / 2] ^= 0x40;
    b[at + len + len / 3] ^= 0x40;
    assert!(Image::open(mem(b.clone())).is_err());
    b
}

#[test]
fn every_frame_comes_back_when_both_copies_of_the_index_are_lost() {
    let (data, used) = big_source();
    let bytes = write_full(&data, &used, Cipher::None);
    let frames = Image::open(mem(bytes.clone()))
        .expect("open")
        .index
        .frames
        .len();
    assert!(frames >= 5, "{frames} frames");
    let (report, out) = salvaged(without_index(&bytes), None, data.len()).expect("salvage");
    assert!(report.is_whole(), "{report:?}");
    assert_eq!(report.frames, frames as u64);
    assert!(out == data, "the salvaged bytes differ from the source");
}

#[test]
fn a_damaged_frame_and_a_cut_off_end_cost_only_their_blocks_and_are_named() {
    let (data, used) = big_source();
    let bytes = write_full(&data, &used, Cipher::None);
    let img = Image::open(mem(bytes.clone())).expect("open");
    let frames = img.index.frames.clone();
    let mut b = bytes.clone();
    // The second frame's payload, and the image cut off inside the last frame.
    let hit = &frames[1];
    b[(hit.offset + u64::from(hit.len) - 100) as usize] ^= 0x01;
    let last = frames.last().expect("frames");
    b.truncate((last.offset + u64::from(last.len) / 2) as usize);
    let (report, out) = salvaged(b, None, data.len()).expect("salvage");
    assert!(!report.is_whole() && !report.reached_index, "{report:?}");
    assert_eq!(report.frames, frames.len() as u64 - 2, "{report:?}");
    assert_eq!(report.skipped.len(), 2, "{report:?}");
    let bs = BS as usize;
    let lost: Vec<(usize, usize)> = report
        .skipped
        .iter()
        .map(|s| (s.first_block as usize, s.last_block as usize))
        .collect();
    // Blocks by frame-table row, from the index of the undamaged image.
    let rows = |row: u32| {
        img.index
            .entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.state == BlockState::Data && e.frame == row)
            .map(|(b, _)| b)
    };
    let last_row = frames.len() as u32 - 1;
    let (first_max, third_min) = (rows(0).max(), rows(2).min());
    // What lies between the intact frames around the damaged one, and everything after the
    // last intact frame.
    assert_eq!(
        Some(lost[0]),
        first_max.zip(third_min).map(|(a, b)| (a + 1, b - 1)),
        "{report:?}"
    );
    assert_eq!(Some(lost[1].0), rows(last_row - 1).max().map(|b| b + 1));
    assert_eq!(lost[1].1, data.len().div_ceil(bs) - 1, "{report:?}");
    assert!(report.skipped[0].detail.contains("checksum"), "{report:?}");
    assert!(report.skipped[1].detail.contains("ends"), "{report:?}");
    for (n, (got, want)) in out.chunks(bs).zip(data.chunks(bs)).enumerate() {
        let skipped = lost.iter().any(|&(f, l)| (f..=l).contains(&n));
        if skipped {
            assert!(got.iter().all(|&v| v == 0), "block {n} was written");
        } else {
            assert_eq!(got, want, "block {n}");
        }
    }
}

#[test]
fn an_encrypted_image_needs_its_password_and_an_incremental_is_refused() {
    let (data, used) = big_source();
    let bytes = write_full(&data, &used, Cipher::Aes256);
    let lost = without_index(&bytes);
    let e = salvaged(lost.clone(), None, data.len()).expect_err("no password");
    assert!(matches!(e, ImageError::PasswordRequired { .. }), "{e}");
    let e = salvaged(lost.clone(), Some(b"nope"), data.len()).expect_err("wrong password");
    assert!(matches!(e, ImageError::WrongPassword { .. }), "{e}");
    let (report, out) = salvaged(lost, Some(b"pw"), data.len()).expect("salvage");
    assert!(report.is_whole(), "{report:?}");
    assert!(out == data);

    let mut full = Image::open(mem(bytes)).expect("open");
    full.unlock(Some(b"pw")).expect("unlock");
    let child = Identity::child_of(&full, Kind::Incremental, Cipher::Aes256).expect("child");
    let mut m = meta();
    m.parent_name = Some("x.hfi".into());
    let (inc, _) = write(
        &data,
        &used,
        &child,
        Some(&full.index),
        &opts(Cipher::Aes256),
        &m,
    )
    .expect("incremental");
    let e = salvaged(inc, Some(b"pw"), data.len()).expect_err("incremental");
    assert!(e.to_string().contains("full images only"), "{e}");
}
