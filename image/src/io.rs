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

    /// The open file, e.g. to advise the kernel how it will be read.
    pub fn file(&self) -> &File {
        &self.file
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

/// `head` below `at` and `tail` (shifted down by `at`) from there on, up to `size`; `head`
/// again past the end of `tail`. Used for an encrypted volume imaged through its mapping:
/// its header as it is on the device, its contents as the mapping decrypts them.
pub struct SplicedReadAt<H, T> {
    head: H,
    tail: T,
    at: u64,
    size: u64,
}

impl<H: ReadAt, T: ReadAt> SplicedReadAt<H, T> {
    /// `head` gives the size; `tail` is clipped to it.
    pub fn new(head: H, tail: T, at: u64) -> Self {
        let size = head.size();
        Self {
            head,
            tail,
            at,
            size,
        }
    }

    /// Where `tail` ends (clipped to the size).
    fn tail_end(&self) -> u64 {
        self.at.saturating_add(self.tail.size()).min(self.size)
    }
}

impl<H: ReadAt, T: ReadAt> ReadAt for SplicedReadAt<H, T> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.size {
            return Err(eof());
        }
        let tail_end = self.tail_end();
        while !buf.is_empty() {
            // The run up to the next boundary, from whichever side holds it.
            let (limit, in_tail) = if offset < self.at {
                (self.at, false)
            } else if offset < tail_end {
                (tail_end, true)
            } else {
                (self.size, false)
            };
            let n = ((limit - offset) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            if in_tail {
                self.tail.read_exact_at(now, offset - self.at)?;
            } else {
                self.head.read_exact_at(now, offset)?;
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spliced_source_reads_each_side_across_both_boundaries() {
        let head: Vec<u8> = (0..100u8).collect();
        let tail: Vec<u8> = (200..240u8).collect();
        let spliced = SplicedReadAt::new(head.clone(), tail.clone(), 30);
        assert_eq!(spliced.size(), 100);
        let mut all = vec![0u8; 100];
        spliced.read_exact_at(&mut all, 0).expect("read");
        assert_eq!(&all[..30], &head[..30]);
        assert_eq!(&all[30..70], &tail[..]);
        assert_eq!(&all[70..], &head[70..]);
        let mut some = [0u8; 4];
        spliced.read_exact_at(&mut some, 68).expect("read");
        assert_eq!(some, [238, 239, 70, 71]);
        assert!(spliced.read_exact_at(&mut some, 97).is_err());
    }
}
