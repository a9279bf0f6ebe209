//! Device-mapper through its ioctls (`/dev/mapper/control`).
//!
//! The agent swaps a live mapping's table to take a snapshot of it. While that mapping is
//! suspended, nothing may wait on it: starting a program (`dmsetup`) whose binary or libraries
//! sit on the suspended filesystem would hang for ever. So the swap is made with the kernel's
//! ioctls, from memory. The requests are laid out byte by byte (`include/uapi/linux/
//! dm-ioctl.h`, interface version 4); the single `unsafe` call is [`ioctl`], whose buffer is
//! checked to hold what the request declares.
//!
//! Every buffer that passes a table is wiped when dropped: a dm-crypt table holds its key.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use zeroize::Zeroizing;

/// What a device-mapper request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/mapper/control (is device-mapper, `dm_mod`, loaded?): {0}")]
    Control(io::Error),
    #[error("device-mapper cannot {op} '{name}': {cause}")]
    Request {
        op: &'static str,
        name: String,
        /// In the message, not also a `source` (a chain's report would say it twice).
        cause: io::Error,
    },
    #[error("'{0}' is not a device-mapper name (at most 127 bytes, no '/')")]
    Name(String),
    #[error("device-mapper answered {0} with a malformed reply")]
    Malformed(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One segment of a table: `length` sectors from `start`, of target `kind` with `params`.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    /// For a `crypt` target, holds the key: wiped on drop, never printed by `Debug`.
    pub params: Zeroizing<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} …", self.start, self.length, self.kind)
    }
}

impl Target {
    pub fn new(start: u64, length: u64, kind: &str, params: String) -> Self {
        Self {
            start,
            length,
            kind: kind.to_owned(),
            params: Zeroizing::new(params),
        }
    }
}

/// A device's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Its device number (major, minor).
    pub dev: (u32, u32),
    /// How many openers it has.
    pub open_count: i32,
    pub suspended: bool,
    /// Whether a table is loaded but not yet live.
    pub inactive_table: bool,
}

/// Flags of `struct dm_ioctl` (`DM_*_FLAG`).
mod flag {
    pub const READONLY: u32 = 1 << 0;
    pub const SUSPEND: u32 = 1 << 1;
    pub const STATUS_TABLE: u32 = 1 << 4;
    pub const INACTIVE_PRESENT: u32 = 1 << 6;
    pub const BUFFER_FULL: u32 = 1 << 8;
    pub const SKIP_LOCKFS: u32 = 1 << 10;
    pub const QUERY_INACTIVE_TABLE: u32 = 1 << 12;
    pub const SECURE_DATA: u32 = 1 << 15;
}

/// Request numbers (`DM_*_CMD`).
mod cmd {
    pub const VERSION: u8 = 0;
    pub const LIST_DEVICES: u8 = 2;
    pub const DEV_CREATE: u8 = 3;
    pub const DEV_REMOVE: u8 = 4;
    pub const DEV_SUSPEND: u8 = 6;
    pub const DEV_STATUS: u8 = 7;
    pub const TABLE_LOAD: u8 = 9;
    pub const TABLE_CLEAR: u8 = 10;
    pub const TABLE_STATUS: u8 = 12;
}

/// `sizeof(struct dm_ioctl)`: where the data of a request starts.
const HEADER: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const SPEC: usize = 40;
const NAME_AT: usize = 48;
const NAME_LEN: usize = 128;
const UUID_AT: usize = NAME_AT + NAME_LEN;
const UUID_LEN: usize = 129;
/// Enough for the replies we ask for; a longer one is asked again with a larger buffer.
const FIRST_BUFFER: usize = 16 << 10;

/// `_IOWR(type, nr, size)`.
const fn iowr(kind: u8, nr: u8, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((kind as u64) << 8) | nr as u64
}

/// The open control device.
pub struct Control {
    file: File,
}

impl Control {
    pub fn open() -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .map_err(Error::Control)?;
        let c = Self { file };
        // Checks that the kernel speaks interface version 4.
        c.request(cmd::VERSION, "version", "", 0, &[])?;
        Ok(c)
    }

    /// Send request `nr` about device `name` with `flags` and `data` after the header; the
    /// reply (header and data), asked again with a larger buffer while it did not fit.
    fn request(
        &self,
        nr: u8,
        op: &'static str,
        name: &str,
        flags: u32,
        data: &[(u64, u64, &str, &str)],
    ) -> Result<Reply> {
        self.request_with(nr, op, name, None, flags, data)
    }

    fn request_with(
        &self,
        nr: u8,
        op: &'static str,
        name: &str,
        uuid: Option<&str>,
        flags: u32,
        targets: &[(u64, u64, &str, &str)],
    ) -> Result<Reply> {
        if name.len() >= NAME_LEN || name.contains('/') {
            return Err(Error::Name(name.to_owned()));
        }
        let fail = |cause| Error::Request {
            op,
            name: name.to_owned(),
            cause,
        };
        let mut body = Zeroizing::new(Vec::new());
        for &(start, length, kind, params) in targets {
            if kind.len() >= 16 {
                return Err(fail(io::Error::from(io::ErrorKind::InvalidInput)));
            }
            // Each spec is padded to 8 bytes; `next` is its length.
            let size = (SPEC + params.len() + 1).next_multiple_of(8);
            let at = body.len();
            body.resize(at + size, 0);
            put64(&mut body, at, start);
            put64(&mut body, at + 8, length);
            put32(&mut body, at + 20, size as u32);
            body[at + 24..at + 24 + kind.len()].copy_from_slice(kind.as_bytes());
            body[at + SPEC..at + SPEC + params.len()].copy_from_slice(params.as_bytes());
        }
        let mut size = (HEADER + body.len()).max(FIRST_BUFFER);
        loop {
            let mut buf = Zeroizing::new(vec![0u8; size]);
            put32(&mut buf, 0, 4);
            put32(&mut buf, 12, size as u32);
            put32(&mut buf, 16, HEADER as u32);
            put32(&mut buf, 20, targets.len() as u32);
            put32(&mut buf, 28, flags);
            buf[NAME_AT..NAME_AT + name.len()].copy_from_slice(name.as_bytes());
            if let Some(uuid) = uuid {
                let uuid = &uuid.as_bytes()[..uuid.len().min(UUID_LEN - 1)];
                buf[UUID_AT..UUID_AT + uuid.len()].copy_from_slice(uuid);
            }
            buf[HEADER..HEADER + body.len()].copy_from_slice(&body);
            ioctl(&self.file, iowr(0xfd, nr, HEADER), &mut buf).map_err(fail)?;
            let reply = Reply { buf };
            if reply.flags() & flag::BUFFER_FULL != 0 && size < (64 << 20) {
                size *= 4;
                continue;
            }
            return Ok(reply);
        }
    }

    /// Create device `name` (with no table: suspended), its uuid set when given.
    pub fn create(&self, name: &str, uuid: Option<&str>) -> Result<(u32, u32)> {
        let r = self.request_with(cmd::DEV_CREATE, "create", name, uuid, 0, &[])?;
        Ok(r.dev())
    }

    /// Load `table` as `name`'s inactive table: live at the next [`Control::resume`].
    pub fn load(&self, name: &str, table: &[Target], read_only: bool) -> Result<()> {
        let specs: Vec<(u64, u64, &str, &str)> = table
            .iter()
            .map(|t| (t.start, t.length, t.kind.as_str(), t.params.as_str()))
            .collect();
        let flags = flag::SECURE_DATA | if read_only { flag::READONLY } else { 0 };
        self.request(cmd::TABLE_LOAD, "load a table into", name, flags, &specs)?;
        Ok(())
    }

    /// Drop `name`'s inactive table.
    pub fn clear(&self, name: &str) -> Result<()> {
        self.request(
            cmd::TABLE_CLEAR,
            "clear the inactive table of",
            name,
            0,
            &[],
        )?;
        Ok(())
    }

    /// Suspend `name`: wait for its I/O in flight; with `freeze`, first freeze the filesystem
    /// mounted on it (as `dmsetup suspend` does by default).
    pub fn suspend(&self, name: &str, freeze: bool) -> Result<()> {
        let flags = flag::SUSPEND | if freeze { 0 } else { flag::SKIP_LOCKFS };
        self.request(cmd::DEV_SUSPEND, "suspend", name, flags, &[])?;
        Ok(())
    }

    /// Resume `name`, making its inactive table live when one is loaded.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.request(cmd::DEV_SUSPEND, "resume", name, 0, &[])?;
        Ok(())
    }

    /// Remove device `name` (refused while it is open).
    pub fn remove(&self, name: &str) -> Result<()> {
        self.request(cmd::DEV_REMOVE, "remove", name, 0, &[])?;
        Ok(())
    }

    /// `name`'s state; `None` when there is no such device.
    pub fn info(&self, name: &str) -> Result<Option<Info>> {
        match self.request(cmd::DEV_STATUS, "read the state of", name, 0, &[]) {
            Ok(r) => Ok(Some(Info {
                dev: r.dev(),
                open_count: r.i32_at(24),
                suspended: r.flags() & flag::SUSPEND != 0,
                inactive_table: r.flags() & flag::INACTIVE_PRESENT != 0,
            })),
            Err(Error::Request { cause, .. }) if cause.raw_os_error() == Some(libc::ENXIO) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// `name`'s live table, keys included.
    pub fn table(&self, name: &str) -> Result<Vec<Target>> {
        let flags = flag::STATUS_TABLE | flag::SECURE_DATA;
        self.request(cmd::TABLE_STATUS, "read the table of", name, flags, &[])?
            .targets()
    }

    /// `name`'s inactive table (loaded, not yet live), keys included; empty when none.
    pub fn inactive_table(&self, name: &str) -> Result<Vec<Target>> {
        let flags = flag::STATUS_TABLE | flag::SECURE_DATA | flag::QUERY_INACTIVE_TABLE;
        self.request(
            cmd::TABLE_STATUS,
            "read the inactive table of",
            name,
            flags,
            &[],
        )?
        .targets()
    }

    /// The status line of each of `name`'s live targets.
    pub fn status(&self, name: &str) -> Result<Vec<Target>> {
        self.request(cmd::TABLE_STATUS, "read the status of", name, 0, &[])?
            .targets()
    }

    /// Every device: its name and number.
    pub fn list(&self) -> Result<Vec<(String, (u32, u32))>> {
        let r = self.request(cmd::LIST_DEVICES, "list", "", 0, &[])?;
        let mut out = Vec::new();
        let mut at = r.data_start();
        loop {
            let dev = r.u64_at(at).ok_or(Error::Malformed("list"))?;
            if dev == 0 {
                return Ok(out);
            }
            let next = r.u32_at(at + 8).ok_or(Error::Malformed("list"))? as usize;
            let name = r.c_str(at + 12).ok_or(Error::Malformed("list"))?;
            out.push((name, decode_dev(dev)));
            if next == 0 {
                return Ok(out);
            }
            at += next;
        }
    }
}

/// A request's buffer after the kernel answered.
struct Reply {
    buf: Zeroizing<Vec<u8>>,
}

impl Reply {
    fn u32_at(&self, at: usize) -> Option<u32> {
        let b = self.buf.get(at..at + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    }
    fn u64_at(&self, at: usize) -> Option<u64> {
        let b = self.buf.get(at..at + 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    }
    fn i32_at(&self, at: usize) -> i32 {
        self.u32_at(at).unwrap_or(0) as i32
    }
    fn flags(&self) -> u32 {
        self.u32_at(28).unwrap_or(0)
    }
    fn dev(&self) -> (u32, u32) {
        decode_dev(self.u64_at(40).unwrap_or(0))
    }
    fn data_start(&self) -> usize {
        self.u32_at(16).unwrap_or(HEADER as u32) as usize
    }
    /// The NUL-terminated text at `at`.
    fn c_str(&self, at: usize) -> Option<String> {
        let rest = self.buf.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// The target specs of a table-status reply (`next` counts from the first spec).
    fn targets(&self) -> Result<Vec<Target>> {
        let bad = || Error::Malformed("table status");
        let count = self.u32_at(20).ok_or_else(bad)?;
        let first = self.data_start();
        let mut at = first;
        let mut out = Vec::new();
        for _ in 0..count {
            let start = self.u64_at(at).ok_or_else(bad)?;
            let length = self.u64_at(at + 8).ok_or_else(bad)?;
            let next = self.u32_at(at + 20).ok_or_else(bad)? as usize;
            let kind = self.c_str(at + 24).ok_or_else(bad)?;
            let rest = self.buf.get(at + SPEC..).ok_or_else(bad)?;
            let end = rest.iter().position(|&b| b == 0).ok_or_else(bad)?;
            let params = Zeroizing::new(String::from_utf8_lossy(&rest[..end]).into_owned());
            out.push(Target {
                start,
                length,
                kind,
                params,
            });
            at = first + next;
        }
        Ok(out)
    }
}

/// The kernel's `huge_encode_dev` undone.
fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `ioctl(fd, request, buf)` with a device-mapper request, after checking that `buf` holds
/// everything the kernel will read or write for it.
#[allow(unsafe_code)]
fn ioctl(fd: &File, request: u64, buf: &mut [u8]) -> io::Result<()> {
    let data_size = buf
        .get(12..16)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes);
    if buf.len() < HEADER || data_size != Some(buf.len() as u32) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: `buf` is valid for reads and writes of `buf.len()` bytes during the call, and
    // holds the whole `struct dm_ioctl` and the data its `data_size` declares (checked
    // above), which is all the kernel reads or writes; it keeps no pointer to it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, buf.as_mut_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        // From <linux/dm-ioctl.h>.
        assert_eq!(iowr(0xfd, cmd::VERSION, HEADER), 0xc138_fd00);
        assert_eq!(iowr(0xfd, cmd::TABLE_STATUS, HEADER), 0xc138_fd0c);
    }

    #[test]
    fn device_numbers_are_decoded() {
        assert_eq!(decode_dev(0xfe03), (254, 3));
        // Minor 300: its high bits go above the major.
        assert_eq!(decode_dev((1 << 20) | (254 << 8) | 0x2c), (254, 300));
    }

    #[test]
    fn a_buffer_too_small_for_its_request_is_never_passed() {
        let file = File::open("/dev/null").expect("open");
        let mut short = vec![0u8; HEADER];
        put32(&mut short, 12, 4096);
        let e = ioctl(&file, 0, &mut short).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
