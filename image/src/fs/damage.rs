//! Every reader under random damage to real volumes: flipped bytes in what it reads, and
//! volumes cut short. Whatever the damage, detection ends (no hang), does not panic, and a
//! used set it still returns lies inside the volume; damage it cannot reason about is an
//! error, which the caller turns into a forensic image with a warning.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::test_support::{image_file, open, populate, pseudo_random, run, tool};
use super::{detect, Detected, FsError};
use crate::io::{FileReadAt, ReadAt};

/// Flips per volume; each damages one to eight bytes.
const ROUNDS: u64 = 1000;
/// How long one detection may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Every (offset, length) read of a volume, in order.
type ReadLog = Arc<std::sync::Mutex<Vec<(u64, u64)>>>;

/// A volume seen with some bytes flipped and, optionally, cut short.
struct Damaged {
    inner: Arc<FileReadAt>,
    /// (offset, XOR mask).
    flips: Vec<(u64, u8)>,
    size: u64,
    /// Every (offset, length) read, when recording.
    reads: Option<ReadLog>,
}

impl ReadAt for Damaged {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end of the cut volume",
            ));
        }
        if let Some(reads) = &self.reads {
            if let Ok(mut r) = reads.lock() {
                r.push((offset, buf.len() as u64));
            }
        }
        self.inner.read_exact_at(buf, offset)?;
        for &(at, mask) in &self.flips {
            if (offset..end).contains(&at) {
                buf[(at - offset) as usize] ^= mask;
            }
        }
        Ok(())
    }
}

/// Detect on `vol` in a thread: a panic or a hang fails the test, naming `what`.
fn detect_or_fail(vol: Damaged, what: &str) -> Result<Option<Detected>, FsError> {
    let size = vol.size;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(detect(&vol));
    });
    let result = match rx.recv_timeout(HANG) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: detection did not end within {HANG:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what}: the reader panicked")
        }
    };
    if let Ok(Some(d)) = &result {
        let end = d.used.ranges().last().map_or(0, |r| r.1);
        assert!(
            end <= size,
            "{what}: used up to {end} of a {size}-byte volume"
        );
    }
    result
}

/// Damage the volume at `image` in [`ROUNDS`] ways (reproducible from `seed`), plus cuts.
fn fuzz(name: &str, image: &Path, seed: u64) {
    let inner = Arc::new(open(image));
    let size = inner.size();
    let reads = ReadLog::default();
    let whole = Damaged {
        inner: inner.clone(),
        flips: Vec::new(),
        size,
        reads: Some(reads.clone()),
    };
    let found = detect_or_fail(whole, name)
        .unwrap_or_else(|e| panic!("{name}: the undamaged volume: {e}"))
        .unwrap_or_else(|| panic!("{name}: the undamaged volume is not recognised"));
    // Where the damage goes: into what the readers read of the undamaged volume, grouped by
    // the size of the read (a superblock, a B-tree node, a bitmap), each group as likely as
    // any other: a log scanned sector by sector does not drown out its few B-tree nodes.
    let mut by_size: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for &(offset, len) in reads.lock().map(|r| r.clone()).unwrap_or_default().iter() {
        if len > 0 {
            by_size.entry(len).or_default().push(offset);
        }
    }
    let read: Vec<(u64, Vec<u64>)> = by_size.into_iter().collect();
    assert!(!read.is_empty(), "{name}: nothing was read");
    let (mut affected, mut recognised) = (0, 0);
    for round in 0..ROUNDS {
        let noise = pseudo_random(64, seed.wrapping_mul(1000).wrapping_add(round));
        let word =
            |i: usize| u64::from_le_bytes(noise[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let count = 1 + (word(0) % 8) as usize;
        let flips = (0..count)
            .map(|i| {
                let r = word(1 + i % 6).rotate_left(i as u32 * 7);
                let (len, starts) = &read[(r as usize) % read.len()];
                let start = starts[((r >> 8) as usize) % starts.len()];
                // Half the time in the first bytes of the read: where headers and the first
                // records of a block are.
                let span = if (r >> 30) & 1 == 0 {
                    (*len).min(128)
                } else {
                    *len
                };
                (
                    (start + (r >> 32) % span).min(size - 1),
                    (noise[56 + i % 8] | 1),
                )
            })
            .collect();
        let vol = Damaged {
            inner: inner.clone(),
            flips,
            size,
            reads: None,
        };
        match detect_or_fail(vol, &format!("{name}, seed {seed}, round {round}")) {
            Ok(Some(d)) => {
                recognised += 1;
                if d.used != found.used {
                    affected += 1;
                }
            }
            Err(_) | Ok(None) => affected += 1,
        }
    }
    for cut in [size / 2, size - 4096, 64 << 10, 1000] {
        let vol = Damaged {
            inner: inner.clone(),
            flips: Vec::new(),
            size: cut,
            reads: None,
        };
        let _ = detect_or_fail(vol, &format!("{name} cut to {cut} bytes"));
    }
    eprintln!("{name}: {affected} of {ROUNDS} rounds changed the outcome, {recognised} read");
    // The damage reached the reader: some rounds changed what it found, some still read.
    assert!(
        affected > 0 && recognised > 0,
        "{name}: {affected} rounds changed the outcome, {recognised} read"
    );
}

/// A volume made by `mkfs` (program and arguments; the image path comes last) in a sparse
/// file of `size` bytes; `None` when the program is missing.
fn made(dir: &Path, name: &str, size: u64, mkfs: &[&str]) -> Option<std::path::PathBuf> {
    let (program, args) = mkfs.split_first()?;
    let program = tool(program)?;
    let image = image_file(dir, name, size);
    run(Command::new(program).args(args).arg(&image));
    Some(image)
}

#[test]
fn random_damage_to_real_volumes_never_panics_or_hangs() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let tree = dir.path().join("tree");
    populate(&tree);
    let root = tree.to_str().expect("utf-8 path");
    let volumes: [(&str, u64, &[&str]); 8] = [
        ("ext4", 32 << 20, &["mkfs.ext4", "-q", "-F", "-d", root]),
        ("fat16", 32 << 20, &["mkfs.fat", "-F", "16"]),
        ("fat32", 64 << 20, &["mkfs.fat", "-F", "32"]),
        ("exfat", 32 << 20, &["mkfs.exfat"]),
        ("ntfs", 32 << 20, &["mkntfs", "-q", "-F", "-f"]),
        ("xfs", 320 << 20, &["mkfs.xfs", "-q", "-f"]),
        (
            "btrfs",
            128 << 20,
            &["mkfs.btrfs", "-q", "-f", "--rootdir", root],
        ),
        ("swap", 8 << 20, &["mkswap", "-q"]),
    ];
    for (seed, (name, size, mkfs)) in volumes.into_iter().enumerate() {
        if let Some(image) = made(dir.path(), &format!("{name}.img"), size, mkfs) {
            fuzz(name, &image, seed as u64 + 1);
        }
    }
}
