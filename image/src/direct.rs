//! Bulk writes and reads that bypass the page cache (`O_DIRECT`) where the file system
//! allows it.
//!
//! Images and restored volumes are written once and not read back soon: pushing them through
//! the page cache costs a copy and page allocation per 4 KiB, and then a flush. On the
//! reference machine a 2 GiB write with `O_DIRECT` ran at 2.4–3.5 GB/s, through the page
//! cache plus `fsync` at 0.35 GB/s (`dd`, docs/benchmarks.md). `O_DIRECT` needs the buffer,
//! the file offset and the length aligned to the device's logical block size; we align to
//! [`ALIGN`] and send whatever is not aligned (an image's last bytes, a volume's short last
//! block) through a second, ordinary handle on the same file. File systems without
//! `O_DIRECT` (tmpfs) get the ordinary handle only.
//!
//! The source of an image is read the same way ([`DirectReadAt`]): a volume is read once, and
//! through the page cache every 4 KiB costs a page and a copy and pushes the machine's own
//! working set out of memory. On the reference machine a loop device read at 454 MiB/s through
//! the page cache and 2199 MiB/s direct (`dd`, one reader, 4 MiB reads). A direct read of a
//! block device first writes back what is dirty in its cache for that range, so it sees what a
//! buffered read would.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::io::{FileReadAt, ReadAt};

/// Alignment of direct I/O: covers 512-byte and 4 KiB logical blocks.
pub const ALIGN: usize = 4096;
/// Size of one direct write.
const CHUNK: usize = 4 << 20;

/// A heap buffer whose usable window starts on an [`ALIGN`] boundary.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` usable bytes.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self {
            storage,
            start,
            len,
        }
    }
    /// Usable bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it has no usable bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The aligned window.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
    /// The aligned window, read-only.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// Open `path` for writing twice: with `O_DIRECT` (when supported) and without.
fn open_pair(opts: &OpenOptions, path: &Path) -> io::Result<(Option<File>, File)> {
    let buffered = opts.open(path)?;
    let mut direct_opts = OpenOptions::new();
    direct_opts.write(true).custom_flags(libc::O_DIRECT);
    let direct = direct_opts.open(path).ok();
    Ok((direct, buffered))
}

fn is_aligned(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN)
}

/// Appends a stream to a new file: full aligned chunks go direct, the tail buffered.
pub struct DirectAppender {
    direct: Option<File>,
    buffered: File,
    buf: AlignedBuf,
    filled: usize,
    pos: u64,
}

impl DirectAppender {
    /// Create (truncate) `path`, readable by its owner only: an image holds a volume's
    /// contents.
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true).mode(0o600);
        let (direct, buffered) = open_pair(&opts, path)?;
        Ok(Self {
            direct,
            buffered,
            buf: AlignedBuf::new(CHUNK),
            filled: 0,
            pos: 0,
        })
    }

    /// Append bytes.
    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(CHUNK - self.filled);
            self.buf.as_mut_slice()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == CHUNK {
                self.flush_aligned()?;
            }
        }
        Ok(())
    }

    /// Write out the aligned part of the buffer.
    fn flush_aligned(&mut self) -> io::Result<()> {
        let aligned = self.filled - self.filled % ALIGN;
        if aligned == 0 {
            return Ok(());
        }
        let chunk = &self.buf.as_slice()[..aligned];
        match &self.direct {
            Some(d) => match d.write_all_at(chunk, self.pos) {
                Ok(()) => {}
                // Some file systems accept O_DIRECT at open but not these alignments.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct = None;
                    self.buffered.write_all_at(chunk, self.pos)?;
                }
                Err(e) => return Err(e),
            },
            None => self.buffered.write_all_at(chunk, self.pos)?,
        }
        self.pos += aligned as u64;
        let rest = self.filled - aligned;
        self.buf.as_mut_slice().copy_within(aligned..self.filled, 0);
        self.filled = rest;
        Ok(())
    }

    /// Write everything still buffered and make the file durable.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush_aligned()?;
        if self.filled > 0 {
            self.buffered
                .write_all_at(&self.buf.as_slice()[..self.filled], self.pos)?;
            self.pos += self.filled as u64;
            self.filled = 0;
        }
        self.buffered.sync_all()
    }
}

thread_local! {
    /// Per-thread bounce buffer: data bound for or coming from a direct transfer passes
    /// through it when the caller's memory is not aligned.
    static BOUNCE: RefCell<Option<AlignedBuf>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's bounce buffer of [`CHUNK`] bytes.
fn with_bounce<T>(f: impl FnOnce(&mut AlignedBuf) -> T) -> T {
    BOUNCE.with(|b| f(b.borrow_mut().get_or_insert_with(|| AlignedBuf::new(CHUNK))))
}

/// Positional writes to an existing file or block device, direct where aligned.
pub struct DirectFile {
    direct: Option<File>,
    buffered: File,
}

impl DirectFile {
    /// Open `path` (which must exist) for writing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.write(true);
        let (direct, buffered) = open_pair(&opts, path)?;
        Ok(Self { direct, buffered })
    }

    /// The ordinary handle (for sizing and syncing).
    pub fn file(&self) -> &File {
        &self.buffered
    }

    /// Write all of `data` at `offset`.
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let Some(direct) = self
            .direct
            .as_ref()
            .filter(|_| is_aligned(offset, data.len()))
        else {
            return self.buffered.write_all_at(data, offset);
        };
        // Data already in aligned memory (a decoded frame's blocks) goes as it is.
        if data.as_ptr().align_offset(ALIGN) == 0 {
            return match direct.write_all_at(data, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.buffered.write_all_at(data, offset)
                }
                other => other,
            };
        }
        with_bounce(|staging| {
            for (i, piece) in data.chunks(CHUNK).enumerate() {
                let at = offset + (i * CHUNK) as u64;
                let buf = &mut staging.as_mut_slice()[..piece.len()];
                buf.copy_from_slice(piece);
                match direct.write_all_at(buf, at) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.buffered.write_all_at(piece, at)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// Flush to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        self.buffered.sync_all()
    }
}

/// Reads shorter than this go through the page cache (metadata, headers): they are often
/// read again, and unaligned.
const MIN_DIRECT_READ: usize = 64 << 10;

/// Positional reads of a file or block device, direct where aligned and large.
pub struct DirectReadAt {
    buffered: FileReadAt,
    direct: Option<File>,
    /// Set once the file system refused a direct read's alignment: later reads go through
    /// the page cache without trying again.
    refused: AtomicBool,
}

impl DirectReadAt {
    /// `file`, open for reading, of `size` bytes at `path`; a second handle on `path` reads
    /// direct where the file system allows it.
    pub fn new(file: File, size: u64, path: &Path) -> Self {
        let direct = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Self {
            buffered: FileReadAt::new(file, size),
            direct,
            refused: AtomicBool::new(false),
        }
    }

    /// The ordinary handle, e.g. to advise the kernel how it will be read.
    pub fn file(&self) -> &File {
        self.buffered.file()
    }

    /// Whether large reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some() && !self.refused.load(Ordering::Relaxed)
    }

    /// Read the aligned `buf` (at the aligned `offset`) direct; `false` when the file system
    /// refused the alignment (the caller then reads all of `buf` through the page cache).
    fn read_direct(direct: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        if buf.as_ptr().align_offset(ALIGN) == 0 {
            return match direct.read_exact_at(buf, offset) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
                Err(e) => Err(e),
            };
        }
        with_bounce(|landing| {
            for (i, piece) in buf.chunks_mut(CHUNK).enumerate() {
                let at = offset + (i * CHUNK) as u64;
                let land = &mut landing.as_mut_slice()[..piece.len()];
                match direct.read_exact_at(land, at) {
                    Ok(()) => piece.copy_from_slice(land),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        })
    }
}

impl ReadAt for DirectReadAt {
    fn size(&self) -> u64 {
        self.buffered.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return self.buffered.read_exact_at(buf, offset);
        };
        let from = offset.next_multiple_of(ALIGN as u64);
        let to = end - end % ALIGN as u64;
        let Some(direct) = self.direct.as_ref().filter(|_| {
            buf.len() >= MIN_DIRECT_READ
                && end <= self.size()
                && to > from
                && !self.refused.load(Ordering::Relaxed)
        }) else {
            return self.buffered.read_exact_at(buf, offset);
        };
        let (head, rest) = buf.split_at_mut((from - offset) as usize);
        let (middle, tail) = rest.split_at_mut((to - from) as usize);
        self.buffered.read_exact_at(head, offset)?;
        if !Self::read_direct(direct, middle, from)? {
            self.refused.store(true, Ordering::Relaxed);
            self.buffered.read_exact_at(middle, from)?;
        }
        self.buffered.read_exact_at(tail, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appender_writes_exactly_the_stream() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let p = dir.path().join("x");
        let mut a = DirectAppender::create(&p).expect("create");
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(777_777) {
            a.write_all(piece).expect("write");
        }
        a.finish().expect("finish");
        assert!(std::fs::read(&p).expect("read") == data);
    }

    #[test]
    fn positional_writes_aligned_and_not() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let p = dir.path().join("y");
        std::fs::write(&p, vec![7u8; 3 * CHUNK]).expect("prefill");
        let f = DirectFile::open(&p).expect("open");
        f.write_all_at(&vec![1u8; CHUNK + ALIGN], ALIGN as u64)
            .expect("aligned");
        f.write_all_at(&[2u8; 100], 5).expect("unaligned");
        let mut in_aligned_memory = AlignedBuf::new(CHUNK + 2 * ALIGN);
        in_aligned_memory.as_mut_slice().fill(3);
        f.write_all_at(in_aligned_memory.as_slice(), 2 * CHUNK as u64)
            .expect("from aligned memory");
        f.sync().expect("sync");
        let back = std::fs::read(&p).expect("read");
        assert_eq!(&back[..5], &[7; 5]);
        assert_eq!(&back[5..105], &[2; 100][..]);
        assert!(back[ALIGN..ALIGN * 2 + CHUNK].iter().all(|&b| b == 1));
        assert!(back[ALIGN * 2 + CHUNK..2 * CHUNK].iter().all(|&b| b == 7));
        assert!(back[2 * CHUNK..3 * CHUNK + 2 * ALIGN]
            .iter()
            .all(|&b| b == 3));
        assert_eq!(back.len(), 3 * CHUNK + 2 * ALIGN);
    }

    #[test]
    fn direct_reads_return_the_bytes_at_any_offset_and_length() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let p = dir.path().join("z");
        let data: Vec<u8> = (0..(3 * CHUNK + 5000)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &data).expect("write");
        let file = File::open(&p).expect("open");
        let r = DirectReadAt::new(file, data.len() as u64, &p);
        assert!(r.is_direct(), "/var/tmp takes O_DIRECT here");
        let mut in_aligned_memory = AlignedBuf::new(CHUNK + ALIGN);
        r.read_exact_at(in_aligned_memory.as_mut_slice(), ALIGN as u64)
            .expect("aligned");
        assert!(in_aligned_memory.as_slice() == &data[ALIGN..2 * ALIGN + CHUNK]);
        for (offset, len) in [
            (0, 100),
            (1, MIN_DIRECT_READ + 3),
            (ALIGN - 1, 2 * CHUNK + 7),
            (CHUNK, CHUNK),
            (3 * CHUNK - 70_000, 70_000 + 5000),
        ] {
            let mut buf = vec![0u8; len];
            r.read_exact_at(&mut buf, offset as u64).expect("read");
            assert!(buf == data[offset..offset + len], "{offset} + {len}");
        }
        let mut past = vec![0u8; MIN_DIRECT_READ];
        assert!(r
            .read_exact_at(&mut past, (data.len() - 100) as u64)
            .is_err());
    }
}
