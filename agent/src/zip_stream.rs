//! A ZIP archive written front to back onto a stream that cannot seek (a download): each
//! file's sizes and checksum follow its data in a data descriptor, and the central directory
//! at the end holds them all. Files are deflated; folders and symbolic links (their target
//! as contents) are stored, with their Unix mode, so `unzip` makes links again. ZIP64
//! records are written where sizes, offsets or the entry count need them, so archives of
//! any size open in every common reader.

use std::io::{self, Write};

use flate2::write::DeflateEncoder;
use flate2::Compression;

/// Signatures.
const LOCAL: u32 = 0x0403_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
/// Version needed: 4.5 (ZIP64); made by: Unix, 4.5.
const NEEDED: u16 = 45;
const MADE_BY: u16 = (3 << 8) | 45;
/// Data descriptor follows (bit 3); names are UTF-8 (bit 11).
const FLAGS: u16 = (1 << 3) | (1 << 11);
const STORED: u16 = 0;
const DEFLATED: u16 = 8;
/// Where a 32-bit field says "see the ZIP64 record".
const MAX32: u64 = 0xffff_ffff;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZipKind {
    File,
    Dir,
    Symlink,
}

/// One entry as the central directory remembers it.
struct Written {
    name: Vec<u8>,
    method: u16,
    dos_time: u16,
    dos_date: u16,
    mtime: i64,
    crc: u32,
    compressed: u64,
    size: u64,
    offset: u64,
    /// Unix mode with file type bits.
    mode: u32,
    zip64: bool,
}

/// Counts what passes through to the stream.
struct Counted<W> {
    inner: W,
    at: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A ZIP archive being written to `W`.
pub struct ZipStream<W: Write> {
    out: Counted<W>,
    entries: Vec<Written>,
}

/// Year, month, day, hour, minute, second (UTC) of Unix time `t`.
fn civil(t: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400) as u32;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
}

/// MS-DOS time and date of Unix time `t` (UTC; clamped to 1980–2107, the range DOS dates
/// hold). The exact time travels in the extended timestamp field.
fn dos_time(t: i64) -> (u16, u16) {
    let (y, mo, d, h, mi, s) = civil(t);
    if y < 1980 {
        return (0, (1 << 5) | 1);
    }
    let y = y.min(2107) as u16 - 1980;
    (
        ((h as u16) << 11) | ((mi as u16) << 5) | (s as u16 / 2),
        (y << 9) | ((mo as u16) << 5) | d as u16,
    )
}

/// The "UT" extended timestamp field: modification time, Unix seconds.
fn timestamp_field(mtime: i64) -> [u8; 9] {
    let mut f = [0u8; 9];
    f[..2].copy_from_slice(&0x5455u16.to_le_bytes());
    f[2..4].copy_from_slice(&5u16.to_le_bytes());
    f[4] = 1;
    let t = mtime.clamp(0, i64::from(u32::MAX)) as u32;
    f[5..].copy_from_slice(&t.to_le_bytes());
    f
}

impl<W: Write> ZipStream<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: Counted { inner: out, at: 0 },
            entries: Vec::new(),
        }
    }

    /// Add one entry named `name` (`/`-separated; a folder's name ends with `/`), whose
    /// contents `data` writes into the writer it is given. `size_hint` is the size of the
    /// contents as known before (a file's length): entries that may reach 4 GiB get ZIP64
    /// fields from the start.
    pub fn add(
        &mut self,
        name: &str,
        kind: ZipKind,
        mode: u32,
        mtime: i64,
        size_hint: u64,
        data: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let method = if kind == ZipKind::File {
            DEFLATED
        } else {
            STORED
        };
        // Deflate can grow incompressible data a little: leave room for it.
        let zip64 = size_hint >= MAX32 - (MAX32 >> 4);
        let (dos_time, dos_date) = dos_time(mtime);
        let offset = self.out.at;
        let type_bits = match kind {
            ZipKind::File => 0o100_000,
            ZipKind::Dir => 0o040_000,
            ZipKind::Symlink => 0o120_000,
        };
        let mut h = Vec::with_capacity(64 + name.len());
        h.extend_from_slice(&LOCAL.to_le_bytes());
        h.extend_from_slice(&NEEDED.to_le_bytes());
        h.extend_from_slice(&FLAGS.to_le_bytes());
        h.extend_from_slice(&method.to_le_bytes());
        h.extend_from_slice(&dos_time.to_le_bytes());
        h.extend_from_slice(&dos_date.to_le_bytes());
        h.extend_from_slice(&[0; 4]); // crc: in the descriptor
        let size_field: u32 = if zip64 { u32::MAX } else { 0 };
        h.extend_from_slice(&size_field.to_le_bytes());
        h.extend_from_slice(&size_field.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        let extra_len = 9 + if zip64 { 20 } else { 0 };
        h.extend_from_slice(&(extra_len as u16).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h.extend_from_slice(&timestamp_field(mtime));
        if zip64 {
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&16u16.to_le_bytes());
            h.extend_from_slice(&[0; 16]);
        }
        self.out.write_all(&h)?;

        let mut sink = Checksummed {
            inner: &mut self.out,
            crc: crc32fast::Hasher::new(),
            size: 0,
        };
        let start = sink.inner.at;
        if method == DEFLATED {
            let mut enc = DeflateEncoder::new(&mut sink, Compression::fast());
            let mut plain = Checksummed {
                inner: &mut enc,
                crc: crc32fast::Hasher::new(),
                size: 0,
            };
            data(&mut plain)?;
            let (crc, size) = (plain.crc.clone().finalize(), plain.size);
            enc.finish()?;
            let compressed = sink.inner.at - start;
            self.finish_entry(
                name,
                method,
                (dos_time, dos_date),
                mtime,
                crc,
                compressed,
                size,
                offset,
                type_bits | mode,
                zip64,
            )
        } else {
            data(&mut sink)?;
            let (crc, size) = (sink.crc.clone().finalize(), sink.size);
            self.finish_entry(
                name,
                method,
                (dos_time, dos_date),
                mtime,
                crc,
                size,
                size,
                offset,
                type_bits | mode,
                zip64,
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_entry(
        &mut self,
        name: &str,
        method: u16,
        (dos_time, dos_date): (u16, u16),
        mtime: i64,
        crc: u32,
        compressed: u64,
        size: u64,
        offset: u64,
        mode: u32,
        zip64: bool,
    ) -> io::Result<()> {
        if !zip64 && (compressed >= MAX32 || size >= MAX32) {
            return Err(io::Error::other(format!(
                "'{name}' grew past 4 GiB while it was archived"
            )));
        }
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&DESCRIPTOR.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        if zip64 {
            d.extend_from_slice(&compressed.to_le_bytes());
            d.extend_from_slice(&size.to_le_bytes());
        } else {
            d.extend_from_slice(&(compressed as u32).to_le_bytes());
            d.extend_from_slice(&(size as u32).to_le_bytes());
        }
        self.out.write_all(&d)?;
        self.entries.push(Written {
            name: name.as_bytes().to_vec(),
            method,
            dos_time,
            dos_date,
            mtime,
            crc,
            compressed,
            size,
            offset,
            mode,
            zip64: zip64 || offset >= MAX32,
        });
        Ok(())
    }

    /// Write the central directory; the stream it was writing to.
    pub fn finish(mut self) -> io::Result<W> {
        let cd_start = self.out.at;
        for e in &self.entries {
            let mut c = Vec::with_capacity(80 + e.name.len());
            c.extend_from_slice(&CENTRAL.to_le_bytes());
            c.extend_from_slice(&MADE_BY.to_le_bytes());
            c.extend_from_slice(&NEEDED.to_le_bytes());
            c.extend_from_slice(&FLAGS.to_le_bytes());
            c.extend_from_slice(&e.method.to_le_bytes());
            c.extend_from_slice(&e.dos_time.to_le_bytes());
            c.extend_from_slice(&e.dos_date.to_le_bytes());
            c.extend_from_slice(&e.crc.to_le_bytes());
            let mut z64 = Vec::new();
            let mut field32 = |v: u64| {
                if e.zip64 {
                    z64.extend_from_slice(&v.to_le_bytes());
                    u32::MAX
                } else {
                    v as u32
                }
            };
            // In the ZIP64 field the order is: size, compressed size, offset.
            let size = field32(e.size);
            let compressed = field32(e.compressed);
            let offset = field32(e.offset);
            c.extend_from_slice(&compressed.to_le_bytes());
            c.extend_from_slice(&size.to_le_bytes());
            c.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            let extra_len = 9 + if e.zip64 { 4 + z64.len() } else { 0 };
            c.extend_from_slice(&(extra_len as u16).to_le_bytes());
            c.extend_from_slice(&0u16.to_le_bytes()); // comment
            c.extend_from_slice(&0u16.to_le_bytes()); // disk
            c.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            c.extend_from_slice(&(e.mode << 16).to_le_bytes());
            c.extend_from_slice(&offset.to_le_bytes());
            c.extend_from_slice(&e.name);
            c.extend_from_slice(&timestamp_field(e.mtime));
            if e.zip64 {
                c.extend_from_slice(&1u16.to_le_bytes());
                c.extend_from_slice(&(z64.len() as u16).to_le_bytes());
                c.extend_from_slice(&z64);
            }
            self.out.write_all(&c)?;
        }
        let cd_end = self.out.at;
        let count = self.entries.len() as u64;
        let cd_size = cd_end - cd_start;
        let needs64 = count >= 0xffff || cd_start >= MAX32 || cd_size >= MAX32;
        let mut t = Vec::with_capacity(98);
        if needs64 {
            t.extend_from_slice(&END64.to_le_bytes());
            t.extend_from_slice(&44u64.to_le_bytes());
            t.extend_from_slice(&MADE_BY.to_le_bytes());
            t.extend_from_slice(&NEEDED.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&count.to_le_bytes());
            t.extend_from_slice(&cd_size.to_le_bytes());
            t.extend_from_slice(&cd_start.to_le_bytes());
            t.extend_from_slice(&LOCATOR64.to_le_bytes());
            t.extend_from_slice(&0u32.to_le_bytes());
            t.extend_from_slice(&cd_end.to_le_bytes());
            t.extend_from_slice(&1u32.to_le_bytes());
        }
        let count16 = count.min(0xffff) as u16;
        t.extend_from_slice(&END.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        t.extend_from_slice(&count16.to_le_bytes());
        t.extend_from_slice(&count16.to_le_bytes());
        t.extend_from_slice(&(cd_size.min(MAX32) as u32).to_le_bytes());
        t.extend_from_slice(&(cd_start.min(MAX32) as u32).to_le_bytes());
        t.extend_from_slice(&0u16.to_le_bytes());
        self.out.write_all(&t)?;
        self.out.flush()?;
        Ok(self.out.inner)
    }
}

/// Takes the CRC-32 and length of what passes through.
struct Checksummed<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    crc: crc32fast::Hasher,
    size: u64,
}

impl<W: Write + ?Sized> Write for Checksummed<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times_are_civil_utc() {
        // 2026-12-05 02:36:12 UTC
        assert_eq!(civil(1_796_438_172), (2026, 12, 5, 2, 36, 12));
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        let (t, d) = dos_time(1_796_438_172);
        assert_eq!(d >> 9, 46);
        assert_eq!((d >> 5) & 0xf, 12);
        assert_eq!(d & 0x1f, 5);
        assert_eq!(t >> 11, 2);
        assert_eq!((t >> 5) & 0x3f, 36);
        assert_eq!(t & 0x1f, 6);
        assert_eq!(dos_time(0), (0, 33));
    }

    /// The archive read back by Python's `zipfile` (an independent reader) and `unzip -t`.
    #[test]
    fn archives_read_back_in_other_readers() {
        let mut z = ZipStream::new(Vec::new());
        let big: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        z.add("dir/", ZipKind::Dir, 0o750, 1_700_000_000, 0, |_| Ok(()))
            .expect("dir");
        z.add(
            "dir/big.bin",
            ZipKind::File,
            0o640,
            1_700_000_001,
            big.len() as u64,
            |w| w.write_all(&big),
        )
        .expect("file");
        z.add("dir/empty", ZipKind::File, 0o600, 1_700_000_002, 0, |_| {
            Ok(())
        })
        .expect("empty");
        z.add("dir/link", ZipKind::Symlink, 0o777, 1_700_000_003, 7, |w| {
            w.write_all(b"big.bin")
        })
        .expect("link");
        z.add("héllo.txt", ZipKind::File, 0o644, 1_700_000_004, 5, |w| {
            w.write_all(b"hello")
        })
        .expect("utf-8 name");
        let bytes = z.finish().expect("finish");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.zip");
        std::fs::write(&path, &bytes).expect("write");
        std::fs::write(dir.path().join("big.bin"), &big).expect("write");
        let script = r#"
import sys, zipfile, zlib
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None
for i in z.infolist():
    print(i.filename, oct(i.external_attr >> 16), i.file_size, i.compress_type, zlib.crc32(z.read(i)), i.date_time)
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .output()
            .expect("python3");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let crc = |b: &[u8]| crc32fast::hash(b);
        let expect = format!(
            "dir/ 0o40750 0 0 0 (2023, 11, 14, 22, 13, 20)\n\
             dir/big.bin 0o100640 {} 8 {} (2023, 11, 14, 22, 13, 20)\n\
             dir/empty 0o100600 0 8 0 (2023, 11, 14, 22, 13, 22)\n\
             dir/link 0o120777 7 0 {} (2023, 11, 14, 22, 13, 22)\n\
             héllo.txt 0o100644 5 8 {} (2023, 11, 14, 22, 13, 24)\n",
            big.len(),
            crc(&big),
            crc(b"big.bin"),
            crc(b"hello"),
        );
        assert_eq!(text, expect);
        if let Ok(o) = std::process::Command::new("unzip")
            .arg("-tq")
            .arg(&path)
            .output()
        {
            assert!(o.status.success(), "unzip -t: {o:?}");
        }
    }
}
