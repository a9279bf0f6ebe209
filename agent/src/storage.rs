//! Images on storage targets: the image crate's sync sink, part store and locator traits
//! implemented over an async [`Target`], so `--output` and `--image` accept target URLs.
//!
//! Plain paths keep the local code path (direct I/O, fsync, rename). Credentials for URL
//! targets come from `--credentials-file FILE` or the environment (`HOLDFAST_TARGET_USER`,
//! `HOLDFAST_TARGET_PASSWORD`, `HOLDFAST_TARGET_KEY`, `HOLDFAST_TARGET_KEY_PASSPHRASE`,
//! `HOLDFAST_KNOWN_HOSTS`, `HOLDFAST_TARGET_CA`), never from the command line.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use holdfast_image::chain::Locator;
use holdfast_image::parts::{is_later_part, part_number, PartSink, PartStore};
use holdfast_image::ImageError;
use holdfast_proto::request::{HostKeyCheck, ObjectLockState, TargetProbe};
use holdfast_targets::body::{channel_body, BodySender};

use crate::readahead::ReadAhead;
use holdfast_targets::bandwidth::{Bandwidth, Throttle, Throttled};
use holdfast_targets::location::{Credentials, Location};
use holdfast_targets::s3config::ObjectLock;
use holdfast_targets::wrap::{Limited, Retry};
use holdfast_targets::{ObjectKey, Target, TargetError};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Where an image is: a local path, or a file in a target's folder.
pub enum Place {
    /// A local file.
    Local(PathBuf),
    /// A file `name` in `folder` of `target`.
    Remote(Remote),
}

/// An image file on a target.
#[derive(Clone)]
pub struct Remote {
    /// The target, rooted at the image's folder.
    pub target: Arc<dyn Target>,
    /// The file name of the image (part 1).
    pub name: String,
    /// For messages.
    pub display: String,
}

fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the I/O runtime")?;
    Ok(RT.get_or_init(|| rt))
}

/// Parse `spec` (a path or a target URL naming the image file).
pub fn place(spec: &Path, credentials_file: Option<&Path>) -> Result<Place> {
    place_locked(spec, credentials_file, None)
}

/// [`place`], every file written there locked for `lock` (S3 buckets with Object Lock only).
pub fn place_locked(
    spec: &Path,
    credentials_file: Option<&Path>,
    lock: Option<ObjectLock>,
) -> Result<Place> {
    let text = spec.to_string_lossy();
    let location = Location::parse(&text)?;
    if let (Location::Local { root }, None) = (&location, lock) {
        return Ok(Place::Local(root.clone()));
    }
    let (folder, name) = location.split_file()?;
    let (mut backend, caps) = limited(folder.open_locked(credentials(credentials_file)?, lock)?);
    if let Some(Some(throttle)) = THROTTLE.get() {
        backend = Arc::new(Throttled::new(backend, Arc::clone(throttle)));
    }
    let display = format!("{}/{name}", caps.display.trim_end_matches('/'));
    let target: Arc<dyn Target> = Arc::new(Retry::new(backend, 4, Duration::from_millis(200)));
    Ok(Place::Remote(Remote {
        target,
        name,
        display,
    }))
}

/// The bandwidth limits of this process's target transfers (all of them share one bucket).
static THROTTLE: OnceLock<Option<Arc<Throttle>>> = OnceLock::new();

/// The machine's limit set on its own (the daemon's environment, e.g. its systemd unit).
pub const AGENT_BANDWIDTH_ENV: &str = "HOLDFAST_AGENT_BANDWIDTH";
/// The machine's limit set on the console, passed by the daemon with each order.
pub const CONSOLE_BANDWIDTH_ENV: &str = "HOLDFAST_CONSOLE_BANDWIDTH";

/// Hold every transfer to and from targets to `target` (the command's `--bandwidth` or
/// `HOLDFAST_TARGET_BANDWIDTH`) and the machine's limits ([`AGENT_BANDWIDTH_ENV`],
/// [`CONSOLE_BANDWIDTH_ENV`]): the lowest of them at each moment.
pub fn set_bandwidth(target: Option<Bandwidth>) -> Result<()> {
    let mut limits: Vec<Bandwidth> = target.into_iter().collect();
    for var in [AGENT_BANDWIDTH_ENV, CONSOLE_BANDWIDTH_ENV] {
        if let Ok(text) = std::env::var(var) {
            if !text.trim().is_empty() {
                limits.push(text.parse().map_err(|e| anyhow!("{var}: {e}"))?);
            }
        }
    }
    let throttle = (!limits.is_empty()).then(|| Arc::new(Throttle::new(limits)));
    // Set once, before any target is opened.
    let _ = THROTTLE.set(throttle);
    Ok(())
}

/// Size of the test file.
const PROBE_BYTES: usize = 1 << 20;

/// Write a test file into the folder `folder` (a path or URL), read it back and compare,
/// delete it, and ask for the free space.
pub fn probe(folder: &str, credentials_file: Option<&Path>) -> Result<TargetProbe> {
    let mut tag = [0u8; 6];
    getrandom::getrandom(&mut tag).map_err(|e| anyhow!("no randomness: {e}"))?;
    let name: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let spec = holdfast_targets::location::join(folder, &format!(".holdfast-test-{name}"));
    let (target, file, shown): (Arc<dyn Target>, String, String) =
        match place(Path::new(&spec), credentials_file)? {
            Place::Local(path) => {
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let shown = dir.display().to_string();
                (
                    Arc::new(holdfast_targets::local::LocalTarget::new(dir)),
                    file,
                    shown,
                )
            }
            Place::Remote(r) => {
                let shown = r
                    .display
                    .rsplit_once('/')
                    .map_or(r.display.clone(), |(d, _)| d.to_owned());
                (r.target, r.name, shown)
            }
        };
    // The test got past the handshake only with the key it was given.
    let host_key = credentials(credentials_file)?
        .host_key
        .filter(|_| spec.starts_with("sftp://"))
        .map(|fingerprint| HostKeyCheck {
            fingerprint,
            confirmed: true,
        });
    let k = key(&file)?;
    let mut data = vec![0u8; PROBE_BYTES];
    getrandom::getrandom(&mut data).map_err(|e| anyhow!("no randomness: {e}"))?;
    runtime()?.block_on(async {
        let t0 = std::time::Instant::now();
        target
            .put_stream(&k, Box::new(std::io::Cursor::new(data.clone())), false)
            .await
            .with_context(|| format!("cannot write a test file to {shown}"))?;
        let write_ms = t0.elapsed().as_millis() as u64;
        let t1 = std::time::Instant::now();
        let back = target.get_range(&k, 0..PROBE_BYTES as u64).await;
        let read_ms = t1.elapsed().as_millis() as u64;
        let removed = target.delete(&k).await;
        let back = back.with_context(|| format!("cannot read the test file back from {shown}"))?;
        if back[..] != data[..] {
            bail!("the test file read back from {shown} differs from what was written");
        }
        removed.with_context(|| format!("cannot delete the test file from {shown}"))?;
        let free_bytes = target
            .free_space()
            .await
            .with_context(|| format!("cannot ask {shown} for its free space"))?;
        let object_lock = match Location::parse(folder)? {
            Location::S3(config) => {
                let bucket =
                    holdfast_targets::s3::S3Target::new(&config, credentials(credentials_file)?)?;
                let lock = bucket
                    .lock_configuration()
                    .await
                    .with_context(|| format!("cannot ask {shown} about Object Lock"))?;
                let default = lock
                    .as_ref()
                    .and_then(|l| l.rule.as_ref())
                    .and_then(|r| r.default_retention.as_ref());
                Some(Box::new(ObjectLockState {
                    enabled: lock.is_some(),
                    default_mode: default.and_then(|d| d.mode.clone()),
                    default_days: default
                        .and_then(|d| d.days.or(d.years.map(|y| y.saturating_mul(365)))),
                }))
            }
            _ => None,
        };
        Ok(TargetProbe {
            ok: true,
            target: shown,
            bytes: PROBE_BYTES as u64,
            write_ms,
            read_ms,
            free_bytes,
            host_key,
            object_lock,
        })
    })
}

/// The host key the SFTP server of `folder` offers, read from the handshake alone: a probe
/// that is not `ok` (nothing was written) and names the key, unconfirmed.
pub fn host_key(folder: &str) -> Result<TargetProbe> {
    let location = Location::parse(folder)?;
    let fingerprint = location
        .offered_host_key()
        .ok_or_else(|| anyhow!("only SFTP targets have a host key: '{folder}' is not sftp://"))??;
    Ok(TargetProbe {
        ok: false,
        target: folder.to_owned(),
        bytes: 0,
        write_ms: 0,
        read_ms: 0,
        free_bytes: None,
        host_key: Some(HostKeyCheck {
            fingerprint,
            confirmed: false,
        }),
        object_lock: None,
    })
}

/// Delete every part of the image `spec` names, the highest first; the number of parts.
/// An image that is not there is an error.
pub fn delete_image(spec: &Path, credentials_file: Option<&Path>) -> Result<u32> {
    match place(spec, credentials_file)? {
        Place::Local(base) => {
            let mut parts = 0;
            while holdfast_image::parts::part_path(&base, parts + 1).exists() {
                parts += 1;
            }
            if parts == 0 {
                bail!("there is no image '{}'", base.display());
            }
            for n in (1..=parts).rev() {
                let p = holdfast_image::parts::part_path(&base, n);
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot delete '{}'", p.display()))?;
            }
            Ok(parts)
        }
        Place::Remote(r) => {
            let list = r.block_on(r.target.list(None))??;
            let mut numbers: Vec<u32> = list
                .iter()
                .filter_map(|m| part_number(&r.name, &m.name))
                .collect();
            if !numbers.contains(&1) {
                bail!("there is no image '{}'", r.display);
            }
            numbers.sort_unstable_by(|a, b| b.cmp(a));
            for n in &numbers {
                let k = key(&r.part_name(*n))?;
                r.block_on(r.target.delete(&k))?
                    .with_context(|| format!("cannot delete part {n} of '{}'", r.display))?;
            }
            Ok(numbers.len() as u32)
        }
    }
}

/// Create the folder that holds `spec` (an image's path or URL), and any missing folder
/// above it, like `mkdir -p`.
pub fn create_folders(spec: &Path, credentials_file: Option<&Path>) -> Result<()> {
    let text = spec.to_string_lossy();
    match place(spec, credentials_file)? {
        Place::Local(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the folder '{}'", dir.display()))?;
            }
            Ok(())
        }
        Place::Remote(_) => match holdfast_targets::location::split_name(&text) {
            Some((folder, _)) => make_folder(&folder, credentials_file, 0),
            None => Ok(()),
        },
    }
}

/// Make `folder` (a target URL) in its parent, making the parent first when it is missing.
fn make_folder(folder: &str, credentials_file: Option<&Path>, depth: u32) -> Result<()> {
    // `place` reads the last segment as the name: the target is rooted at the parent.
    let Ok(Place::Remote(parent)) = place(Path::new(folder), credentials_file) else {
        // The root of the server or share: it exists or nothing can make it.
        return Ok(());
    };
    let dir = key(&parent.name)?;
    let made = parent.block_on(parent.target.mkdirs(&dir))?;
    match made {
        Ok(()) => Ok(()),
        Err(first) => {
            let up = holdfast_targets::location::split_name(folder).map(|(p, _)| p);
            match up {
                Some(up)
                    if depth < 32
                        && up.contains("://")
                        && make_folder(&up, credentials_file, depth + 1).is_ok() =>
                {
                    parent
                        .block_on(parent.target.mkdirs(&dir))?
                        .with_context(|| format!("cannot create the folder '{folder}'"))
                }
                _ => Err(anyhow!("cannot create the folder '{folder}': {first}")),
            }
        }
    }
}

/// A backend behind the connection cap it asks for.
fn limited<T: Target>(t: T) -> (Arc<dyn Target>, holdfast_targets::TargetCaps) {
    let caps = t.caps();
    (Arc::new(Limited::new(t, caps.max_connections)), caps)
}

/// Credentials from the file (`key = value` lines) and then the environment.
fn credentials(file: Option<&Path>) -> Result<Credentials> {
    let mut c = Credentials::default();
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read credentials file '{}'", f.display()))?,
        );
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| {
                anyhow!(
                    "credentials file '{}' line {}: expected key = value",
                    f.display(),
                    n + 1
                )
            })?;
            let v = v.trim().to_owned();
            match k.trim() {
                "user" => c.user = Some(v),
                "password" => c.password = Some(Zeroizing::new(v)),
                "private_key" => c.private_key = Some(PathBuf::from(v)),
                "passphrase" => c.passphrase = Some(Zeroizing::new(v)),
                "known_hosts" => c.known_hosts = Some(PathBuf::from(v)),
                "host_key" => c.host_key = Some(v),
                "ca_file" => c.ca_file = Some(PathBuf::from(v)),
                other => bail!(
                    "credentials file '{}' line {}: unknown key '{other}'",
                    f.display(),
                    n + 1
                ),
            }
        }
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    c.user = c.user.or_else(|| env("HOLDFAST_TARGET_USER"));
    c.password = c
        .password
        .or_else(|| env("HOLDFAST_TARGET_PASSWORD").map(Zeroizing::new));
    c.private_key = c
        .private_key
        .or_else(|| env("HOLDFAST_TARGET_KEY").map(PathBuf::from));
    c.passphrase = c
        .passphrase
        .or_else(|| env("HOLDFAST_TARGET_KEY_PASSPHRASE").map(Zeroizing::new));
    c.known_hosts = c
        .known_hosts
        .or_else(|| env("HOLDFAST_KNOWN_HOSTS").map(PathBuf::from));
    c.host_key = c.host_key.or_else(|| env("HOLDFAST_TARGET_HOST_KEY"));
    if c.known_hosts.is_none() {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        let dir = home.join(".config/holdfast");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        c.known_hosts = Some(dir.join("known_hosts"));
    }
    Ok(c)
}

fn key(name: &str) -> io::Result<ObjectKey> {
    ObjectKey::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

pub(crate) fn to_io(e: &TargetError) -> io::Error {
    let kind = match e {
        TargetError::NotFound { .. } => io::ErrorKind::NotFound,
        TargetError::Exists { .. } => io::ErrorKind::AlreadyExists,
        TargetError::Full { .. } => io::ErrorKind::StorageFull,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

impl Remote {
    fn block_on<F: std::future::Future>(&self, f: F) -> io::Result<F::Output> {
        Ok(runtime()
            .map_err(|e| io::Error::other(e.to_string()))?
            .block_on(f))
    }

    fn part_name(&self, number: u32) -> String {
        holdfast_image::parts::part_name(&self.name, number)
    }

    /// True when the image (part 1) exists.
    pub fn exists(&self) -> Result<bool> {
        let k = key(&self.name)?;
        match self.block_on(self.target.size(&k))? {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// A part's upload running on the runtime.
type Upload = JoinHandle<Result<u64, TargetError>>;

/// Writes an image's parts to a target. Each part is one all-or-nothing upload; the parts
/// this write completed are deleted again if the image is aborted (a part whose upload
/// failed never replaced anything, so an existing image of that name is left alone).
pub struct TargetSink {
    remote: Remote,
    overwrite: bool,
    current: Option<(u32, BodySender, Upload)>,
    /// Parts uploaded completely by this write.
    done: Vec<u32>,
    committed: bool,
}

impl TargetSink {
    /// Refuses at once when the image exists and `overwrite` is false.
    pub fn create(remote: Remote, overwrite: bool) -> Result<Self> {
        if !overwrite && remote.exists()? {
            return Err(crate::exit::Refused(format!(
                "'{}' already exists (use --overwrite to replace it)",
                remote.display
            ))
            .into());
        }
        Ok(Self {
            remote,
            overwrite,
            current: None,
            done: Vec::new(),
            committed: false,
        })
    }

    /// The error the current part's upload ended with, when it ended with one.
    fn upload_error(&mut self) -> Option<io::Error> {
        let (_, _, handle) = self.current.take()?;
        match self.remote.block_on(handle) {
            Ok(Ok(Err(e))) => Some(to_io(&e)),
            _ => None,
        }
    }
}

impl PartSink for TargetSink {
    fn begin_part(&mut self, number: u32) -> io::Result<()> {
        let k = key(&self.remote.part_name(number))?;
        let (tx, body) = channel_body(8);
        let target = self.remote.target.clone();
        let overwrite = self.overwrite;
        let handle = runtime()
            .map_err(|e| io::Error::other(e.to_string()))?
            .spawn(async move { target.put_stream(&k, body, overwrite).await });
        self.current = Some((number, tx, handle));
        Ok(())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let sent = match &self.current {
            Some((_, tx, _)) => tx.send(Bytes::copy_from_slice(buf)),
            None => return Err(io::Error::other("no part open")),
        };
        // An upload that stopped taking bytes failed: its own error says why.
        sent.map_err(|stopped| self.upload_error().unwrap_or(stopped))
    }
    fn end_part(&mut self) -> io::Result<()> {
        if let Some((number, tx, handle)) = self.current.take() {
            tx.finish();
            let r = self
                .remote
                .block_on(handle)?
                .map_err(|e| io::Error::other(e.to_string()))?;
            r.map_err(|e| to_io(&e))?;
            self.done.push(number);
        }
        Ok(())
    }
    fn commit(&mut self, part_count: u32) -> io::Result<()> {
        self.end_part()?;
        // Parts left over from an older, longer image of the same name.
        let mut n = part_count + 1;
        while let Ok(k) = key(&self.remote.part_name(n)) {
            match self.remote.block_on(self.remote.target.delete(&k))? {
                Ok(()) => n += 1,
                Err(_) => break,
            }
        }
        self.committed = true;
        Ok(())
    }
    fn abort(&mut self) {
        if let Some((_, tx, handle)) = self.current.take() {
            tx.fail("image writing was aborted");
            let _ = self.remote.block_on(handle);
        }
        for n in self.done.drain(..) {
            if let Ok(k) = key(&self.remote.part_name(n)) {
                let _ = self.remote.block_on(self.remote.target.delete(&k));
            }
        }
    }
    fn display_name(&self) -> String {
        self.remote.display.clone()
    }
}

impl Drop for TargetSink {
    fn drop(&mut self) {
        if !self.committed {
            self.abort();
        }
    }
}

/// Reads an image's parts from a target by byte ranges, reading ahead while reads run in
/// order.
pub struct TargetParts {
    remote: Remote,
    ahead: ReadAhead,
    /// Part sizes asked for so far (an image does not change while it is read).
    sizes: Mutex<HashMap<u32, Option<u64>>>,
}

impl TargetParts {
    /// The parts of the image `remote` names.
    pub fn new(remote: Remote) -> Self {
        Self {
            remote,
            ahead: ReadAhead::default(),
            sizes: Mutex::new(HashMap::new()),
        }
    }
}

impl PartStore for TargetParts {
    fn display_name(&self) -> String {
        self.remote.display.clone()
    }
    fn part_name(&self, number: u32) -> String {
        let base = self
            .remote
            .display
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or("");
        format!("{base}/{}", self.remote.part_name(number))
    }
    fn highest_part(&self) -> io::Result<u32> {
        let list = self
            .remote
            .block_on(self.remote.target.list(None))?
            .map_err(|e| to_io(&e))?;
        if !list.iter().any(|m| m.name == self.remote.name) {
            return Ok(0);
        }
        Ok(list
            .iter()
            .filter_map(|m| part_number(&self.remote.name, &m.name))
            .fold(1, u32::max))
    }
    fn part_size(&self, number: u32) -> io::Result<Option<u64>> {
        let known = |s: &Self| {
            s.sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&number)
                .copied()
        };
        if let Some(size) = known(self) {
            return Ok(size);
        }
        let k = key(&self.remote.part_name(number))?;
        let size = match self.remote.block_on(self.remote.target.size(&k))? {
            Ok(n) => Some(n),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(to_io(&e)),
        };
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, size);
        Ok(size)
    }
    fn read_part_at(&self, number: u32, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let k = key(&self.remote.part_name(number))?;
        if let Some(size) = self.part_size(number)? {
            let rt = runtime().map_err(|e| io::Error::other(e.to_string()))?;
            let part = (number, &k, size);
            if let Some(done) = self.ahead.read(rt, &self.remote.target, part, buf, offset) {
                return done;
            }
        }
        let data = self
            .remote
            .block_on(
                self.remote
                    .target
                    .get_range(&k, offset..offset + buf.len() as u64),
            )?
            .map_err(|e| to_io(&e))?;
        buf.copy_from_slice(&data);
        Ok(())
    }
}

/// Finds the images of a chain in the target folder.
pub struct TargetLocator(pub Remote);

impl Locator for TargetLocator {
    fn open(&self, name: &str) -> holdfast_image::Result<Arc<dyn PartStore>> {
        let mut r = self.0.clone();
        r.display = match self.0.display.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => name.to_owned(),
        };
        r.name = name.to_owned();
        Ok(Arc::new(TargetParts::new(r)))
    }
    fn candidates(&self) -> holdfast_image::Result<Vec<String>> {
        let list = self
            .0
            .block_on(self.0.target.list(None))
            .map_err(|e| ImageError::io("listing the target folder", e))?
            .map_err(|e| ImageError::io("listing the target folder", to_io(&e)))?;
        Ok(list
            .into_iter()
            .filter(|m| !m.is_dir)
            .map(|m| m.name)
            .filter(|n| !is_later_part(n))
            .collect())
    }
}
