//! A chain point read at any offset through [`ChainReader`]: the same bytes a restore gives,
//! free space as zeros, and damage a clear error for the blocks it touches, never wrong
//! bytes.

use holdfast_image::chain::Chain;
use holdfast_image::chain_reader::ChainReader;
use holdfast_image::crypto::Cipher;
use holdfast_image::header::Kind;
use holdfast_image::io::ReadAt;
use holdfast_image::writer::Identity;

use crate::mem::{expected, fixed_identity, meta, opts, source, write, MemDir, BS};

/// A full image of one source and an incremental of a changed one, encrypted, in `dir`;
/// what the incremental point reads as (free blocks as zeros).
fn chain(dir: &MemDir) -> Vec<u8> {
    let cipher = Cipher::Aes256;
    let (data, used) = source(7);
    let (full, _) = write(
        &data,
        &used,
        &fixed_identity(cipher),
        None,
        &opts(cipher),
        &meta(),
    )
    .expect("write full");
    dir.put("full.hfi", full.clone());
    let full =
        holdfast_image::image::Image::open(std::sync::Arc::new(holdfast_image::parts::MemParts {
            data: full,
            name: "full.hfi".into(),
        }))
        .and_then(|mut i| i.unlock(Some(b"pw")).map(|()| i))
        .expect("open full");
    let mut changed = data.clone();
    changed[3 * BS as usize + 17] ^= 0x5a;
    changed[30 * BS as usize..31 * BS as usize].fill(0x33);
    let mut m = meta();
    m.parent_name = Some("full.hfi".into());
    let ident = Identity::child_of(&full, Kind::Incremental, cipher).expect("child");
    let (inc, s) = write(
        &changed,
        &used,
        &ident,
        Some(&full.index),
        &opts(cipher),
        &m,
    )
    .expect("write incremental");
    assert_eq!(s.blocks.data, 2, "{s:?}");
    dir.put("inc.hfi", inc);
    let mut want = expected(&changed, &used);
    for b in 0..changed.len().div_ceil(BS as usize) {
        let (s, e) = (b * BS as usize, ((b + 1) * BS as usize).min(changed.len()));
        if used.overlapping(s as u64, e as u64).next().is_none() {
            want[s..e].fill(0);
        }
    }
    want
}

#[test]
fn a_chain_point_reads_as_its_volume_at_any_offset() {
    let dir = MemDir::default();
    let want = chain(&dir);
    let reader =
        ChainReader::new(Chain::open(&dir, "inc.hfi", Some(b"pw")).expect("open")).expect("reader");
    assert_eq!(reader.size(), want.len() as u64);
    let mut all = vec![0xEEu8; want.len()];
    reader.read_exact_at(&mut all, 0).expect("read all");
    assert!(
        all == want,
        "the whole point differs from what a restore gives"
    );
    // Runs of every length at odd offsets, across block boundaries, twice (cached frames).
    for round in 0..2 {
        for (offset, len) in [(0, 1), (4095, 2), (3 * 4096 + 10, 9000), (100_000, 65_536)] {
            let len = len.min(want.len() - offset);
            let mut got = vec![0u8; len];
            reader.read_exact_at(&mut got, offset as u64).expect("read");
            assert!(
                got == want[offset..offset + len],
                "{offset}+{len}, round {round}"
            );
        }
    }
    let mut past = [0u8; 2];
    assert!(reader
        .read_exact_at(&mut past, want.len() as u64 - 1)
        .is_err());
}

#[test]
fn damage_fails_the_reads_it_touches_and_never_gives_wrong_bytes() {
    let dir = MemDir::default();
    let want = chain(&dir);
    let opened = Chain::open(&dir, "inc.hfi", Some(b"pw")).expect("open");
    // One flipped byte in the middle of the full image's frames.
    let mut full = dir.0.lock().expect("lock")["full.hfi"].clone();
    let at = full.len() / 2;
    full[at] ^= 0x01;
    dir.put("full.hfi", full);
    drop(opened);
    let reader =
        ChainReader::new(Chain::open(&dir, "inc.hfi", Some(b"pw")).expect("open")).expect("reader");
    let (mut failed, mut read) = (0, 0);
    for b in 0..want.len().div_ceil(BS as usize) {
        let s = b * BS as usize;
        let e = (s + BS as usize).min(want.len());
        let mut got = vec![0u8; e - s];
        match reader.read_exact_at(&mut got, s as u64) {
            Ok(()) => {
                read += 1;
                assert!(got == want[s..e], "block {b} read wrong bytes");
            }
            Err(e) => {
                failed += 1;
                assert!(e.to_string().contains("block"), "{e}");
            }
        }
    }
    assert!(
        failed > 0 && read > 0,
        "{failed} blocks failed, {read} read"
    );
}
