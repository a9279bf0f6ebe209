//! Byte-range access: the only thing the reader needs from where an image or a source lives.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A source of bytes that can be read at any offset, from several threads at once.
///
/// Local files implement it with `pread`; network targets implement it with ranged reads,
/// so restoring from a remote image never needs a full download.
pub trait ReadAt: Send + Sync {
    /// Total length in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; a short read is an error (`UnexpectedEof`).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// A file or block device read with `pread`.
#[derive(Debug)]
pub struct FileReadAt {
    file: File,
    size: u64,
}

impl FileReadAt {
    /// Wrap an open file; `size` is its length (for block devices, the device size).
    pub fn new(file: File, size: u64) -> Self {
        Self { file, size }
    }
}

impl ReadAt for FileReadAt {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at offset {offset} is past the end ({} bytes)",
                    buf.len(),
                    self.size
                ),
            ));
        }
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// In-memory bytes (tests, small headers).
impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end")
}

/// A window `[offset, offset + len)` of another source, e.g. one partition of a disk.
pub struct SliceReadAt<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: ReadAt> SliceReadAt<R> {
    /// The window must lie inside `inner`; it is clamped to the inner size otherwise.
    pub fn new(inner: R, offset: u64, len: u64) -> Self {
        let avail = inner.size().saturating_sub(offset);
        Self {
            inner,
            offset,
            len: len.min(avail),
        }
    }
}

impl<R: ReadAt> ReadAt for SliceReadAt<R> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        self.inner.read_exact_at(buf, self.offset + offset)
    }
}
