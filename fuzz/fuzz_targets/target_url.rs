//! A storage target's URL as an admin types it (the server checks it with the parser the
//! agents use): sftp, ftp, ftps, smb, file or a path.
#![no_main]

use holdfast_targets::location::Location;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(location) = Location::parse(text) {
            let _ = location.display();
            let _ = location.split_file();
        }
    }
});
