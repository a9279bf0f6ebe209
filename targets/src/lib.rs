//! # holdfast-targets
//!
//! Where images are stored: one async [`Target`] trait and its backends — a local folder
//! ([`local::LocalTarget`]), SFTP ([`sftp::SftpTarget`]), FTP/FTPS ([`ftp::FtpTarget`]) and
//! SMB 2/3 ([`smb::SmbTarget`]) and S3 object storage ([`s3::S3Target`]), each behind a cargo feature of its name (all on by default)
//! — plus behaviour that applies to any backend as wrappers: retries
//! with back-off ([`wrap::Retry`]), a cap on concurrent connections ([`wrap::Limited`]) and
//! bandwidth limits with time windows ([`bandwidth::Throttled`]).
//!
//! Targets are named by URLs as in the O&O manual (`sftp://user@host:port/path`,
//! `ftp://…`, `ftps://…`, `smb://[domain;]user@server/share/path`,
//! `s3://bucket/prefix?endpoint=…&region=…&path_style=true`, plain paths, `file://`),
//! parsed by [`location::Location`], which also opens the backend a URL names
//! ([`location::Location::open`]); credentials travel separately ([`location::Credentials`]), are zeroised on drop and never appear in `Debug` output or
//! error messages.

pub mod bandwidth;
#[cfg(any(feature = "sftp", feature = "ftp"))]
mod blocking;
pub mod body;
pub mod error;
#[cfg(feature = "ftp")]
pub mod ftp;
pub mod key;
pub mod local;
pub mod location;
#[cfg(feature = "s3")]
pub mod s3;
pub mod s3config;
#[cfg(feature = "sftp")]
pub mod sftp;
#[cfg(feature = "smb")]
pub mod smb;
#[cfg(any(feature = "ftp", feature = "s3"))]
mod tls;
pub mod wrap;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::TargetError;
pub use key::ObjectKey;

/// An upload body: any async byte stream.
pub type Body = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// What a backend can do, for messages and for the wrappers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCaps {
    /// Name for messages: the URL without credentials.
    pub display: String,
    /// Connections worth opening at once.
    pub max_connections: usize,
    /// Reading a file front to back with [`Target::read_stream`] is cheaper than by ranges
    /// (FTP: one `RETR` instead of a connection, `REST` and `ABOR` per range).
    pub stream_reads: bool,
}

/// The bytes of a range in order, as they arrive (see [`Target::read_stream`]).
pub type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, TargetError>> + Send>>;

/// One entry of a folder listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Name within the folder.
    pub name: String,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// True for a folder.
    pub is_dir: bool,
}

/// A place images are written to and read from.
///
/// Contract (every backend, checked by the conformance suite in `tests/it`):
/// - [`put_stream`](Target::put_stream) is all-or-nothing: the body goes to a temporary name
///   in the same folder, which is renamed to `key` only after the last byte was written and
///   flushed; on any failure the temporary file is removed and nothing appears under `key`.
///   It returns the number of bytes written. An existing `key` is refused with
///   [`TargetError::Exists`] unless `overwrite` is true. The parent folder must exist.
/// - [`get_range`](Target::get_range) returns exactly `range.end - range.start` bytes; a
///   range past the end is [`TargetError::Permanent`].
/// - [`read_stream`](Target::read_stream), where [`TargetCaps::stream_reads`] says so, yields
///   exactly the range's bytes in order and then ends, or ends with an error; dropping the
///   stream stops the transfer. Elsewhere it is [`TargetError::Invalid`].
/// - [`list`](Target::list) returns each entry of a folder once (no `.`/`..`, no temporary
///   upload names), in no particular order.
/// - [`delete`](Target::delete) of a missing key is [`TargetError::NotFound`]; callers decide
///   whether that matters.
/// - [`mkdirs`](Target::mkdirs) creates a folder and its parents; existing ones are fine.
/// - Errors name the target (without credentials) and the key.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// Capabilities and display name.
    fn caps(&self) -> TargetCaps;
    /// Upload `body` to `key`, all or nothing.
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError>;
    /// Read a byte range of `key`.
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError>;
    /// Read a byte range of `key` front to back as one stream (only where
    /// [`TargetCaps::stream_reads`]; the connection stays busy while the stream lives).
    async fn read_stream(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<ByteStream, TargetError> {
        let _ = range;
        Err(TargetError::Invalid(format!(
            "{}: streamed reads of '{key}' are not offered; read by ranges",
            self.caps().display
        )))
    }
    /// Size of `key`, `NotFound` when missing.
    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError>;
    /// Entries of the folder `dir` (the root when `dir` is `None`).
    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError>;
    /// Remove the file `key`.
    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError>;
    /// Create the folder `dir` and its parents.
    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError>;
    /// Free bytes, where the protocol can tell.
    async fn free_space(&self) -> Result<Option<u64>, TargetError>;
}

/// A shared target is a target (so wrappers can hold `Arc<dyn Target>`).
#[async_trait]
impl<T: Target + ?Sized> Target for std::sync::Arc<T> {
    fn caps(&self) -> TargetCaps {
        (**self).caps()
    }
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        (**self).put_stream(key, body, overwrite).await
    }
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        (**self).get_range(key, range).await
    }
    async fn read_stream(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<ByteStream, TargetError> {
        (**self).read_stream(key, range).await
    }
    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        (**self).size(key).await
    }
    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        (**self).list(dir).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        (**self).delete(key).await
    }
    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        (**self).mkdirs(dir).await
    }
    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        (**self).free_space().await
    }
}

/// Name of the temporary file an upload of `name` goes to (hidden, random, recognisable).
pub fn temp_name(name: &str) -> String {
    let mut r = [0u8; 6];
    // Without entropy the name is still unique enough per process: fall back to the pid.
    if getrandom::getrandom(&mut r).is_err() {
        r[..4].copy_from_slice(&std::process::id().to_le_bytes());
    }
    let tag: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!(".{name}.{tag}.hfpartial")
}

/// True when `candidate` is a temporary upload name made by [`temp_name`] for `name`.
pub fn is_temp_name_for(candidate: &str, name: &str) -> bool {
    is_temp_name(candidate)
        && candidate
            .strip_prefix('.')
            .and_then(|rest| rest.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|tag| tag.len() == ".hfpartial".len() + 12)
}

/// True for names made by [`temp_name`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".hfpartial")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names() {
        let t = temp_name("a b.hfi");
        assert!(is_temp_name(&t) && is_temp_name_for(&t, "a b.hfi"));
        assert!(!is_temp_name_for(&t, "a b.hf"));
        assert!(!is_temp_name_for("a b.hfi", "a b.hfi"));
    }
}
