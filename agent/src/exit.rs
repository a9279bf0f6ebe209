//! Exit codes (documented in README and `holdfast-agent image --help`).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | failure (I/O, bad option, anything else) |
//! | 2 | usage error (from the argument parser) |
//! | 3 | the image is damaged, incomplete, or its chain is broken |
//! | 4 | password missing or wrong |
//! | 5 | refused to protect data (mounted device, target too small, exists, other source) |
//! | 6 | cancelled |
//! | 7 | the image is locked (S3 Object Lock) and cannot be deleted until its lock ends |

use holdfast_image::ImageError;

/// A refusal that protects data (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Exit code when validation found damage (the report was printed).
pub const DAMAGED: u8 = 3;
/// Exit code of a cancelled command (its partial output was removed).
pub const CANCELLED: u8 = 6;
/// Exit code of a deletion an Object Lock refused (nothing was deleted).
pub const LOCKED: u8 = 7;

/// The exit code for an error chain.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Refused>() {
            return 5;
        }
        if let Some(holdfast_targets::TargetError::Locked { .. }) = cause.downcast_ref() {
            return LOCKED;
        }
        if let Some(e) = cause.downcast_ref::<ImageError>() {
            return match e {
                ImageError::NotAnImage { .. }
                | ImageError::UnsupportedVersion { .. }
                | ImageError::Truncated { .. }
                | ImageError::MissingPart { .. }
                | ImageError::Corrupt { .. }
                | ImageError::DamagedBlocks { .. }
                | ImageError::ChainBroken { .. } => DAMAGED,
                ImageError::PasswordRequired { .. } | ImageError::WrongPassword { .. } => 4,
                ImageError::SourceMismatch { .. } => 5,
                ImageError::Cancelled => CANCELLED,
                _ => 1,
            };
        }
    }
    1
}
