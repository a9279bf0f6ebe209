//! LUKS volumes imaged through their opened mapping: the header and key slots as they are,
//! the contents decrypted, by the used blocks of the filesystem inside (so they compress, and
//! the image's own encryption protects them); restored by writing the header back, opening
//! the volume with its passphrase and writing the contents through the mapping.
//!
//! | | |
//! |---|---|
//! | passphrase or key file given, mapping already open (a mounted volume) | read through that mapping (the key itself is not used), held by the consistency method chosen for the mapping |
//! | passphrase or key file given, not open | opened read-only as `holdfast-luks-<pid>` for the run, closed after |
//! | none given | the volume is imaged whole (ciphertext), with a warning that says how to do better |
//! | unencrypted image | refused when a passphrase is given (the contents would be stored in clear); otherwise imaged whole |
//! | LUKS2 with integrity (dm-integrity), several segments | imaged whole: their data is not one decryptable range |
//!
//! The passphrase reaches `cryptsetup` on its standard input, never on a command line, and
//! is wiped from memory when dropped.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use holdfast_image::restore::{FileTarget, WriteAt};
use zeroize::Zeroizing;

use crate::device::{devno, read_trim};
use crate::exit::Refused;
use crate::secret::password;

/// Environment variable holding the LUKS passphrase (the daemon passes the job's here).
pub const PASSPHRASE_ENV: &str = "HOLDFAST_LUKS_PASSPHRASE";
/// Names of the mappings this agent opens: the prefix, then the process id.
const PREFIX: &str = "holdfast-luks-";

/// What opens a LUKS volume.
pub enum Key {
    /// A passphrase, passed on standard input.
    Passphrase(Zeroizing<Vec<u8>>),
    /// A key file, used as it is.
    File(PathBuf),
}

impl Key {
    /// From a key file, else a passphrase file's first line, else [`PASSPHRASE_ENV`].
    pub fn given(passphrase_file: Option<&Path>, key_file: Option<&Path>) -> Result<Option<Self>> {
        if let Some(f) = key_file {
            std::fs::metadata(f)
                .with_context(|| format!("cannot read the LUKS key file '{}'", f.display()))?;
            return Ok(Some(Self::File(f.to_owned())));
        }
        Ok(password(passphrase_file, PASSPHRASE_ENV)?.map(Self::Passphrase))
    }
}

/// `/sys/dev/block/M:m` of the block device at `path`.
fn sys_of(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    let (major, minor) = devno(meta.rdev());
    Some(PathBuf::from(format!("/sys/dev/block/{major}:{minor}")))
}

/// The device-mapper name of the crypt mapping open on `container`, if there is one.
pub fn mapping_on(container: &Path) -> Option<String> {
    let holders = std::fs::read_dir(sys_of(container)?.join("holders")).ok()?;
    holders.flatten().find_map(|h| {
        let dm = h.path().join("dm");
        read_trim(dm.join("uuid"))
            .filter(|u| u.starts_with("CRYPT-LUKS"))
            .and(read_trim(dm.join("name")))
    })
}

/// Where the encrypted data starts in the volume under the open mapping `name`, in bytes.
/// Refuses mappings whose data is not one decryptable range.
pub fn data_offset(name: &str) -> Result<u64> {
    // Without --showkeys the key field is blanked: nothing secret is read here.
    let table = crate::crypt::table(name, false)?;
    let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines[..] else {
        bail!(
            "the LUKS mapping {name} has {} segments; only one can be imaged decrypted",
            lines.len()
        );
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 || fields[2] != "crypt" {
        bail!("the mapping {name} is not one crypt segment");
    }
    if fields[8..].iter().any(|f| f.starts_with("integrity:")) {
        bail!(
            "the LUKS volume of {name} keeps integrity tags beside its data (dm-integrity); \
             only volumes without them can be imaged decrypted"
        );
    }
    let sectors: u64 = fields[7]
        .parse()
        .with_context(|| format!("the table of {name} has no data offset"))?;
    Ok(sectors * 512)
}

/// A LUKS volume's mapping to read its contents through: the one open already (a volume in
/// use), or one opened read-only for this run (closed when dropped).
pub struct Mapped {
    ours: Option<Opened>,
    name: String,
    /// Where the contents start in the volume, in bytes.
    pub data_offset: u64,
}

impl Mapped {
    /// The mapping of `container`, whose filesystem was found to be `fs_type`, opening it
    /// with `key` when it is not open yet.
    pub fn of(container: &Path, fs_type: Option<&str>, key: &Key) -> Result<Self> {
        if fs_type != Some("crypto_LUKS") {
            return Err(Refused(format!(
                "a LUKS passphrase or key file was given, but '{}' is not a LUKS volume ({})",
                container.display(),
                fs_type.map_or("no filesystem found".to_owned(), |t| format!(
                    "it holds {t}"
                ))
            ))
            .into());
        }
        let (ours, name) = match mapping_on(container) {
            Some(name) => (None, name),
            None => {
                let opened = Opened::open(container, key, true)?;
                let name = opened.name().to_owned();
                (Some(opened), name)
            }
        };
        let data_offset = data_offset(&name)?;
        Ok(Self {
            ours,
            name,
            data_offset,
        })
    }

    /// True when it was open before this run (its volume may be mounted).
    pub fn was_open(&self) -> bool {
        self.ours.is_none()
    }

    /// Its device.
    pub fn path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.name)
    }

    /// How the contents were read, for the report.
    pub fn description(&self) -> String {
        if self.was_open() {
            format!(
                "contents read decrypted through its open LUKS mapping {}",
                self.name
            )
        } else {
            "contents read decrypted through the LUKS volume opened read-only with its passphrase"
                .to_owned()
        }
    }
}

/// Check that `key` opens the LUKS header `header` (the bytes before the data, as imaged),
/// before anything is written: the header is tried in a private file of its own.
pub fn check_key(header: &[u8], key: &Key) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new("/run").join(format!("{PREFIX}header-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create '{}'", path.display()))?;
    struct Removed<'a>(&'a Path);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _removed = Removed(&path);
    file.write_all(header)
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    drop(file);
    let out = cryptsetup(&["open", "--test-passphrase"], key, &path)?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(Refused(
            "the LUKS passphrase (or key file) given does not open the volume this image holds; \
             nothing was written"
                .into(),
        )
        .into()),
        _ => bail!(
            "cannot check the LUKS passphrase against the image's header: cryptsetup: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// Run `cryptsetup ARGS --key-file … DEVICE [REST…]`, the passphrase on its standard input.
fn cryptsetup(args: &[&str], key: &Key, device: &Path) -> Result<std::process::Output> {
    cryptsetup_then(args, key, device, &[])
}

fn cryptsetup_then(
    args: &[&str],
    key: &Key,
    device: &Path,
    rest: &[&str],
) -> Result<std::process::Output> {
    let mut cmd = Command::new("cryptsetup");
    cmd.args(args);
    match key {
        Key::Passphrase(_) => cmd.args(["--key-file", "-"]),
        Key::File(f) => cmd.arg("--key-file").arg(f),
    };
    let mut child = cmd
        .arg(device)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run cryptsetup")?;
    if let (Key::Passphrase(p), Some(mut stdin)) = (key, child.stdin.take()) {
        // cryptsetup may refuse before reading: its exit status tells.
        let _ = stdin.write_all(p);
    }
    child.wait_with_output().context("cryptsetup")
}

/// A mapping this process opened: closed when dropped.
pub struct Opened {
    name: String,
}

impl Opened {
    /// Open `container` with `key` as `holdfast-luks-<pid>`, read-only or not.
    pub fn open(container: &Path, key: &Key, read_only: bool) -> Result<Self> {
        remove_stale();
        let name = format!("{PREFIX}{}", std::process::id());
        let mode: &[&str] = if read_only {
            &["open", "--readonly"]
        } else {
            &["open"]
        };
        let out = cryptsetup_then(mode, key, container, &[&name])?;
        match out.status.code() {
            Some(0) => Ok(Self { name }),
            Some(2) => Err(Refused(format!(
                "the LUKS passphrase (or key file) given does not open '{}'",
                container.display()
            ))
            .into()),
            _ => bail!(
                "cannot open the LUKS volume '{}': cryptsetup: {}",
                container.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Its device-mapper name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its device.
    pub fn path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.name)
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        close(&self.name);
    }
}

/// Close the mapping `name`, trying again for a moment while it is still in use (just
/// closed by a reader).
fn close(name: &str) {
    for _ in 0..10 {
        let closed = Command::new("cryptsetup")
            .args(["close", name])
            .output()
            .is_ok_and(|o| o.status.success());
        if closed {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Close mappings of ours whose process is gone (killed while imaging or restoring).
pub fn remove_stale() {
    for name in crate::crypt::mapping_names() {
        let pid = name.strip_prefix(PREFIX);
        if pid.is_some_and(crate::lvm::made_by_a_gone_process) {
            close(&name);
        }
    }
}

/// A restore target for an image of a LUKS volume's decrypted contents: the header goes
/// to the volume as it is, then the volume is opened with its key and the contents written
/// through the mapping.
pub struct EncryptedTarget<'a> {
    raw: &'a FileTarget,
    raw_path: PathBuf,
    header: Zeroizing<Vec<u8>>,
    data_offset: u64,
    data_size: u64,
    key: Key,
    opened: OnceLock<(Opened, FileTarget)>,
}

impl<'a> EncryptedTarget<'a> {
    /// `raw` is the restore target at `raw_path`; `header` the image's bytes before
    /// `data_offset`; `data_size` the mapping's size when imaged.
    pub fn new(
        raw: &'a FileTarget,
        raw_path: &Path,
        header: Vec<u8>,
        data_size: u64,
        key: Key,
    ) -> Self {
        Self {
            raw,
            raw_path: raw_path.to_owned(),
            data_offset: header.len() as u64,
            header: Zeroizing::new(header),
            data_size,
            key,
            opened: OnceLock::new(),
        }
    }

    /// Write the header and open the volume; checks the mapping is the one imaged.
    fn open(&self) -> Result<(Opened, FileTarget)> {
        self.raw
            .write_all_at(&self.header, 0)
            .and_then(|()| self.raw.sync())
            .with_context(|| {
                format!(
                    "cannot write the LUKS header to '{}'",
                    self.raw_path.display()
                )
            })?;
        let opened = Opened::open(&self.raw_path, &self.key, false)?;
        let offset = data_offset(opened.name())?;
        let size = crate::device::Device::inspect(&opened.path())?.size;
        if offset != self.data_offset || size < self.data_size {
            bail!(
                "the restored LUKS volume opens with its data at byte {offset} and {size} bytes of it; \
                 the image has them at {} and {} bytes",
                self.data_offset,
                self.data_size
            );
        }
        let target = FileTarget::open(&opened.path(), size)
            .with_context(|| format!("cannot open '{}'", opened.path().display()))?;
        Ok((opened, target))
    }

    /// Close the mapping (everything written through it flushed).
    pub fn finish(self) -> Result<()> {
        if let Some((opened, target)) = self.opened.into_inner() {
            target
                .sync()
                .context("cannot flush the restored LUKS volume's contents")?;
            drop(target);
            drop(opened);
        }
        Ok(())
    }
}

impl WriteAt for EncryptedTarget<'_> {
    fn size(&self) -> u64 {
        self.raw.size()
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let (head, rest) = split_at_boundary(buf, offset, self.data_offset);
        if !head.is_empty() {
            self.raw.write_all_at(head, offset)?;
        }
        if rest.is_empty() {
            return Ok(());
        }
        let at = offset.max(self.data_offset);
        let (_, inner) = self.opened.get().ok_or_else(|| {
            std::io::Error::other("the LUKS volume was not opened before writing")
        })?;
        // Past the mapping's end (a volume with data after its segment): as it is.
        let (inside, past) = split_at_boundary(rest, at, self.data_offset + inner.size());
        if !inside.is_empty() {
            inner.write_all_at(inside, at - self.data_offset)?;
        }
        if !past.is_empty() {
            self.raw.write_all_at(past, at + inside.len() as u64)?;
        }
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        if let Some((_, inner)) = self.opened.get() {
            inner.sync()?;
        }
        self.raw.sync()
    }

    fn before_first_write(&self) -> std::io::Result<()> {
        if self.opened.get().is_some() {
            return Ok(());
        }
        self.raw.before_first_write()?;
        let opened = self
            .open()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let _ = self.opened.set(opened);
        Ok(())
    }
}

/// `buf` written at `offset`: the part before `boundary` and the part from it on.
fn split_at_boundary(buf: &[u8], offset: u64, boundary: u64) -> (&[u8], &[u8]) {
    let before = boundary.saturating_sub(offset).min(buf.len() as u64) as usize;
    buf.split_at(before)
}

/// A restore target for only the decrypted contents of a LUKS volume's image: the header
/// is left out and the contents written from the start of `inner`.
pub struct ContentsTarget<'a> {
    inner: &'a FileTarget,
    data_offset: u64,
    /// Bytes of the volume after its contents (dropped too).
    past: u64,
}

impl<'a> ContentsTarget<'a> {
    /// The contents, imaged from `data_offset` on, go to `inner`; `past` bytes of the
    /// volume follow them.
    pub fn new(inner: &'a FileTarget, data_offset: u64, past: u64) -> Self {
        Self {
            inner,
            data_offset,
            past,
        }
    }
}

impl WriteAt for ContentsTarget<'_> {
    fn size(&self) -> u64 {
        self.data_offset + self.inner.size() + self.past
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let (_, rest) = split_at_boundary(buf, offset, self.data_offset);
        let at = offset.max(self.data_offset) - self.data_offset;
        // What lies past the contents (data after the volume's segment) is not theirs.
        let end = (at + rest.len() as u64).min(self.inner.size());
        if at >= end {
            return Ok(());
        }
        self.inner.write_all_at(&rest[..(end - at) as usize], at)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }

    fn before_first_write(&self) -> std::io::Result<()> {
        self.inner.before_first_write()
    }
}

/// Refuse to store a LUKS volume's contents decrypted in an image without encryption.
pub fn refuse_in_clear(source: &Path) -> Refused {
    Refused(format!(
        "the contents of the LUKS volume '{}' would be stored decrypted in an unencrypted \
         image: give the image a password (--encrypt), or image it without its passphrase \
         (whole, as ciphertext)",
        source.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_split_at_the_start_of_the_contents() {
        let buf = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(split_at_boundary(&buf, 0, 4), (&buf[..4], &buf[4..]));
        assert_eq!(split_at_boundary(&buf, 4, 4), (&buf[..0], &buf[..]));
        assert_eq!(split_at_boundary(&buf, 10, 4), (&buf[..0], &buf[..]));
        assert_eq!(split_at_boundary(&buf, 0, 100), (&buf[..], &buf[..0]));
    }
}
