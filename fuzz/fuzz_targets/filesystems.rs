//! A volume as a filesystem reader finds it: the first byte picks the reader (so each gets
//! its share, not only the first that recognises the bytes), the rest is the volume. The
//! reader probes it and, when it recognises it, maps its used blocks.
#![no_main]

use holdfast_image::fs::READERS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, volume)) = data.split_first() else {
        return;
    };
    let reader = READERS[usize::from(pick) % READERS.len()];
    let volume = volume.to_vec();
    if let Ok(Some(info)) = reader.probe(&volume) {
        let _ = reader.used_extents(&volume, &info);
    }
});
