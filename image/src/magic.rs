//! Magic numbers and the format version.
//!
//! DO NOT MODIFY: these bytes are on disk in every image ever written. Each magic is the ASCII
//! text shown, padded with the bytes shown; `\n` after the name catches text-mode transfers
//! (an FTP ASCII upload turns it into `\r\n` and the magic no longer matches).

/// First 8 bytes of an image (start of part 1): `"HFIMAGE\n"`.
pub const HEADER_MAGIC: [u8; 8] = *b"HFIMAGE\n";
/// First 8 bytes of every split part after the first: `"HFPART\n\0"`.
pub const PART_MAGIC: [u8; 8] = *b"HFPART\n\0";
/// First 4 bytes of every frame record: `"HFFR"`.
pub const FRAME_MAGIC: [u8; 4] = *b"HFFR";
/// First 8 bytes of the index record: `"HFINDEX\n"`.
pub const INDEX_MAGIC: [u8; 8] = *b"HFINDEX\n";
/// First 8 bytes of the trailer: `"HFTRAIL\n"`.
pub const TRAILER_MAGIC: [u8; 8] = *b"HFTRAIL\n";
/// Last 8 bytes of the trailer, hence of a complete image: `"HFEND\n\0\0"`.
pub const END_MAGIC: [u8; 8] = *b"HFEND\n\0\0";

/// Format version written by this code. Readers refuse a higher version (see the spec,
/// "Versioning"). Version 2 stores the index record twice, one copy after the other.
pub const FORMAT_VERSION: u16 = 2;

/// Domain-separation contexts for BLAKE3 key derivation (never change them).
pub const KDF_CONTEXT_HASH: &str = "holdfast image 2026-11 block hash key";
/// Context for the key that authenticates header, metadata and index of encrypted images.
pub const KDF_CONTEXT_MAC: &str = "holdfast image 2026-11 index mac key";
