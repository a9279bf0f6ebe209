//! Files inside an image, as the agent reads them for the server: a folder's listing and the
//! formats a download of files or folders is streamed in.
//!
//! The same types are what `holdfast-agent image ls --json` prints, so the daemon passes a
//! child's answer on as it is.

use serde::{Deserialize, Serialize};

use crate::job::{Secret, TargetAccess};

/// An image point on a target, with what opening it takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    pub target: TargetAccess,
    /// The image's file name in the target's folder (may hold `/`); its chain is found
    /// beside it.
    pub name: String,
    /// The image password, for an encrypted image.
    pub password: Option<Secret>,
    /// For a disk image: the partition whose files are meant.
    pub partition: Option<u32>,
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Block,
    Char,
    Fifo,
    Socket,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FileEntry {
    /// Its name (for a path that is not a folder: the path as given).
    pub name: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits, in octal.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, RFC 3339.
    pub modified: String,
    /// A symbolic link's target.
    pub target: Option<String>,
    pub inode: u64,
    pub links: u64,
}

/// What a folder holds, all the way down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TreeTotal {
    /// Regular files (each hard-linked file once).
    pub files: u64,
    pub folders: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
}

/// A folder's entries (or the one entry of a path that is not a folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Listing {
    /// The path listed, inside the image.
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// What the path holds all the way down, when asked for.
    pub total: Option<TreeTotal>,
}

/// How files leave an image for a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum ExportFormat {
    /// One regular file, as it is.
    File,
    /// A gzip-compressed tar archive (keeps modes, owners, times and links).
    TarGz,
    /// A ZIP archive (deflated; modes and times kept, links stored as links).
    Zip,
}

impl ExportFormat {
    /// Every format.
    pub const ALL: [Self; 3] = [Self::File, Self::TarGz, Self::Zip];

    /// The name used on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::TarGz => "tar.gz",
            Self::Zip => "zip",
        }
    }

    /// The media type of a download in this format.
    pub fn mime(self) -> &'static str {
        match self {
            Self::File => "application/octet-stream",
            Self::TarGz => "application/gzip",
            Self::Zip => "application/zip",
        }
    }
}

impl std::str::FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format '{s}': use file, tar.gz or zip"))
    }
}
