//! Little-endian field readers for on-disk structures, shared by every record and reader.
//!
//! They read zeros past the end of the slice instead of panicking: a short buffer decodes as
//! zeroed fields, which the caller's validation then rejects.

/// `N` bytes at `at` (zero-filled past the end).
pub(crate) fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(at..at.saturating_add(N)) {
        a.copy_from_slice(s);
    }
    a
}

/// `u16` at `at`.
pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(arr(b, at))
}

/// `u32` at `at`.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(arr(b, at))
}

/// `u64` at `at`.
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(arr(b, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_short_buffers() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u16_at(&b, 0), 0x0201);
        assert_eq!(u32_at(&b, 1), 0x0504_0302);
        assert_eq!(u64_at(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(u32_at(&b, 7), 0, "past the end reads as zero");
        assert_eq!(arr::<2>(&b, 8), [0, 0]);
    }
}
