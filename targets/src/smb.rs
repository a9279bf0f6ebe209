//! SMB 2/3 with the pure-Rust `smb` crate (async, negotiates SMB 3.1.1 with signing, and
//! encryption when the server asks for it).
//!
//! One client per target holds one connection and session; requests are multiplexed on it,
//! with Nagle's algorithm off, and it is replaced by a new login every 128 MiB (see
//! `CREDITS_BACKLOG` for why).
//! A single outstanding read is slow (each round trip waits for the server), so reads and
//! writes keep `DEPTH` (16) requests in flight. A connection that broke is dropped and the next
//! operation logs in again, so the [`Retry`](crate::wrap::Retry) wrapper can recover.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::smb::{
    Client, ClientConfig, CreateDisposition, CreateOptions, Directory, File, FileAccessMask,
    FileAttributes, FileCreateArgs, FileDirectoryInformation, FileDispositionInformation,
    FileFsFullSizeInformation, FileRenameInformation, GetLen as _, Resource, UncPath,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::blocking::{body_error, chunks, pump, Chunks};
use crate::error::TargetError;
use crate::location::Credentials;
use crate::{
    is_temp_name, is_temp_name_for, temp_name, Body, ObjectKey, ObjectMeta, Target, TargetCaps,
};

/// Requests kept in flight per transfer.
const DEPTH: usize = 16;
/// Largest request we send; the server's negotiated limit may be lower. With the `smb`
/// crate 0.12.1 against Samba 4.17, uploads with 1 MiB writes in flight stalled now and then
/// (responses stopped coming); 128–512 KiB never did in the same runs, and 16 × 256 KiB
/// in flight is as fast as any setting measured.
const MAX_CHUNK: u32 = 256 << 10;
/// SMB charges one credit per 64 KiB of a request.
const CREDIT_BYTES: usize = 64 << 10;
/// How credits go wrong with the `smb` crate (0.12.1), and what the next three settings do
/// about it: a server grants credits for a request that goes "pending" (Samba: any read or
/// write not done within half a millisecond, so most of them on a busy disk) in its interim
/// response, and none in the final one; the crate only looks at the final one. Each pending
/// request so loses its credits (one per 64 KiB) twice over:
/// - on the client, whose own count shrinks until no request can be sent and the transfer
///   hangs: after [`CREDITS_BACKLOG`] / 4 pending 256 KiB requests with no answer in between
///   that tops the count up (measured: 3 of 6 uploads of 1 GiB hung with 512);
/// - on the server, which counts them as held by the client and grants no more once its
///   ceiling (Samba and Windows: 8,192 per connection) is reached.
///
/// Credits the client keeps asking the server for: a pool this deep outlasts a connection's
/// share of pending requests ([`ROTATE_BYTES`] is 2,048 credits).
const CREDITS_BACKLOG: u16 = 4096;
/// Credits our requests may hold at once on one connection, so the requests in flight never
/// take the whole pool.
const BUDGET_CREDITS: usize = 192;
/// Bytes a connection carries before the next operation moves to a new one (an upload
/// continues its file there): its lost credits plus the pool stay under the server's ceiling.
const ROTATE_BYTES: u64 = 128 << 20;
/// A request that gets no answer in this time fails (instead of waiting for ever).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

// NT status codes the target tells apart (MS-ERREF 2.3.1).
const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
const STATUS_OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
const STATUS_OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
const STATUS_OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
const STATUS_QUOTA_EXCEEDED: u32 = 0xC000_0044;
const STATUS_LOGON_FAILURE: u32 = 0xC000_006D;
const STATUS_DISK_FULL: u32 = 0xC000_007F;
const STATUS_BAD_NETWORK_NAME: u32 = 0xC000_00CC;
const STATUS_NETWORK_NAME_DELETED: u32 = 0xC000_00C9;
const STATUS_USER_SESSION_DELETED: u32 = 0xC000_0203;
const STATUS_NETWORK_SESSION_EXPIRED: u32 = 0xC000_035C;

/// A live login to the share.
struct Session {
    client: Client,
    /// Request size: the negotiated maximum, capped at [`MAX_CHUNK`].
    chunk: u32,
    /// Credits our reads and writes may hold (see [`BUDGET_CREDITS`]).
    budget: tokio::sync::Semaphore,
    /// Bytes read and written on this connection so far (see [`ROTATE_BYTES`]).
    carried: AtomicU64,
    /// The runtime the connection's tasks live on.
    runtime: tokio::runtime::Handle,
}

/// A folder on an SMB share.
pub struct SmbTarget {
    host: String,
    port: u16,
    share: String,
    /// Folder inside the share, `\`-separated, no leading or trailing separator.
    root: String,
    /// User for the login: `DOMAIN\user` or `user`.
    login: String,
    password: Zeroizing<String>,
    display: String,
    session: Mutex<Option<Arc<Session>>>,
    /// Bytes a connection carries before the next operation moves to a new one.
    rotate: u64,
    /// Logins made so far (see [`SmbTarget::logins`]).
    logins: AtomicU64,
}

impl std::fmt::Debug for SmbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmbTarget")
            .field("target", &self.display)
            .finish_non_exhaustive()
    }
}

impl Drop for SmbTarget {
    fn drop(&mut self) {
        // The crate's connection, tree and file handles close themselves by spawning a task
        // when dropped, which needs a runtime; the target may be dropped outside one.
        if let Some(session) = self.session.get_mut().take() {
            let runtime = session.runtime.clone();
            let _inside = runtime.enter();
            drop(session);
        }
    }
}

impl SmbTarget {
    /// A target on `\\host\share` (TCP `port`), folder `root` inside the share, logging in as
    /// the credentials' user (or the URL's), optionally in `domain`.
    pub fn new(
        host: &str,
        port: u16,
        domain: Option<&str>,
        url_user: Option<&str>,
        share: &str,
        root: &str,
        creds: Credentials,
    ) -> Result<Self, TargetError> {
        let user = creds
            .user
            .clone()
            .or_else(|| url_user.map(str::to_owned))
            .ok_or_else(|| {
                TargetError::Invalid("SMB needs a user name (in the URL or the credentials)".into())
            })?;
        let password = creds
            .password
            .clone()
            .ok_or_else(|| TargetError::Invalid("SMB needs a password".into()))?;
        if share.is_empty() || share.contains(['/', '\\']) {
            return Err(TargetError::Invalid(format!(
                "SMB share name '{share}' is not valid: use smb://server/share/folder"
            )));
        }
        let login = match domain {
            Some(d) if !user.contains(['\\', '@']) => format!("{d}\\{user}"),
            _ => user.clone(),
        };
        let root = root
            .split('/')
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("\\");
        let display = format!(
            "smb://{}{user}@{host}:{port}/{share}/{}",
            domain.map(|d| format!("{d};")).unwrap_or_default(),
            root.replace('\\', "/")
        );
        Ok(Self {
            host: host.to_owned(),
            port,
            share: share.to_owned(),
            root,
            login,
            password,
            display,
            session: Mutex::new(None),
            rotate: ROTATE_BYTES,
            logins: AtomicU64::new(0),
        })
    }

    /// Move to a new connection after `bytes` instead of every 128 MiB (at least 1 MiB).
    pub fn rotate_after(mut self, bytes: u64) -> Self {
        self.rotate = bytes.max(1 << 20);
        self
    }

    /// How many connections (each with its login) this target has opened so far.
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// The current session, logging in when there is none.
    async fn session(&self) -> Result<Arc<Session>, TargetError> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let session = self.log_in().await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    /// A new connection and login.
    async fn log_in(&self) -> Result<Arc<Session>, TargetError> {
        let mut config = ClientConfig::default();
        config.connection.port = Some(self.port);
        config.connection.credits_backlog = Some(CREDITS_BACKLOG);
        let unc = self.share_unc()?;
        let peers: Vec<std::net::SocketAddr> =
            match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) => Vec::new(),
            };
        let mut attempt = 1;
        let client = loop {
            let client = Client::new(config.clone());
            // The crate's socket appears during the login: Nagle goes off as soon as it is
            // there, so the login's own requests do not wait on it.
            let connected = {
                let connect =
                    client.share_connect(&unc, &self.login, self.password.as_str().to_owned());
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        done = &mut connect => break done,
                        () = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
                            no_delay_to(&peers);
                        }
                    }
                }
            };
            match connected {
                Ok(()) => break client,
                // Now and then (about one login in a few hundred against Samba 4.17) the
                // crate fails to verify the signature of a login reply; a new connection
                // logs in. Three failures in a row are an error.
                Err(e) if attempt < 3 && e.to_string().contains("SignVerify") => {
                    attempt += 1;
                    tokio::spawn(async move {
                        let _ = client.close().await;
                    });
                }
                Err(e) => return Err(self.classify("connect", "", e)),
            }
        };
        self.logins.fetch_add(1, Ordering::Relaxed);
        no_delay_to(&peers);
        let limits = client
            .get_connection(&self.host)
            .await
            .ok()
            .and_then(|c| {
                c.conn_info().map(|i| {
                    i.negotiation
                        .max_read_size
                        .min(i.negotiation.max_write_size)
                })
            })
            .unwrap_or(64 << 10);
        Ok(Arc::new(Session {
            client,
            chunk: limits.clamp(64 << 10, MAX_CHUNK),
            budget: tokio::sync::Semaphore::new(BUDGET_CREDITS),
            carried: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// The current session, replaced by a new login once it has carried its share.
    async fn fresh_session(&self) -> Result<Arc<Session>, TargetError> {
        let session = self.session().await?;
        if session.carried.load(Ordering::Relaxed) < self.rotate {
            return Ok(session);
        }
        {
            let mut slot = self.session.lock().await;
            if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session)) {
                // Operations still on it finish there; it closes with its last user.
                *slot = None;
            }
        }
        self.session().await
    }

    /// Run `op` on the session; a broken connection is dropped so the next call logs in anew.
    async fn with_session<R, F, Fut>(&self, op: F) -> Result<R, TargetError>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = Result<R, TargetError>>,
    {
        let session = self.fresh_session().await?;
        let result = op(session.clone()).await;
        if result.as_ref().is_err_and(TargetError::is_retryable) {
            let mut slot = self.session.lock().await;
            if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session)) {
                *slot = None;
            }
            // Closing a dead connection can hang on the server; do it in the background.
            tokio::spawn(async move {
                let _ = session.client.close().await;
            });
        }
        result
    }

    fn share_unc(&self) -> Result<UncPath, TargetError> {
        UncPath::new(&self.host)
            .and_then(|u| u.with_share(&self.share))
            .map_err(|e| TargetError::Invalid(format!("{}: {e}", self.display)))
    }

    /// The UNC path of `rel` (`/`-separated, relative to the target's folder).
    fn unc(&self, rel: &str) -> Result<UncPath, TargetError> {
        Ok(self.share_unc()?.with_path(&self.share_path(rel)))
    }

    /// `rel` as a path from the share's root, `\`-separated.
    fn share_path(&self, rel: &str) -> String {
        let rel = rel.replace('/', "\\");
        match (self.root.is_empty(), rel.is_empty()) {
            (true, _) => rel,
            (false, true) => self.root.clone(),
            (false, false) => format!("{}\\{rel}", self.root),
        }
    }

    async fn open(
        &self,
        s: &Session,
        rel: &str,
        args: &FileCreateArgs,
        op: &'static str,
    ) -> Result<Resource, TargetError> {
        s.client
            .create_file(&self.unc(rel)?, args)
            .await
            .map_err(|e| self.classify(op, rel, e))
    }

    async fn open_file(
        &self,
        s: &Session,
        rel: &str,
        args: &FileCreateArgs,
        op: &'static str,
    ) -> Result<File, TargetError> {
        match self.open(s, rel, args, op).await? {
            Resource::File(f) => Ok(f),
            other => {
                close(other).await;
                Err(self.permanent(op, rel, "is a folder, not a file"))
            }
        }
    }

    async fn open_dir(
        &self,
        s: &Session,
        rel: &str,
        disposition: CreateDisposition,
        op: &'static str,
    ) -> Result<Directory, TargetError> {
        let args = FileCreateArgs {
            disposition,
            attributes: FileAttributes::new().with_directory(true),
            options: CreateOptions::new().with_directory_file(true),
            desired_access: FileAccessMask::new()
                .with_generic_read(true)
                .with_file_read_attributes(true),
        };
        match self.open(s, rel, &args, op).await? {
            Resource::Directory(d) => Ok(d),
            other => {
                close(other).await;
                Err(self.permanent(op, rel, "is a file, not a folder"))
            }
        }
    }

    async fn exists(&self, s: &Session, rel: &str) -> Result<bool, TargetError> {
        let args = FileCreateArgs::make_open_existing(
            FileAccessMask::new().with_file_read_attributes(true),
        );
        match self.open(s, rel, &args, "stat").await {
            Ok(r) => {
                close(r).await;
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Write `body` to the temporary file `temp`, opened as `file` on `s`. Once a connection
    /// has carried its share ([`ROTATE_BYTES`]), the file is closed and the upload goes on
    /// from the same offset on a new connection. Gives back the connection and handle the
    /// upload ended on (none when reopening failed), for the rename or the cleanup.
    async fn upload(
        &self,
        mut s: Arc<Session>,
        file: File,
        temp: &ObjectKey,
        body: Body,
        key: &str,
    ) -> (Arc<Session>, Option<File>, Result<u64, TargetError>) {
        // The body is read by its own task, so reading overlaps the writes in flight.
        let (tx, mut rx) = chunks();
        tokio::spawn(pump(body, tx));
        let mut file = file;
        let mut at = 0u64;
        loop {
            let leg = self.write_leg(&s, &file, &mut rx, &mut at, key).await;
            let ended = match leg {
                Ok(ended) => ended,
                Err(e) => return (s, Some(file), Err(e)),
            };
            if ended {
                // One flush at the end: it makes the whole file durable, whichever
                // connection wrote each part.
                let flushed = file.flush().await.map(|()| at);
                let flushed = flushed.map_err(|e| self.classify_io("flush", key, &e));
                return (s, Some(file), flushed);
            }
            let _ = file.close().await;
            s = match self.fresh_session().await {
                Ok(next) => next,
                Err(e) => return (s, None, Err(e)),
            };
            let args = FileCreateArgs {
                disposition: CreateDisposition::Open,
                attributes: FileAttributes::new(),
                options: CreateOptions::new().with_non_directory_file(true),
                desired_access: FileAccessMask::new().with_generic_all(true),
            };
            file = match self.open_file(&s, temp.as_str(), &args, "write").await {
                Ok(f) => f,
                Err(e) => return (s, None, Err(e)),
            };
        }
    }

    /// Write chunks from `rx` at `at` onwards with `DEPTH` requests in flight, until the
    /// body ends (true) or the connection has carried its share (false).
    async fn write_leg(
        &self,
        s: &Session,
        file: &File,
        rx: &mut Chunks,
        at: &mut u64,
        key: &str,
    ) -> Result<bool, TargetError> {
        let max = s.chunk as usize;
        let budget = self
            .rotate
            .saturating_sub(s.carried.load(Ordering::Relaxed));
        let mut taken = 0u64;
        let mut ended = false;
        // All writes are driven from this one task: requests sent from several threads at
        // once stalled the crate's connection now and then.
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        loop {
            // At least one chunk per leg, so a used-up connection still makes progress.
            let take = !ended && inflight.len() < DEPTH && (taken == 0 || taken < budget);
            if !take && inflight.is_empty() {
                return Ok(ended);
            }
            tokio::select! {
                chunk = rx.recv(), if take => match chunk {
                    Some(Ok(buf)) => {
                        let offset = *at;
                        *at += buf.len() as u64;
                        taken += buf.len() as u64;
                        inflight.push(async move {
                            for (i, piece) in buf.chunks(max).enumerate() {
                                write_all_at(s, file, piece.into(), offset + (i * max) as u64)
                                    .await?;
                            }
                            Ok::<(), std::io::Error>(())
                        });
                    }
                    Some(Err(e)) => return Err(body_error(&self.display, key, &e)),
                    None => ended = true,
                },
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    done.map_err(|e| self.classify_io("write", key, &e))?;
                }
            }
        }
    }

    fn permanent(&self, op: &'static str, key: &str, detail: &str) -> TargetError {
        TargetError::Permanent {
            target: self.display.clone(),
            op,
            key: key.to_owned(),
            detail: detail.to_owned(),
        }
    }

    /// Map an NT status to what it means for the caller.
    fn status_error(&self, op: &'static str, key: &str, status: u32, text: String) -> TargetError {
        let (target, k) = (self.display.clone(), key.to_owned());
        match status {
            STATUS_OBJECT_NAME_NOT_FOUND | STATUS_OBJECT_PATH_NOT_FOUND => {
                TargetError::NotFound { target, key: k }
            }
            STATUS_OBJECT_NAME_COLLISION => TargetError::Exists { target, key: k },
            STATUS_LOGON_FAILURE => TargetError::Auth {
                target,
                user: self.login.clone(),
            },
            STATUS_DISK_FULL | STATUS_QUOTA_EXCEEDED => TargetError::Full { target, key: k },
            STATUS_BAD_NETWORK_NAME => self.permanent(
                op,
                key,
                &format!("the server has no share named '{}'", self.share),
            ),
            STATUS_ACCESS_DENIED => self.permanent(op, key, "access denied"),
            STATUS_NETWORK_NAME_DELETED
            | STATUS_USER_SESSION_DELETED
            | STATUS_NETWORK_SESSION_EXPIRED => TargetError::Transient {
                target,
                op,
                key: k,
                detail: text,
            },
            _ => self.permanent(op, key, &text),
        }
    }

    fn classify(&self, op: &'static str, key: &str, e: ::smb::Error) -> TargetError {
        use ::smb::Error as E;
        let text = e.to_string();
        match e {
            E::ReceivedErrorMessage(status, _) | E::UnexpectedMessageStatus(status) => {
                self.status_error(op, key, status, text)
            }
            E::IoError(io) => self.classify_io(op, key, &io),
            E::ConnectionStopped | E::OperationTimeout(..) | E::TransportError(_) => {
                TargetError::Transient {
                    target: self.display.clone(),
                    op,
                    key: key.to_owned(),
                    detail: text,
                }
            }
            // Authentication failures surface from the SSPI layer on some servers.
            E::SspiError(_) if text.to_ascii_lowercase().contains("logon") => TargetError::Auth {
                target: self.display.clone(),
                user: self.login.clone(),
            },
            _ => self.permanent(op, key, &text),
        }
    }

    /// Read and write calls return the crate's error as text inside an `io::Error`.
    fn classify_io(&self, op: &'static str, key: &str, e: &std::io::Error) -> TargetError {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        let status = [
            ("disk full", STATUS_DISK_FULL),
            ("0xc000007f", STATUS_DISK_FULL),
            ("0xc0000044", STATUS_QUOTA_EXCEEDED),
            ("network name deleted", STATUS_NETWORK_NAME_DELETED),
            ("user session deleted", STATUS_USER_SESSION_DELETED),
        ]
        .into_iter()
        .find(|(needle, _)| lower.contains(needle));
        if let Some((_, status)) = status {
            return self.status_error(op, key, status, text);
        }
        let kind_transient = matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::TimedOut
        );
        if kind_transient || lower.contains("connection") || lower.contains("channel") {
            return TargetError::Transient {
                target: self.display.clone(),
                op,
                key: key.to_owned(),
                detail: text,
            };
        }
        TargetError::from_io(&self.display, op, key, e)
    }

    async fn put(
        &self,
        s: Arc<Session>,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        if !overwrite && self.exists(&s, key.as_str()).await? {
            return Err(TargetError::Exists {
                target: self.display.clone(),
                key: key.to_string(),
            });
        }
        self.remove_stale_temps(&s, key).await;
        let temp = key.with_name(&temp_name(key.name()))?;
        let args = FileCreateArgs::make_create_new(
            FileAttributes::new(),
            CreateOptions::new().with_non_directory_file(true),
        );
        let file = self
            .open_file(&s, temp.as_str(), &args, "create")
            .await
            .map_err(|e| match e {
                // The folder the temporary file goes to is the one missing.
                TargetError::NotFound { target, .. } => TargetError::NotFound {
                    target,
                    key: key.parent().map(|p| p.to_string()).unwrap_or_default(),
                },
                e => e,
            })?;
        let (s, file, uploaded) = self.upload(s, file, &temp, body, key.as_str()).await;
        let done = match (uploaded, &file) {
            (Ok(n), Some(file)) => self.name_upload(&s, file, key, overwrite).await.map(|()| n),
            (Ok(_), None) => Err(self.permanent("write", key.as_str(), "the upload lost its file")),
            (Err(e), _) => Err(e),
        };
        if let Some(file) = file {
            if done.is_err() {
                // Delete on close; a connection that is gone leaves the temporary name:
                // listings never show it, and the next upload of the name removes it.
                let _ = file.set_info(FileDispositionInformation::default()).await;
            }
            let _ = file.close().await;
        }
        if done.is_err() {
            self.remove_leftover(&s, temp.as_str()).await;
        }
        done
    }

    /// Give the uploaded temporary file `file` the name `key`. An image there already (with
    /// `overwrite`) is moved aside first, put back if the new one cannot take its name, and
    /// removed once it has: a failure in between loses neither. Not a rename over it: Samba
    /// renames with rename(2), and ext4 writes the new file out before such a rename returns
    /// (0.8–1.0 s for 1 GiB just written, against 0.3–0.4 s to remove the old one).
    async fn name_upload(
        &self,
        s: &Session,
        file: &File,
        key: &ObjectKey,
        overwrite: bool,
    ) -> Result<(), TargetError> {
        let old = match overwrite {
            true => {
                let args = FileCreateArgs::make_open_existing(
                    FileAccessMask::new()
                        .with_delete(true)
                        .with_file_read_attributes(true),
                );
                match self.open_file(s, key.as_str(), &args, "replace").await {
                    Ok(f) => Some(f),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e),
                }
            }
            false => None,
        };
        let Some(old) = old else {
            return self
                .rename(file, key)
                .await
                .map_err(|e| self.classify("rename", key.as_str(), e));
        };
        let aside = key.with_name(&temp_name(key.name()))?;
        let result = match self.rename(&old, &aside).await {
            Err(e) => Err(self.classify("replace", key.as_str(), e)),
            Ok(()) => match self.rename(file, key).await {
                Ok(()) => {
                    let _ = old.set_info(FileDispositionInformation::default()).await;
                    Ok(())
                }
                Err(e) => {
                    let _ = self.rename(&old, key).await;
                    Err(self.classify("rename", key.as_str(), e))
                }
            },
        };
        let _ = old.close().await;
        result
    }

    /// Give the open file `f` the name `to`, unless a file has it.
    async fn rename(&self, f: &File, to: &ObjectKey) -> ::smb::Result<()> {
        f.set_info(FileRenameInformation {
            replace_if_exists: false.into(),
            root_directory: 0,
            file_name: self.share_path(to.as_str()).as_str().into(),
        })
        .await
    }

    /// Remove temporary files of earlier uploads of `key` that died with their connection
    /// (server restart, network loss): hidden from listings, they would hold the share's
    /// space for ever. Best effort: a folder that cannot be listed is left as it is.
    async fn remove_stale_temps(&self, s: &Session, key: &ObjectKey) {
        let parent = key.parent().map(|p| p.to_string()).unwrap_or_default();
        let Ok(entries) = self.dir_entries(s, &parent).await else {
            return;
        };
        for e in entries {
            let name = e.file_name.to_string();
            if is_temp_name_for(&name, key.name()) {
                if let Ok(stale) = key.with_name(&name) {
                    let _ = self.remove(s, stale.as_str()).await;
                }
            }
        }
    }

    /// Every entry of the folder `rel`, temporary names and `.`/`..` included.
    async fn dir_entries(
        &self,
        s: &Session,
        rel: &str,
    ) -> Result<Vec<FileDirectoryInformation>, TargetError> {
        let d = Arc::new(
            self.open_dir(s, rel, CreateDisposition::Open, "list")
                .await?,
        );
        let (d, entries) = query_all(d)
            .await
            .map_err(|e| self.permanent("list", rel, &e))?;
        let _ = d.close().await;
        entries.map_err(|e| self.classify("list", rel, e))
    }

    /// Make sure the temporary file of a failed upload is gone. The delete-on-close mark
    /// can be lost when writes were still in flight as the upload failed (a full share),
    /// and Samba defers a close until those writes finish: the file stays visible, "delete
    /// pending", for a moment. Wait for it to go, deleting it by name if it stays; give up
    /// when the connection is gone (the next upload of the name removes it) or after ~3 s.
    async fn remove_leftover(&self, s: &Session, temp: &str) {
        for _ in 0..30 {
            match self.exists(s, temp).await {
                Ok(false) => return,
                Ok(true) => {
                    if self.remove(s, temp).await.is_ok() {
                        return;
                    }
                }
                Err(e) if e.is_retryable() => return,
                Err(_) => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Delete the file `rel` (opened for deletion, marked, closed).
    async fn remove(&self, s: &Session, rel: &str) -> Result<(), TargetError> {
        let args = FileCreateArgs::make_open_existing(
            FileAccessMask::new()
                .with_delete(true)
                .with_file_read_attributes(true),
        );
        let file = self.open_file(s, rel, &args, "delete").await?;
        let marked = file.set_info(FileDispositionInformation::default()).await;
        let closed = file.close().await;
        marked
            .and(closed)
            .map_err(|e| self.classify("delete", rel, e))
    }

    async fn range(
        &self,
        s: Arc<Session>,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Bytes, TargetError> {
        let args = FileCreateArgs::make_open_existing(
            FileAccessMask::new()
                .with_generic_read(true)
                .with_file_read_data(true),
        );
        let file = self.open_file(&s, key.as_str(), &args, "read").await?;
        let result = self.read_range(&s, &file, key, range).await;
        let _ = file.close().await;
        result
    }

    async fn read_range(
        &self,
        s: &Session,
        file: &File,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<Bytes, TargetError> {
        let size = file
            .get_len()
            .await
            .map_err(|e| self.classify("read", key.as_str(), e))?;
        if range.end > size || range.start > range.end {
            return Err(self.permanent(
                "read",
                key.as_str(),
                &format!(
                    "range {}..{} is past the end of the file ({size} bytes)",
                    range.start, range.end
                ),
            ));
        }
        // One buffer for the range, each request filling its own slice of it: no copy
        // afterwards, and one allocation instead of one per request.
        let chunk = s.chunk as usize;
        let mut out = vec![0u8; (range.end - range.start) as usize];
        let starts = (range.start..range.end).step_by(chunk);
        let reads: Vec<_> = out
            .chunks_mut(chunk)
            .zip(starts)
            .map(|(slice, at)| read_exact_into(s, file, slice, at))
            .collect();
        futures_util::stream::iter(reads)
            .buffer_unordered(DEPTH)
            .try_collect::<()>()
            .await
            .map_err(|e| self.classify_io("read", key.as_str(), &e))?;
        Ok(Bytes::from(out))
    }
}

/// Every entry of `dir`, and the directory back (to be closed on the caller's runtime).
///
/// The crate's directory stream hands batches over with `Notify::notify_waiters`, which
/// keeps no permit: on a multi-threaded runtime the consumer can drain a batch and notify
/// before the producer waits, and the listing hangs. On a single thread the producer always
/// reaches its wait before the consumer runs, so the listing runs on its own current-thread
/// runtime.
async fn query_all(
    dir: Arc<Directory>,
) -> Result<(Arc<Directory>, ::smb::Result<Vec<FileDirectoryInformation>>), String> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for the listing: {e}"))?;
        let entries = rt.block_on(async {
            let stream = Directory::query::<FileDirectoryInformation>(&dir, "*").await?;
            stream.try_collect::<Vec<_>>().await
        });
        drop(rt);
        Ok((dir, entries))
    })
    .await
    .map_err(|e| format!("the listing task failed: {e}"))?
}

/// Close a handle we do not use further (dropping one closes it in the background).
async fn close(r: Resource) {
    let _ = match r {
        Resource::File(f) => f.close().await,
        Resource::Directory(d) => d.close().await,
        Resource::Pipe(p) => p.close().await,
    };
}

/// Turn Nagle's algorithm off on this process's TCP connections to `peers`.
///
/// The `smb` crate opens its socket itself and leaves Nagle on, so every small request (a
/// read, the tail of a write, each login step) waits for the acknowledgement of the segment
/// before it: reading 1 GiB over loopback took 4.9 s instead of 1.8 s, a login 180 ms
/// instead of 20 ms. The socket is reached through a duplicate of its descriptor
/// (`pidfd_getfd` on this very process: the same socket, no unsafe code); whatever fails
/// leaves the connection as it was, only slower.
fn no_delay_to(peers: &[std::net::SocketAddr]) {
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    let (Ok(me), Ok(fds)) = (
        pidfd_open(getpid(), PidfdFlags::empty()),
        std::fs::read_dir("/proc/self/fd"),
    ) else {
        return;
    };
    for entry in fds.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(dup) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let peer = rustix::net::getpeername(&dup)
            .ok()
            .flatten()
            .and_then(|a| std::net::SocketAddr::try_from(a).ok());
        if peer.is_some_and(|p| peers.contains(&p)) {
            let _ = rustix::net::sockopt::set_tcp_nodelay(&dup, true);
        }
    }
}

/// Hold credits for a request of `len` bytes from the session's budget.
async fn credits(s: &Session, len: usize) -> std::io::Result<tokio::sync::SemaphorePermit<'_>> {
    let cost = len.div_ceil(CREDIT_BYTES).max(1) as u32;
    s.budget
        .acquire_many(cost)
        .await
        .map_err(|_| std::io::Error::other("the connection is closing"))
}

/// Run one request with its credits held, failing it when the server goes silent.
async fn request<T>(
    s: &Session,
    len: usize,
    call: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let _held = credits(s, len).await?;
    s.carried.fetch_add(len as u64, Ordering::Relaxed);
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the server did not answer a request in time (connection stalled)",
            )
        })?
}

/// Write all of `data` at `offset` (a server may take less than asked per request).
async fn write_all_at(
    s: &Session,
    file: &File,
    data: Arc<[u8]>,
    offset: u64,
) -> std::io::Result<()> {
    let mut done = 0usize;
    while done < data.len() {
        let rest: Arc<[u8]> = if done == 0 {
            data.clone()
        } else {
            data[done..].into()
        };
        let len = rest.len();
        let n = request(
            s,
            len,
            file.write_block_zc(rest, offset + done as u64, None),
        )
        .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "the server accepted no bytes",
            ));
        }
        done += n;
    }
    Ok(())
}

/// Fill `buf` with the file's bytes from `offset` on.
async fn read_exact_into(
    s: &Session,
    file: &File,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<()> {
    let len = buf.len();
    let mut done = 0usize;
    while done < len {
        let want = len - done;
        let n = request(
            s,
            want,
            file.read_block(&mut buf[done..], offset + done as u64, None, false),
        )
        .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        done += n;
    }
    Ok(())
}

#[async_trait]
impl Target for SmbTarget {
    fn caps(&self) -> TargetCaps {
        TargetCaps {
            display: self.display.clone(),
            max_connections: 4,
            stream_reads: false,
        }
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        self.with_session(move |s| self.put(s, key, body, overwrite))
            .await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        self.with_session(move |s| self.range(s, key, range)).await
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        self.with_session(move |s| async move {
            let args = FileCreateArgs::make_open_existing(
                FileAccessMask::new().with_file_read_attributes(true),
            );
            let file = self.open_file(&s, key.as_str(), &args, "stat").await?;
            let len = file.get_len().await;
            let _ = file.close().await;
            len.map_err(|e| self.classify("stat", key.as_str(), e))
        })
        .await
    }

    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        let rel = dir.map(ObjectKey::as_str).unwrap_or("");
        self.with_session(move |s| async move {
            Ok(self
                .dir_entries(&s, rel)
                .await?
                .into_iter()
                .filter_map(|e| {
                    let name = e.file_name.to_string();
                    (name != "." && name != ".." && !is_temp_name(&name)).then(|| {
                        let is_dir = e.file_attributes.directory();
                        ObjectMeta {
                            name,
                            size: if is_dir { 0 } else { e.end_of_file },
                            is_dir,
                        }
                    })
                })
                .collect())
        })
        .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        self.with_session(move |s| async move { self.remove(&s, key.as_str()).await })
            .await
    }

    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        self.with_session(move |s| async move {
            let mut path = String::new();
            for part in dir.as_str().split('/') {
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(part);
                let d = self
                    .open_dir(&s, &path, CreateDisposition::OpenIf, "mkdir")
                    .await?;
                let _ = d.close().await;
            }
            Ok(())
        })
        .await
    }

    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        self.with_session(move |s| async move {
            let d = self
                .open_dir(&s, "", CreateDisposition::Open, "statfs")
                .await?;
            let info = d.query_fs_info::<FileFsFullSizeInformation>().await;
            let _ = d.close().await;
            let info = info.map_err(|e| self.classify("statfs", "", e))?;
            Ok(Some(
                info.caller_available_allocation_units
                    * u64::from(info.sectors_per_allocation_unit)
                    * u64::from(info.bytes_per_sector),
            ))
        })
        .await
    }
}
