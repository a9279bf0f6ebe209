//! A volume as a filesystem reader finds it: the first byte picks the reader (so each gets
//! its share, not only the first that recognises the bytes), the rest is the start of the
//! volume, which reads as zeros beyond it up to 1 GiB — seeds keep only a filesystem's
//! first blocks, and a reader must not refuse a volume for being shorter than the
//! filesystem says. The reader probes it and, when it recognises it, maps its used blocks.
#![no_main]

use holdfast_image::fs::READERS;
use holdfast_image::io::ReadAt;
use libfuzzer_sys::fuzz_target;

/// `data`, then zeros up to `size`.
struct Padded<'a> {
    data: &'a [u8],
    size: u64,
}

impl ReadAt for Padded<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.fill(0);
        let len = self.data.len() as u64;
        if offset < len {
            let stop = end.min(len);
            let n = (stop - offset) as usize;
            buf[..n].copy_from_slice(&self.data[offset as usize..stop as usize]);
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, volume)) = data.split_first() else {
        return;
    };
    let reader = READERS[usize::from(pick) % READERS.len()];
    let volume = Padded {
        data: volume,
        size: 1 << 30,
    };
    if let Ok(Some(info)) = reader.probe(&volume) {
        let _ = reader.used_extents(&volume, &info);
    }
});
