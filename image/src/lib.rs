//! # holdfast-image
//!
//! The Holdfast disk image format and every operation on it: create (full, incremental,
//! differential; used-sector or forensic), read, validate, restore, merge and convert.
//! Synchronous, no network and no async runtime: it writes through any [`parts::PartSink`]
//! (a `std::io::Write` stream or split files) and reads through any [`parts::PartStore`]
//! (anything that can read a byte range), so targets plug in from the outside.
//!
//! The normative format specification is `docs/image-format.md` at the repository root.
//!
//! # Layout
//! - [`magic`]: magic numbers and the format version (never edited);
//! - [`header`], [`meta`], [`frame`], [`index`], [`trailer`]: the records of an image;
//! - [`crypto`]: keys, password wrapping, frame AEAD, keyed block hashes;
//! - [`parts`]: split parts, temporary names and commit; [`direct`]: `O_DIRECT` bulk writes;
//! - [`image`]: opening an image with every check a reader makes;
//! - [`writer`]: the parallel imaging pipeline; [`blocks`]: what it reads from;
//! - [`chain`]: resolving incremental chains; [`chain_reader`]: a chain point read at any
//!   offset, as its volume; [`restore`], [`validate`], [`convert`]:
//!   the operations;
//! - [`fs`], [`disk`]: filesystem allocation maps and partition tables; [`plan`]: turning a
//!   source into extents and metadata; [`changes`]: what a change-tracked incremental takes
//!   from its base unread;
//! - [`vdisk`]: a chain point written as a virtual disk (qcow2, VHD, VHDX).

pub mod blocks;
pub mod chain;
pub mod chain_reader;
pub mod changes;
pub mod convert;
pub mod crypto;
pub mod direct;
pub mod disk;
pub mod error;
pub mod extents;
pub mod frame;
pub mod fs;
pub mod header;
pub mod image;
pub mod index;
pub mod io;
mod le;
pub mod magic;
pub mod meta;
pub mod parts;
pub mod plan;
pub mod progress;
pub mod restore;
pub mod salvage;
pub mod trailer;
pub mod validate;
pub mod vdisk;
pub mod writer;

pub use error::{ImageError, Result};
