//! An image file as the storage holds it: opened (header, metadata, trailer, index and
//! their checksums), validated without a password (structure and ciphertext), and
//! restored into a sink that keeps nothing. Errors are expected; a panic, an abort, an
//! allocation the input decides or a hang is a finding.
#![no_main]

use std::sync::Arc;

use holdfast_image::chain::Chain;
use holdfast_image::image::Image;
use holdfast_image::parts::MemParts;
use holdfast_image::progress::{Cancel, NoProgress};
use holdfast_image::restore::{restore, RestoreOptions, WriteAt};
use holdfast_image::validate::validate;
use libfuzzer_sys::fuzz_target;

/// A restore target of any size that drops what it is given.
struct Discard(u64);

impl WriteAt for Discard {
    fn size(&self) -> u64 {
        self.0
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeros(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(MemParts {
        data: data.to_vec(),
        name: "fuzz.hfi".into(),
    });
    let Ok(mut image) = Image::open(store) else {
        return;
    };
    let cancel = Cancel::new();
    let _ = validate(&image, 1, &NoProgress, &cancel);
    // An unencrypted image opens fully without a password; an encrypted one stops here.
    if image.unlock(None).is_err() {
        return;
    }
    let size = image.header.source_size;
    let chain = Chain::single(image);
    let opts = RestoreOptions {
        threads: 1,
        ..RestoreOptions::default()
    };
    let _ = restore(&chain, &Discard(size), &opts, &NoProgress, &cancel);
});
