//! Split parts: writing a logical image stream into numbered files and reading it back.
//!
//! Part 1 starts with the image header; every later part starts with a 64-byte part header
//! naming the image and the part number, then continues the logical stream. Part 1 holds
//! `split_size` logical bytes, every later part `split_size - 64`, so no file exceeds the
//! split size and logical offsets map to parts by arithmetic.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::direct::DirectAppender;
use crate::error::{ImageError, Result};
use crate::header::Id;
use crate::io::ReadAt;
use crate::le::u32_at;
use crate::magic::PART_MAGIC;

/// Smallest split size: 5 MiB (smaller parts would cost more in headers and requests than
/// they save on media with small file limits).
pub const MIN_SPLIT_SIZE: u64 = 5 << 20;
/// Length of the header at the start of parts 2, 3, ….
pub const PART_HEADER_LEN: u64 = 64;

// The naming rule of split images, in one place: part 1 is the image's own name; part N
// (N ≥ 2) is the name followed by `.NNN` (at least three digits: `.002`, …, `.999`, `.1000`).

/// What follows the image's name in the name of part `number` (empty for part 1).
fn part_suffix(number: u32) -> String {
    if number <= 1 {
        String::new()
    } else {
        format!(".{number:03}")
    }
}

/// The part number in a suffix `NNN` (at least three digits, ≥ 2).
fn parse_part_suffix(digits: &str) -> Option<u32> {
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n >= 2)
}

/// Name of part `number` of the image named `base`.
pub fn part_name(base: &str, number: u32) -> String {
    format!("{base}{}", part_suffix(number))
}

/// File name of part `number` of the image whose first part is `base`.
pub fn part_path(base: &Path, number: u32) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(part_suffix(number));
    PathBuf::from(s)
}

/// Which part of the image named `base` the file `name` is: 1 for `base` itself, N for
/// `base.NNN`; `None` for any other name.
pub fn part_number(base: &str, name: &str) -> Option<u32> {
    if name == base {
        return Some(1);
    }
    name.strip_prefix(base)?
        .strip_prefix('.')
        .and_then(parse_part_suffix)
}

/// True when `name` is a later part (2, 3, …) of some image: `ANY.NNN`. Listings of images
/// leave these out.
pub fn is_later_part(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, digits)| parse_part_suffix(digits).is_some())
}

/// Encode the header of part `number` (≥ 2).
pub fn encode_part_header(image_id: &Id, number: u32) -> [u8; PART_HEADER_LEN as usize] {
    let mut b = [0u8; PART_HEADER_LEN as usize];
    b[0..8].copy_from_slice(&PART_MAGIC);
    b[8..12].copy_from_slice(&number.to_le_bytes());
    b[12..28].copy_from_slice(&image_id.0);
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Where the parts of an image being written go.
///
/// Contract: nothing a reader would take for a complete image is visible before
/// [`PartSink::commit`]; after [`PartSink::abort`] (or a drop without commit) nothing of this
/// write is left behind.
pub trait PartSink: Send {
    /// Start part `number` (1, 2, … in order).
    fn begin_part(&mut self, number: u32) -> io::Result<()>;
    /// Append to the current part.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Finish the current part (flush and make durable).
    fn end_part(&mut self) -> io::Result<()>;
    /// Make the image visible under its final name.
    fn commit(&mut self, part_count: u32) -> io::Result<()>;
    /// Remove everything written so far.
    fn abort(&mut self);
    /// Name for messages (no credentials).
    fn display_name(&self) -> String;
}

/// A single `Write` stream (no split), e.g. a pipe or a network upload.
pub struct StreamSink<W: Write + Send> {
    inner: W,
    name: String,
}

impl<W: Write + Send> StreamSink<W> {
    /// Wrap a writer.
    pub fn new(inner: W, name: impl Into<String>) -> Self {
        Self {
            inner,
            name: name.into(),
        }
    }
    /// The inner writer back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write + Send> PartSink for StreamSink<W> {
    fn begin_part(&mut self, number: u32) -> io::Result<()> {
        if number > 1 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a stream sink cannot hold split parts",
            ));
        }
        Ok(())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }
    fn end_part(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
    fn commit(&mut self, _part_count: u32) -> io::Result<()> {
        self.inner.flush()
    }
    fn abort(&mut self) {}
    fn display_name(&self) -> String {
        self.name.clone()
    }
}

/// Parts as local files: written under `NAME.partial`, fsynced, renamed on commit
/// (later parts first, part 1 last, so a reader never finds part 1 before the rest).
pub struct FileSink {
    base: PathBuf,
    overwrite: bool,
    current: Option<DirectAppender>,
    temps: Vec<(u32, PathBuf)>,
    committed: bool,
}

impl FileSink {
    /// Refuses at once when the image exists and `overwrite` is false.
    pub fn create(base: impl Into<PathBuf>, overwrite: bool) -> Result<Self> {
        let base = base.into();
        if !overwrite && base.exists() {
            return Err(ImageError::Invalid(format!(
                "'{}' already exists (use --overwrite to replace it)",
                base.display()
            )));
        }
        Ok(Self {
            base,
            overwrite,
            current: None,
            temps: Vec::new(),
            committed: false,
        })
    }

    fn temp_path(&self, number: u32) -> PathBuf {
        let mut s = part_path(&self.base, number).into_os_string();
        s.push(".partial");
        PathBuf::from(s)
    }
}

impl PartSink for FileSink {
    fn begin_part(&mut self, number: u32) -> io::Result<()> {
        let path = self.temp_path(number);
        let file = DirectAppender::create(&path)?;
        self.temps.push((number, path));
        self.current = Some(file);
        Ok(())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.current.as_mut() {
            Some(w) => w.write_all(buf),
            None => Err(io::Error::other("no part open")),
        }
    }
    fn end_part(&mut self) -> io::Result<()> {
        if let Some(mut w) = self.current.take() {
            w.finish()?;
        }
        Ok(())
    }
    fn commit(&mut self, part_count: u32) -> io::Result<()> {
        self.end_part()?;
        if !self.overwrite && self.base.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "'{}' appeared while the image was written",
                    self.base.display()
                ),
            ));
        }
        let mut temps = self.temps.clone();
        temps.sort_by_key(|&(n, _)| std::cmp::Reverse(n));
        for (number, temp) in &temps {
            fs::rename(temp, part_path(&self.base, *number))?;
        }
        // Parts left over from an older, longer image of the same name.
        let mut n = part_count + 1;
        while fs::remove_file(part_path(&self.base, n)).is_ok() {
            n += 1;
        }
        if let Some(dir) = self.base.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.committed = true;
        Ok(())
    }
    fn abort(&mut self) {
        self.current = None;
        for (_, temp) in self.temps.drain(..) {
            let _ = fs::remove_file(temp);
        }
    }
    fn display_name(&self) -> String {
        self.base.display().to_string()
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if !self.committed {
            self.abort();
        }
    }
}

/// Splits a logical stream over parts of a sink.
pub struct PartWriter<'a> {
    sink: &'a mut dyn PartSink,
    image_id: Id,
    split_size: u64,
    part: u32,
    room: u64,
    written: u64,
}

impl<'a> PartWriter<'a> {
    /// `split_size` 0 means one part.
    pub fn new(sink: &'a mut dyn PartSink, image_id: Id, split_size: u64) -> io::Result<Self> {
        sink.begin_part(1)?;
        let room = if split_size == 0 {
            u64::MAX
        } else {
            split_size
        };
        Ok(Self {
            sink,
            image_id,
            split_size,
            part: 1,
            room,
            written: 0,
        })
    }

    /// Logical bytes written so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    /// Append logical bytes, opening new parts as needed.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.room == 0 {
                self.sink.end_part()?;
                self.part += 1;
                self.sink.begin_part(self.part)?;
                self.sink
                    .write_all(&encode_part_header(&self.image_id, self.part))?;
                self.room = self.split_size - PART_HEADER_LEN;
            }
            let n = buf
                .len()
                .min(usize::try_from(self.room).unwrap_or(usize::MAX));
            self.sink.write_all(&buf[..n])?;
            self.room -= n as u64;
            self.written += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Number of parts so far.
    pub fn part_count(&self) -> u32 {
        self.part
    }

    /// Finish and commit.
    pub fn commit(self) -> io::Result<()> {
        self.sink.end_part()?;
        self.sink.commit(self.part)
    }
}

/// Where the parts of an existing image are read from.
pub trait PartStore: Send + Sync {
    /// Image name for messages.
    fn display_name(&self) -> String;
    /// Name of part `number` for messages.
    fn part_name(&self, number: u32) -> String;
    /// Highest part number present (0 when part 1 is missing).
    fn highest_part(&self) -> io::Result<u32>;
    /// Size of part `number`, `None` when it does not exist.
    fn part_size(&self, number: u32) -> io::Result<Option<u64>>;
    /// Read exactly `buf.len()` bytes of part `number` at `offset`.
    fn read_part_at(&self, number: u32, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// Parts as local files next to each other.
pub struct FileParts {
    base: PathBuf,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

impl FileParts {
    /// Parts of the image whose first part is `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, number: u32) -> io::Result<Arc<File>> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| io::Error::other("part cache poisoned"))?;
        if let Some(f) = open.get(&number) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(part_path(&self.base, number))?);
        open.insert(number, f.clone());
        Ok(f)
    }
}

impl PartStore for FileParts {
    fn display_name(&self) -> String {
        self.base.display().to_string()
    }
    fn part_name(&self, number: u32) -> String {
        part_path(&self.base, number).display().to_string()
    }
    fn highest_part(&self) -> io::Result<u32> {
        if !self.base.exists() {
            return Ok(0);
        }
        let dir = match self.base.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let stem = self
            .base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut highest = 1;
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(n) = part_number(&stem, &name) {
                highest = highest.max(n);
            }
        }
        Ok(highest)
    }
    fn part_size(&self, number: u32) -> io::Result<Option<u64>> {
        match fs::metadata(part_path(&self.base, number)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn read_part_at(&self, number: u32, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file(number)?.read_exact_at(buf, offset)
    }
}

/// An in-memory single-part image (tests, golden vectors).
pub struct MemParts {
    /// The bytes.
    pub data: Vec<u8>,
    /// Name for messages.
    pub name: String,
}

impl PartStore for MemParts {
    fn display_name(&self) -> String {
        self.name.clone()
    }
    fn part_name(&self, number: u32) -> String {
        format!("{} part {number}", self.name)
    }
    fn highest_part(&self) -> io::Result<u32> {
        Ok(1)
    }
    fn part_size(&self, number: u32) -> io::Result<Option<u64>> {
        Ok((number == 1).then_some(self.data.len() as u64))
    }
    fn read_part_at(&self, _number: u32, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.data.as_slice().read_exact_at(buf, offset)
    }
}

/// The logical stream of an image over its parts.
pub struct LogicalStream {
    store: Arc<dyn PartStore>,
    /// Logical start of each part, and one past the end.
    starts: Vec<u64>,
}

impl LogicalStream {
    /// Map the parts; checks every part after the first carries this image's part header.
    pub fn open(
        store: Arc<dyn PartStore>,
        image_id: &Id,
        split_size: u64,
        name: &str,
    ) -> Result<Self> {
        let io_err = |e| ImageError::io(format!("reading '{name}'"), e);
        let size1 = store.part_size(1).map_err(io_err)?.ok_or_else(|| {
            ImageError::io(
                format!("opening '{name}'"),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let mut starts = vec![0, size1];
        if split_size != 0 {
            if size1 > split_size {
                return Err(ImageError::corrupt(
                    name,
                    "part 1 is larger than the split size",
                ));
            }
            let highest = store.highest_part().map_err(io_err)?;
            for n in 2..=highest {
                let size =
                    store
                        .part_size(n)
                        .map_err(io_err)?
                        .ok_or_else(|| ImageError::MissingPart {
                            name: name.to_owned(),
                            number: n,
                            part: store.part_name(n),
                        })?;
                let prev_size = if n == 2 {
                    size1
                } else {
                    starts[n as usize - 1] - starts[n as usize - 2] + PART_HEADER_LEN
                };
                if prev_size != split_size {
                    return Err(ImageError::Truncated {
                        name: name.to_owned(),
                        detail: format!(
                            "part {} is {} bytes, not the split size {split_size}",
                            n - 1,
                            prev_size
                        ),
                    });
                }
                if size < PART_HEADER_LEN || size > split_size {
                    return Err(ImageError::corrupt(
                        name,
                        format!("part {n} has an invalid size {size}"),
                    ));
                }
                let mut ph = [0u8; PART_HEADER_LEN as usize];
                store.read_part_at(n, &mut ph, 0).map_err(io_err)?;
                let ok = ph[0..8] == PART_MAGIC
                    && u32_at(&ph, 60) == crc32c::crc32c(&ph[..60])
                    && u32_at(&ph, 8) == n
                    && ph[12..28] == image_id.0;
                if !ok {
                    return Err(ImageError::corrupt(
                        name,
                        format!("'{}' is not part {n} of this image", store.part_name(n)),
                    ));
                }
                let last = *starts.last().unwrap_or(&0);
                starts.push(last + size - PART_HEADER_LEN);
            }
        }
        Ok(Self { store, starts })
    }

    /// Number of parts found.
    pub fn part_count(&self) -> u32 {
        (self.starts.len() - 1) as u32
    }

    /// Name of a part.
    pub fn part_name(&self, number: u32) -> String {
        self.store.part_name(number)
    }
}

impl ReadAt for LogicalStream {
    fn size(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the image",
            ));
        }
        while !buf.is_empty() {
            let i = self.starts.partition_point(|&s| s <= offset) - 1;
            let within = offset - self.starts[i];
            let avail = self.starts[i + 1] - offset;
            let n = buf.len().min(usize::try_from(avail).unwrap_or(usize::MAX));
            let number = i as u32 + 1;
            let file_off = if number == 1 {
                within
            } else {
                within + PART_HEADER_LEN
            };
            let (head, rest) = buf.split_at_mut(n);
            self.store.read_part_at(number, head, file_off)?;
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
    fn the_part_naming_rule_reads_back_what_it_writes() {
        for n in [1, 2, 9, 10, 999, 1000, 12345] {
            let name = part_name("img.hfi", n);
            assert_eq!(part_number("img.hfi", &name), Some(n), "{name}");
            assert_eq!(is_later_part(&name), n > 1, "{name}");
            assert_eq!(
                part_path(Path::new("/b/img.hfi"), n),
                PathBuf::from(format!("/b/{name}"))
            );
        }
        assert_eq!(part_name("img.hfi", 2), "img.hfi.002");
        for other in [
            "img.hfi.02",
            "img.hfi.001",
            "img.hfi.00a",
            "img.hfi2.002",
            "other.002x",
        ] {
            assert_eq!(part_number("img.hfi", other), None, "{other}");
        }
        assert!(!is_later_part("img.hfi") && !is_later_part("vol-2026.hfi"));
    }
}
