//! The one error type of the image crate.

use std::io;

use crate::disk::DiskError;
use crate::fs::FsError;

/// Everything that can go wrong reading, writing or checking an image.
///
/// `name` fields hold the display name of an image or part (never a credential).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An I/O operation failed; `context` says what we were doing.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, e.g. "reading part 2 of 'x.hfi'".
        context: String,
        /// The underlying error (in the message, so not also a `source`: a report of
        /// the whole chain would say it twice).
        cause: io::Error,
    },
    /// The file does not start with the image magic.
    #[error("'{name}' is not a Holdfast image (bad magic)")]
    NotAnImage {
        /// Image name.
        name: String,
    },
    /// Written by a newer format version.
    #[error("'{name}' uses image format version {version}; this program reads up to version {supported}")]
    UnsupportedVersion {
        /// Image name.
        name: String,
        /// Version found.
        version: u16,
        /// Highest version understood.
        supported: u16,
    },
    /// The image ends early: no valid trailer where one must be.
    #[error("'{name}' is incomplete or truncated: {detail}")]
    Truncated {
        /// Image name.
        name: String,
        /// What is missing.
        detail: String,
    },
    /// A split part is missing.
    #[error("'{name}' is missing split part {number} ('{part}')")]
    MissingPart {
        /// Image name.
        name: String,
        /// 1-based part number.
        number: u32,
        /// The part's file name.
        part: String,
    },
    /// Structural damage: a checksum, magic or bound does not hold.
    #[error("'{name}' is damaged: {detail}")]
    Corrupt {
        /// Image name.
        name: String,
        /// What does not hold.
        detail: String,
    },
    /// Damaged data blocks (checksum, authentication or block hash mismatch).
    #[error("'{name}' is damaged in blocks {first_block}..={last_block} (source bytes {start}..{end}): {detail}")]
    DamagedBlocks {
        /// Image name.
        name: String,
        /// First damaged block number.
        first_block: u64,
        /// Last damaged block number.
        last_block: u64,
        /// First byte of the source the blocks cover.
        start: u64,
        /// End (exclusive) of the source bytes covered.
        end: u64,
        /// What failed.
        detail: String,
    },
    /// The image is encrypted and no password was given.
    #[error("'{name}' is encrypted: give the password (--password-file or HOLDFAST_PASSWORD)")]
    PasswordRequired {
        /// Image name.
        name: String,
    },
    /// The password does not open the image's key.
    #[error("wrong password for '{name}'")]
    WrongPassword {
        /// Image name.
        name: String,
    },
    /// A chain link does not hold (parent missing, changed or of another source).
    #[error("chain of '{name}' is broken: {detail}")]
    ChainBroken {
        /// Image name.
        name: String,
        /// What does not hold.
        detail: String,
    },
    /// The base image was made from another source than the one being imaged.
    #[error("base image '{name}' belongs to another source: {detail}")]
    SourceMismatch {
        /// Base image name.
        name: String,
        /// Which identity differs.
        detail: String,
    },
    /// An option or request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The filesystem allocation reader failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The partition table reader failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl ImageError {
    /// Wrap an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, cause: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause,
        }
    }

    /// Structural damage in `name`.
    pub fn corrupt(name: &str, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            name: name.to_owned(),
            detail: detail.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
