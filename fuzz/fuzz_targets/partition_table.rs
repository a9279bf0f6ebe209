//! A disk's first and last sectors as the partition table reader finds them (MBR with its
//! extended-partition chain, GPT with its backup): the first byte picks the sector size.
#![no_main]

use holdfast_image::disk::read_partition_table;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, disk)) = data.split_first() else {
        return;
    };
    let sector = if pick & 1 == 0 { 512 } else { 4096 };
    let _ = read_partition_table(&disk.to_vec(), sector);
});
