//! The journal of ext3 and ext4 (JBD2), read-only: which filesystem blocks it holds copies
//! of, so an ext filesystem whose journal is not yet replayed (`needs_recovery`: a snapshot
//! or copy of a mounted filesystem) can still be imaged by its used blocks.
//!
//! The log starts at the journal superblock's `s_start` with sequence `s_sequence`. Each
//! block of it has a big-endian header (magic `0xC03B3998`, type, sequence). A *descriptor*
//! block lists tags, one per following log block, naming the filesystem block it is a copy of;
//! a *commit* block ends a transaction; *revoke* blocks are skipped here. The walk stops at
//! the first block whose magic or sequence does not follow, and wraps from the end of the
//! log to `s_first`. Copies of uncommitted transactions are returned too: callers only widen
//! what they keep with them, never narrow it.

use super::FsError;

const FS: &str = "ext journal";
const MAGIC: u32 = 0xC03B_3998;

// Block types.
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPERBLOCK_V1: u32 = 3;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE: u32 = 5;

// s_feature_incompat
const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;

// Tag flags.
const FLAG_ESCAPE: u32 = 0x1;
const FLAG_SAME_UUID: u32 = 0x2;
const FLAG_LAST_TAG: u32 = 0x8;

/// A copy of a filesystem block in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// The filesystem block it is a copy of.
    pub target: u64,
    /// Where the copy is, as a block of the journal (0 = the journal superblock).
    pub at: u64,
    /// Its first four bytes were the journal's magic and are stored as zeros.
    pub escaped: bool,
}

impl Logged {
    /// Undo the escaping of a copy read from the log.
    pub fn restore(&self, block: &mut [u8]) {
        if self.escaped && block.len() >= 4 {
            block[..4].copy_from_slice(&MAGIC.to_be_bytes());
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

fn be16(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 2)
        .map_or(0, |x| u32::from(u16::from_be_bytes([x[0], x[1]])))
}

/// Check the journal superblock (journal block 0) and say whether the log is empty
/// (`s_start` 0: nothing to replay, as after a freeze or a clean unmount). Then no block of
/// the journal but its superblock is read before the kernel writes it again.
pub fn is_empty(sb: &[u8]) -> Result<bool, FsError> {
    if be32(sb, 0) != MAGIC || !matches!(be32(sb, 4), SUPERBLOCK_V1 | SUPERBLOCK_V2) {
        return Err(FsError::corrupt(
            FS,
            "the journal superblock's magic is missing",
        ));
    }
    Ok(be32(sb, 28) == 0)
}

/// Every block copy in the log of a journal of `len` blocks, oldest first; `read` gives
/// journal block `n`. Empty when the journal is clean.
pub fn logged_copies(
    len: u64,
    mut read: impl FnMut(u64) -> Result<Vec<u8>, FsError>,
) -> Result<Vec<Logged>, FsError> {
    let sb = read(0)?;
    if is_empty(&sb)? {
        return Ok(Vec::new());
    }
    let maxlen = u64::from(be32(&sb, 16)).min(len);
    let first = u64::from(be32(&sb, 20));
    let mut sequence = be32(&sb, 24);
    let start = u64::from(be32(&sb, 28));
    if first == 0 || first >= maxlen || start < first || start >= maxlen {
        return Err(FsError::corrupt(
            FS,
            format!(
                "the log runs from block {start} within {first}..{maxlen}, outside the journal"
            ),
        ));
    }
    let incompat = if be32(&sb, 4) == SUPERBLOCK_V2 {
        be32(&sb, 40)
    } else {
        0
    };
    let csum3 = incompat & INCOMPAT_CSUM_V3 != 0;
    let wide = incompat & INCOMPAT_64BIT != 0;
    let tag_bytes = if csum3 {
        16
    } else {
        12 + if incompat & INCOMPAT_CSUM_V2 != 0 {
            2
        } else {
            0
        } - if wide { 0 } else { 4 }
    };
    // Descriptor blocks end with a 4-byte checksum tail when the log is checksummed.
    let tail = if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0 {
        4
    } else {
        0
    };
    let next = |b: u64| if b + 1 >= maxlen { first } else { b + 1 };

    let mut out = Vec::new();
    let mut block = start;
    // Each step consumes at least one block: a whole pass is the most there can be.
    let mut budget = maxlen - first;
    while budget > 0 {
        let raw = read(block)?;
        if be32(&raw, 0) != MAGIC || be32(&raw, 8) != sequence {
            break;
        }
        budget -= 1;
        match be32(&raw, 4) {
            DESCRIPTOR => {
                let end = raw.len().saturating_sub(tail);
                let mut at = 12;
                loop {
                    if at + tag_bytes > end {
                        break;
                    }
                    let (flags, high) = if csum3 {
                        (be32(&raw, at + 4), be32(&raw, at + 8))
                    } else {
                        (
                            be16(&raw, at + 6),
                            if wide { be32(&raw, at + 8) } else { 0 },
                        )
                    };
                    let target = u64::from(be32(&raw, at)) | u64::from(high) << 32;
                    block = next(block);
                    if budget == 0 {
                        return Err(FsError::corrupt(
                            FS,
                            "a descriptor names more blocks than the log holds",
                        ));
                    }
                    budget -= 1;
                    out.push(Logged {
                        target,
                        at: block,
                        escaped: flags & FLAG_ESCAPE != 0,
                    });
                    at += tag_bytes;
                    if flags & FLAG_SAME_UUID == 0 {
                        at += 16;
                    }
                    if flags & FLAG_LAST_TAG != 0 {
                        break;
                    }
                }
            }
            COMMIT => sequence = sequence.wrapping_add(1),
            REVOKE => {}
            _ => break,
        }
        block = next(block);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 1024;

    fn header(kind: u32, seq: u32) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        b[..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&kind.to_be_bytes());
        b[8..12].copy_from_slice(&seq.to_be_bytes());
        b
    }

    /// A journal of 16 blocks whose log (csum v3, 64-bit) starts at block `start` with
    /// sequence 7: a transaction copying fs blocks 100 and 5_000_000_000 (the second one
    /// escaped), committed, then one copying block 200 that is not committed.
    fn journal(start: u64) -> Vec<Vec<u8>> {
        let mut j = vec![vec![0u8; BS]; 16];
        let mut sb = header(SUPERBLOCK_V2, 0);
        sb[12..16].copy_from_slice(&(BS as u32).to_be_bytes());
        sb[16..20].copy_from_slice(&16u32.to_be_bytes());
        sb[20..24].copy_from_slice(&1u32.to_be_bytes());
        sb[24..28].copy_from_slice(&7u32.to_be_bytes());
        sb[28..32].copy_from_slice(&(start as u32).to_be_bytes());
        sb[40..44].copy_from_slice(&(INCOMPAT_64BIT | INCOMPAT_CSUM_V3).to_be_bytes());
        j[0] = sb;
        let at = |k: u64| (((start - 1 + k) % 15) + 1) as usize;
        let tag = |d: &mut Vec<u8>, off: usize, target: u64, flags: u32| {
            d[off..off + 4].copy_from_slice(&(target as u32).to_be_bytes());
            d[off + 4..off + 8].copy_from_slice(&flags.to_be_bytes());
            d[off + 8..off + 12].copy_from_slice(&((target >> 32) as u32).to_be_bytes());
        };
        let mut d = header(DESCRIPTOR, 7);
        tag(&mut d, 12, 100, 0);
        // The first tag carries a UUID (16 bytes) after it; the next shares it.
        tag(
            &mut d,
            12 + 16 + 16,
            5_000_000_000,
            FLAG_SAME_UUID | FLAG_ESCAPE | FLAG_LAST_TAG,
        );
        j[at(0)] = d;
        j[at(1)] = vec![1u8; BS];
        j[at(2)] = vec![0u8; BS];
        j[at(3)] = header(COMMIT, 7);
        let mut d = header(DESCRIPTOR, 8);
        tag(&mut d, 12, 200, FLAG_LAST_TAG);
        j[at(4)] = d;
        j[at(5)] = vec![2u8; BS];
        // What follows is stale: an old descriptor of sequence 3.
        j[at(6)] = header(DESCRIPTOR, 3);
        j
    }

    fn read(j: &[Vec<u8>]) -> impl FnMut(u64) -> Result<Vec<u8>, FsError> + '_ {
        |n| Ok(j[n as usize].clone())
    }

    #[test]
    fn copies_are_found_in_order_across_the_wrap() {
        for start in [1, 13] {
            let j = journal(start);
            let got = logged_copies(16, read(&j)).expect("log");
            let at = |k: u64| ((start - 1 + k) % 15) + 1;
            assert_eq!(
                got,
                [
                    Logged {
                        target: 100,
                        at: at(1),
                        escaped: false
                    },
                    Logged {
                        target: 5_000_000_000,
                        at: at(2),
                        escaped: true
                    },
                    Logged {
                        target: 200,
                        at: at(5),
                        escaped: false
                    },
                ],
                "start {start}"
            );
            let mut copy = j[at(2) as usize].clone();
            got[1].restore(&mut copy);
            assert_eq!(be32(&copy, 0), MAGIC);
        }
    }

    #[test]
    fn a_clean_journal_has_no_copies_and_damage_is_an_error() {
        let mut j = journal(1);
        j[0][28..32].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(logged_copies(16, read(&j)).expect("clean"), []);
        let mut j = journal(1);
        j[0][0] = 0;
        assert!(logged_copies(16, read(&j)).is_err());
        let mut j = journal(1);
        j[0][28..32].copy_from_slice(&40u32.to_be_bytes());
        assert!(logged_copies(16, read(&j)).is_err());
        // A descriptor claiming more tags than the log has blocks: an error, not a loop.
        let mut j = journal(1);
        let mut d = header(DESCRIPTOR, 7);
        for i in 0..60 {
            let off = 12 + i * 16;
            d[off..off + 4].copy_from_slice(&(i as u32).to_be_bytes());
            d[off + 4..off + 8].copy_from_slice(&FLAG_SAME_UUID.to_be_bytes());
        }
        j[1] = d;
        for b in &mut j[2..] {
            *b = vec![0u8; BS];
        }
        assert!(logged_copies(16, read(&j)).is_err());
    }
}
