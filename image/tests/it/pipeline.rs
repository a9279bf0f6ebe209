//! The writer's pipeline over a large, sparsely used source: more batches than the planner
//! may run ahead and more batches to read than there are buffers, with any number of
//! threads; and a read error part-way, which must end the run with that error, not hang it.

use std::io;

use holdfast_image::blocks::DeviceBlocks;
use holdfast_image::crypto::Cipher;
use holdfast_image::extents::Extents;
use holdfast_image::io::ReadAt;
use holdfast_image::parts::StreamSink;
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::writer::{write_image, WriteOptions, WriteSummary};
use holdfast_image::Result;

use crate::mem::{fixed_identity, meta, opts, BS};

const MIB: u64 = 1 << 20;

/// 8 GiB whose bytes are a function of their offset, nothing stored; reading at or past
/// `fail_at` fails like a bad sector.
struct Generated {
    fail_at: u64,
}

impl ReadAt for Generated {
    fn size(&self) -> u64 {
        8 << 30
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.fail_at {
            return Err(io::Error::other("bad sector"));
        }
        for (i, v) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *v = (at / u64::from(BS)).wrapping_mul(31).wrapping_add(at % 251) as u8;
        }
        Ok(())
    }
}

/// 40 used stretches of 1–9 MiB spread over 8 GiB (2048 batches of 4 MiB).
fn sparse_use() -> Extents {
    let mut used = Extents::new();
    for i in 0..40u64 {
        used.add(i * 200 * MIB + (i % 7) * 4096, (1 + i % 9) * MIB);
    }
    used
}

fn image(src: &Generated, used: &Extents, threads: usize) -> Result<(Vec<u8>, WriteSummary)> {
    let blocks = DeviceBlocks::new(src, used.clone(), BS, "generated");
    let mut sink = StreamSink::new(Vec::new(), "mem");
    let options = WriteOptions {
        threads,
        compression_level: 1,
        ..opts(Cipher::None)
    };
    let summary = write_image(
        &blocks,
        &fixed_identity(Cipher::None),
        &meta(),
        None,
        &options,
        &mut sink,
        &NoProgress,
        &Cancel::new(),
    )?;
    Ok((sink.into_inner(), summary))
}

#[test]
fn a_sparse_source_images_the_same_with_any_number_of_threads() {
    let used = sparse_use();
    let src = Generated { fail_at: u64::MAX };
    let (one, summary) = image(&src, &used, 1).expect("one thread");
    assert_eq!(summary.read_bytes, used.total());
    assert_eq!(summary.data_bytes, used.total(), "no block of it is zeros");
    for threads in [2, 5] {
        let (many, _) = image(&src, &used, threads).expect("threads");
        assert!(one == many, "{threads} threads wrote other bytes than one");
    }
}

#[test]
fn a_read_error_part_way_ends_the_run_with_that_error() {
    let used = sparse_use();
    let fail_at = 20 * 200 * MIB + 512 * 1024;
    for threads in [1, 3] {
        let err = image(&Generated { fail_at }, &used, threads)
            .expect_err("a failing read must fail the image")
            .to_string();
        assert!(
            err.contains("reading 'generated' at offset") && err.contains("bad sector"),
            "{threads} threads: {err}"
        );
    }
}
