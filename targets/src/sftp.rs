//! SFTP with `ssh2` (libssh2). Its calls block, so every operation runs on tokio's blocking
//! pool with a session from a small pool; uploads cross over through a bounded channel and
//! are written by two sessions at once, each its own stretches of the file.
//!
//! The server's host key is pinned: either to the fingerprint an admin confirmed (given with
//! the credentials; another key is refused with [`TargetError::HostKeyChanged`] before any
//! credential is sent), or, from the command line, to the one the first connection recorded
//! in a known-hosts file (another key: [`TargetError::HostKeyMismatch`]).

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use sha2::Digest as _;

use crate::blocking::{self, Pooled, Reuse};
use crate::error::TargetError;
use crate::location::Credentials;
use crate::{
    is_temp_name, is_temp_name_for, temp_name, Body, ObjectKey, ObjectMeta, Target, TargetCaps,
};

/// What an SFTP v3 write failure means: the protocol has no code for a full disk.
const WRITE_FAILURE: &str =
    "the server refused the write (SSH_FX_FAILURE: usually a full disk or quota)";
/// Bytes of an upload sent ahead of the server's acknowledgements (OpenSSH's `sftp` keeps
/// 64 requests of 32 KiB in flight; its server's channel window is 2 MiB).
const IN_FLIGHT: usize = 4 << 20;
/// Bytes of an upload one connection writes before the next stretch goes to the other
/// (see [`write_striped`]).
const STRIPE: u64 = 8 << 20;
/// Connections an upload writes with (see [`write_striped`]).
const LANES: u64 = 2;
/// Pieces (up to 1 MiB each) queued for each connection of an upload.
const LANE_QUEUE: usize = 4;
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const NO_KEY: &str = "the server sent no host key";

/// A TCP connection to `host:port` and an SSH session over it, handshake done (nothing
/// sent that logs in); on failure, a [`TargetError`] naming `target`.
fn handshake(
    host: &str,
    port: u16,
    target: &str,
) -> Result<(ssh2::Session, TcpStream), TargetError> {
    let fail = |op, detail: String| TargetError::Transient {
        target: target.to_owned(),
        op,
        key: String::new(),
        detail,
    };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| fail("connect", e.to_string()))?
        .next()
        .ok_or_else(|| fail("connect", "host name has no address".to_owned()))?;
    let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| fail("connect", e.to_string()))?;
    let mut session = ssh2::Session::new().map_err(|e| fail("connect", e.to_string()))?;
    let socket = tcp
        .try_clone()
        .map_err(|e| fail("connect", e.to_string()))?;
    session.set_tcp_stream(tcp);
    for way in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
        session
            .method_pref(way, ciphers())
            .map_err(|e| fail("connect", e.message().to_owned()))?;
    }
    if let Err(e) = session.handshake() {
        // The server offers nothing we speak: asking again will not change that.
        if e.code() == ssh2::ErrorCode::Session(LIBSSH2_ERROR_KEX_FAILURE) {
            let ours = ciphers().replace(',', ", ");
            return Err(TargetError::Permanent {
                target: target.to_owned(),
                op: "handshake",
                key: String::new(),
                detail: format!(
                    "no cipher in common with the server, or no key exchange or host key \
                     type (we offer the ciphers {ours}; the server's sshd_config `Ciphers` \
                     line says what it offers)"
                ),
            });
        }
        return Err(fail("handshake", e.message().to_owned()));
    }
    Ok((session, socket))
}

/// libssh2's code for a handshake that found no algorithms in common.
const LIBSSH2_ERROR_KEX_FAILURE: std::os::raw::c_int = -5;

/// The ciphers offered, best first. libssh2's own ChaCha20-Poly1305 (its default first
/// choice) is portable C, where AES-GCM runs on the CPU's AES instructions through OpenSSL,
/// so with them it costs an upload less CPU. CBC comes last, for old servers that offer
/// nothing else.
fn ciphers() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    if aes {
        "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,\
         aes128-ctr,aes192-ctr,aes256-ctr,aes256-cbc,aes192-cbc,aes128-cbc"
    } else {
        "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
         aes128-ctr,aes192-ctr,aes256-ctr,aes256-cbc,aes192-cbc,aes128-cbc"
    }
}

/// The session's host key as OpenSSH shows it: `SHA256:` and the unpadded base64 of the
/// SHA-256 of the key.
fn fingerprint(session: &ssh2::Session) -> Option<String> {
    let (key, _) = session.host_key()?;
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(key))
    ))
}

/// The host key `host:port` offers, from the handshake alone (blocking).
pub fn offered_host_key(host: &str, port: u16) -> Result<String, TargetError> {
    let display = format!("sftp://{host}:{port}");
    let (session, _socket) = handshake(host, port, &display)?;
    fingerprint(&session).ok_or_else(|| TargetError::Transient {
        target: display,
        op: "handshake",
        key: String::new(),
        detail: NO_KEY.into(),
    })
}

struct Conn {
    _session: ssh2::Session,
    sftp: ssh2::Sftp,
    /// The session's socket, to cut a connection that cannot be closed cleanly.
    socket: TcpStream,
}

impl Conn {
    /// Drop a connection whose channel is left mid-request (a write failed with a request
    /// partly sent): the socket is shut first, so closing its handles fails at once instead
    /// of waiting for ever on a server that still reads the rest of that request.
    fn abandon(self, file: ssh2::File) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        drop(file);
    }
}

struct Inner {
    host: String,
    port: u16,
    user: String,
    root: String,
    display: String,
    creds: Credentials,
    pin: Pin,
    pool: Mutex<Vec<Conn>>,
}

/// Which host key a connection accepts.
enum Pin {
    /// The fingerprint an admin confirmed.
    Confirmed(String),
    /// The one recorded in this known-hosts file (by the first connection).
    File(PathBuf),
}

/// A folder on an SFTP server.
#[derive(Clone)]
pub struct SftpTarget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SftpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpTarget")
            .field("target", &self.inner.display)
            .finish_non_exhaustive()
    }
}

impl SftpTarget {
    /// A target at `host:port`, folder `root`, logging in with `creds` (user from `creds` or
    /// `url_user`; a confirmed host key or a known-hosts file is required to pin the
    /// server's key).
    pub fn new(
        host: &str,
        port: u16,
        url_user: Option<&str>,
        root: &str,
        creds: Credentials,
    ) -> Result<Self, TargetError> {
        let user = creds
            .user
            .clone()
            .or_else(|| url_user.map(str::to_owned))
            .ok_or_else(|| {
                TargetError::Invalid(
                    "SFTP needs a user name (in the URL or the credentials)".into(),
                )
            })?;
        let pin =
            match (&creds.host_key, &creds.known_hosts) {
                (Some(key), _) => Pin::Confirmed(key.clone()),
                (None, Some(file)) => Pin::File(file.clone()),
                (None, None) => return Err(TargetError::Invalid(
                    "SFTP needs a confirmed host key or a known-hosts file to pin the server's key"
                        .into(),
                )),
            };
        if creds.password.is_none() && creds.private_key.is_none() {
            return Err(TargetError::Invalid(
                "SFTP needs a password or a private key".into(),
            ));
        }
        let root = root.trim_end_matches('/').to_owned();
        let display = format!(
            "sftp://{user}@{host}:{port}{}",
            if root.is_empty() { "/" } else { &root }
        );
        Ok(Self {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                port,
                user,
                root,
                display,
                creds,
                pin,
                pool: Mutex::new(Vec::new()),
            }),
        })
    }

    async fn run<R, F>(&self, f: F) -> Result<R, TargetError>
    where
        R: Send + 'static,
        F: FnOnce(&Inner, &mut Conn) -> Result<R, TargetError> + Send + 'static,
    {
        blocking::run(&self.inner, Reuse::UnlessDropped, f).await
    }
}

impl Pooled for Inner {
    type Conn = Conn;
    fn pool(&self) -> &Mutex<Vec<Conn>> {
        &self.pool
    }
    fn connect(&self) -> Result<Conn, TargetError> {
        Inner::connect(self)
    }
    fn display(&self) -> &str {
        &self.display
    }
}

impl Inner {
    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.root))
    }

    fn transient(
        &self,
        op: &'static str,
        key: &str,
        detail: impl std::fmt::Display,
    ) -> TargetError {
        TargetError::Transient {
            target: self.display.clone(),
            op,
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// Map an ssh2 error: SFTP status codes by meaning, session errors as transient.
    fn map(&self, op: &'static str, key: &str, e: &ssh2::Error) -> TargetError {
        let (target, k) = (self.display.clone(), key.to_owned());
        match e.code() {
            ssh2::ErrorCode::SFTP(2) | ssh2::ErrorCode::SFTP(10) => {
                TargetError::NotFound { target, key: k }
            }
            ssh2::ErrorCode::SFTP(11) => TargetError::Exists { target, key: k },
            ssh2::ErrorCode::SFTP(14) => TargetError::Full { target, key: k },
            ssh2::ErrorCode::SFTP(3) => TargetError::Permanent {
                target,
                op,
                key: k,
                detail: "permission denied".into(),
            },
            // SFTP v3 servers report ENOSPC, EDQUOT and most other errors as this one code.
            ssh2::ErrorCode::SFTP(4) if op == "write" => TargetError::Permanent {
                target,
                op,
                key: k,
                detail: WRITE_FAILURE.into(),
            },
            ssh2::ErrorCode::SFTP(_) => TargetError::Permanent {
                target,
                op,
                key: k,
                detail: e.message().to_owned(),
            },
            ssh2::ErrorCode::Session(_) => self.transient(op, key, e.message()),
        }
    }

    fn io(&self, op: &'static str, key: &str, e: &std::io::Error) -> TargetError {
        // ssh2 wraps its errors in io::Error for Read/Write, keeping only the message: an
        // SSH_FX_FAILURE on write arrives as "failure".
        if op == "write" && e.to_string().eq_ignore_ascii_case("failure") {
            return TargetError::Permanent {
                target: self.display.clone(),
                op,
                key: key.to_owned(),
                detail: WRITE_FAILURE.into(),
            };
        }
        TargetError::from_io(&self.display, op, key, e)
    }

    fn connect(&self) -> Result<Conn, TargetError> {
        let (session, socket) = handshake(&self.host, self.port, &self.display)?;
        self.check_host_key(&session)?;
        let c = &self.creds;
        let auth = match (&c.private_key, &c.password) {
            (Some(key), _) => session.userauth_pubkey_file(
                &self.user,
                None,
                key,
                c.passphrase.as_deref().map(|p| p.as_str()),
            ),
            (None, Some(pw)) => session.userauth_password(&self.user, pw),
            (None, None) => return Err(TargetError::Invalid("no password or key".into())),
        };
        if auth.is_err() || !session.authenticated() {
            return Err(TargetError::Auth {
                target: self.display.clone(),
                user: self.user.clone(),
            });
        }
        let sftp = session.sftp().map_err(|e| self.map("start sftp", "", &e))?;
        Ok(Conn {
            _session: session,
            sftp,
            socket,
        })
    }

    /// The confirmed key, or trust on first use of the known-hosts file; any other key is
    /// refused.
    fn check_host_key(&self, session: &ssh2::Session) -> Result<(), TargetError> {
        let offered =
            fingerprint(session).ok_or_else(|| self.transient("handshake", "", NO_KEY))?;
        let known_hosts = match &self.pin {
            Pin::Confirmed(confirmed) if *confirmed == offered => return Ok(()),
            Pin::Confirmed(confirmed) => {
                return Err(TargetError::HostKeyChanged {
                    target: self.display.clone(),
                    confirmed: confirmed.clone(),
                    offered,
                })
            }
            Pin::File(file) => file,
        };
        let who = format!("[{}]:{}", self.host, self.port);
        let text = std::fs::read_to_string(known_hosts).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            if f.next() == Some(who.as_str()) {
                let expected = f.next().unwrap_or_default().to_owned();
                if expected == offered {
                    return Ok(());
                }
                return Err(TargetError::HostKeyMismatch {
                    target: self.display.clone(),
                    expected,
                    offered,
                    known_hosts: known_hosts.display().to_string(),
                });
            }
        }
        let record = |e: std::io::Error| {
            TargetError::Invalid(format!(
                "cannot record the host key in '{}': {e}",
                known_hosts.display()
            ))
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(known_hosts)
            .map_err(record)?;
        writeln!(f, "{who} {offered}").map_err(record)
    }

    fn exists(&self, conn: &Conn, path: &Path) -> bool {
        conn.sftp.stat(path).is_ok()
    }
}

/// Give `temp` the name `dest`, which exists. SFTP v3's rename will not replace, so the
/// old file is moved aside (under a temporary name) first and put back when the new one
/// cannot take its name: a failure in between loses neither.
fn swap_in(
    inner: &Inner,
    conn: &Conn,
    temp: &Path,
    dest: &Path,
    key: &ObjectKey,
) -> Result<(), TargetError> {
    let aside = dest.with_file_name(temp_name(key.name()));
    conn.sftp
        .rename(dest, &aside, None)
        .map_err(|e| inner.map("replace", key.as_str(), &e))?;
    if let Err(e) = conn.sftp.rename(temp, dest, None) {
        let _ = conn.sftp.rename(&aside, dest, None);
        return Err(inner.map("rename", key.as_str(), &e));
    }
    let _ = conn.sftp.unlink(&aside);
    Ok(())
}

/// Write the body to the temporary file `temp` in stretches of [`STRIPE`] bytes that
/// alternate between [`LANES`] connections of their own; the byte count.
///
/// libssh2 encrypts, sends and waits for acknowledgements on the thread that calls it: with
/// one connection a third of the two cores stayed idle during an upload; two writing
/// disjoint stretches took 10% less time (measured; a third connection or other stretch
/// sizes gained nothing more). Each further connection is opened only once the body
/// reaches its first stretch; when it cannot be had, the lanes already open write
/// everything. The caller's connection only creates, renames or removes the file: a failed
/// write can leave a lane's channel mid-request, and such a connection is cut, never reused.
fn write_striped(
    inner: &Inner,
    key: &str,
    temp: &Path,
    rx: &mut blocking::Chunks,
    first: Conn,
) -> Result<u64, TargetError> {
    let first = open_lane(inner, key, temp, first)?;
    std::thread::scope(|scope| {
        let start = |lane| {
            let (tx, pieces) = std::sync::mpsc::sync_channel(LANE_QUEUE);
            (tx, scope.spawn(move || run_lane(inner, key, lane, &pieces)))
        };
        let (tx, handle) = start(first);
        let (mut lanes, mut running) = (vec![tx], vec![handle]);
        let mut pos = 0u64;
        let mut body_failed = None;
        'body: while let Some(chunk) = rx.blocking_recv() {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    body_failed = Some(blocking::body_error(&inner.display, key, &e));
                    break;
                }
            };
            while !chunk.is_empty() {
                let stretch = pos / STRIPE;
                let opens_lane = stretch == lanes.len() as u64 && stretch < LANES;
                if opens_lane && pos.is_multiple_of(STRIPE) {
                    let lane = blocking::take(inner).and_then(|c| open_lane(inner, key, temp, c));
                    if let Ok(lane) = lane {
                        let (tx, handle) = start(lane);
                        lanes.push(tx);
                        running.push(handle);
                    }
                }
                let room = STRIPE - pos % STRIPE;
                let piece = chunk.split_to(chunk.len().min(room as usize));
                let len = piece.len() as u64;
                let lane = &lanes[(stretch % lanes.len() as u64) as usize];
                // A closed lane failed: its error is collected below.
                if lane.send((pos, piece)).is_err() {
                    break 'body;
                }
                pos += len;
            }
        }
        // Closing the lanes lets each finish what it has in flight (also after a failed
        // body: a CLOSE sent inside a partly sent WRITE would hang the server's reader).
        drop(lanes);
        let mut result = Ok(());
        for lane in running {
            let r = lane
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(r);
        }
        match (result, body_failed) {
            (Err(e), _) | (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => Ok(pos),
        }
    })
}

/// `conn`, a connection of the lane's own, with the temporary file open for writing.
fn open_lane(
    inner: &Inner,
    key: &str,
    temp: &Path,
    conn: Conn,
) -> Result<(Conn, ssh2::File), TargetError> {
    let file = conn
        .sftp
        .open_mode(temp, ssh2::OpenFlags::WRITE, 0o644, ssh2::OpenType::File)
        .map_err(|e| inner.map("open", key, &e))?;
    Ok((conn, file))
}

/// Run one lane of an upload; its connection goes back to the pool when all went well.
fn run_lane(
    inner: &Inner,
    key: &str,
    (conn, mut file): (Conn, ssh2::File),
    pieces: &std::sync::mpsc::Receiver<(u64, Bytes)>,
) -> Result<(), TargetError> {
    let r = write_lane(inner, key, &mut file, pieces);
    match r {
        Ok(()) => {
            drop(file);
            blocking::give_back(inner, conn);
        }
        Err(_) => conn.abandon(file),
    }
    r
}

/// Write the pieces that arrive on `pieces` (each with its offset in the file) to `file`,
/// keeping about [`IN_FLIGHT`] bytes sent and not yet acknowledged; returns once the
/// sender is gone and everything sent is acknowledged.
///
/// libssh2 cuts what it is given into write requests, sends them and returns the count the
/// server has acknowledged; what is not acknowledged must be passed again (it is not sent
/// twice). The unacknowledged tail stays in one buffer and new pieces are appended as they
/// come, so the pipeline does not run dry between pieces. A piece that does not follow on
/// (the next stretch of this lane) waits until everything before it is acknowledged: only
/// then may the handle's position move.
fn write_lane(
    inner: &Inner,
    key: &str,
    file: &mut ssh2::File,
    pieces: &std::sync::mpsc::Receiver<(u64, Bytes)>,
) -> Result<(), TargetError> {
    let mut pending: Vec<u8> = Vec::with_capacity(2 * IN_FLIGHT);
    let mut acked = 0usize;
    // Offset in the file just past `pending`.
    let mut end: Option<u64> = None;
    let mut waiting: Option<(u64, Bytes)> = None;
    let mut closed = false;
    loop {
        while waiting.is_none() && !closed && pending.len() - acked < IN_FLIGHT {
            // Block for more only when nothing is in flight; otherwise collect acks.
            let next = match acked == pending.len() {
                true => pieces.recv().ok(),
                false => match pieces.try_recv() {
                    Ok(p) => Some(p),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
                },
            };
            let Some((at, data)) = next else {
                closed = true;
                break;
            };
            if end.is_some_and(|e| e != at) {
                waiting = Some((at, data));
                break;
            }
            // Drop the acknowledged head once it outweighs the rest (each byte is moved
            // at most once on average).
            if acked >= pending.len() - acked {
                pending.drain(..acked);
                acked = 0;
            }
            if end.is_none() {
                file.seek(SeekFrom::Start(at))
                    .map_err(|e| inner.io("write", key, &e))?;
            }
            pending.extend_from_slice(&data);
            end = Some(at + data.len() as u64);
        }
        if acked == pending.len() {
            pending.clear();
            acked = 0;
            match waiting.take() {
                Some((at, data)) => {
                    file.seek(SeekFrom::Start(at))
                        .map_err(|e| inner.io("write", key, &e))?;
                    pending.extend_from_slice(&data);
                    end = Some(at + data.len() as u64);
                }
                None if closed => return Ok(()),
                None => continue,
            }
        }
        match file.write(&pending[acked..]) {
            Ok(0) => return Err(inner.transient("write", key, "the server acknowledged nothing")),
            Ok(n) => acked += n,
            Err(e) => return Err(inner.io("write", key, &e)),
        }
    }
}

/// Fills `buf` from the file's position, asking the server for no more than that. libssh2
/// keeps four times the buffer a read is given requested ahead of it, past the end of what
/// the caller wants too (an 8 MiB range cost 14 MiB on the wire, which bounded restores over
/// a slow link at 0.57× OpenSSH's `sftp`): each read is given a quarter of what is left, so
/// the requests end where the range does (rounded up to one 30 000-byte request).
fn read_exact_within(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let ask = (buf.len() - at).div_ceil(4);
        match f.read(&mut buf[at..at + ask]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[async_trait]
impl Target for SftpTarget {
    fn caps(&self) -> TargetCaps {
        TargetCaps {
            display: self.inner.display.clone(),
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
        let (tx, mut rx) = blocking::chunks();
        let k = key.clone();
        // The first lane's connection is opened beside the one that checks and creates the
        // file: a handshake and login take several round trips (0.1-0.2 s of a 5 s upload
        // on a LAN, done one after the other before).
        let (lane_tx, lane_rx) = std::sync::mpsc::sync_channel(1);
        let spare = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // Not wanted after all (the upload stopped first): kept for the next operation.
            if let Err(std::sync::mpsc::SendError(Ok(conn))) = lane_tx.send(blocking::take(&*spare))
            {
                blocking::give_back(&*spare, conn);
            }
        });
        let upload = self.run(move |inner, conn| {
            let dest = inner.path(k.as_str());
            if !overwrite && inner.exists(conn, &dest) {
                return Err(TargetError::Exists {
                    target: inner.display.clone(),
                    key: k.to_string(),
                });
            }
            // Temporary files of earlier uploads of this name that died with their
            // connection (server restart, network loss) are removed now.
            if let Some(dir) = dest.parent() {
                for (p, _) in conn.sftp.readdir(dir).unwrap_or_default() {
                    if p.file_name()
                        .is_some_and(|n| is_temp_name_for(&n.to_string_lossy(), k.name()))
                    {
                        let _ = conn.sftp.unlink(&p);
                    }
                }
            }
            let temp = dest.with_file_name(temp_name(k.name()));
            let result = (|| {
                drop(
                    conn.sftp
                        .create(&temp)
                        .map_err(|e| inner.map("create", k.as_str(), &e))?,
                );
                let first = lane_rx.recv().map_err(|_| {
                    inner.transient(
                        "connect",
                        k.as_str(),
                        "the upload's connection was not opened",
                    )
                })??;
                let n = write_striped(inner, k.as_str(), &temp, &mut rx, first)?;
                // fsync@openssh.com where offered (older servers just lack it), on a
                // handle opened after every write is acknowledged.
                if let Ok(mut f) =
                    conn.sftp
                        .open_mode(&temp, ssh2::OpenFlags::WRITE, 0o644, ssh2::OpenType::File)
                {
                    let _ = f.fsync();
                }
                if overwrite && inner.exists(conn, &dest) {
                    swap_in(inner, conn, &temp, &dest, &k)?;
                    return Ok(n);
                }
                // SFTP v3 rename refuses an existing destination: "create only if absent".
                conn.sftp.rename(&temp, &dest, None).map_err(|e| {
                    match inner.exists(conn, &dest) {
                        true => TargetError::Exists {
                            target: inner.display.clone(),
                            key: k.to_string(),
                        },
                        false => inner.map("rename", k.as_str(), &e),
                    }
                })?;
                Ok(n)
            })();
            if result.is_err() {
                let _ = conn.sftp.unlink(&temp);
            }
            result
        });
        let (up, ()) = tokio::join!(upload, blocking::pump(body, tx));
        up
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        let k = key.clone();
        self.run(move |inner, conn| {
            let len = usize::try_from(range.end.saturating_sub(range.start))
                .map_err(|_| TargetError::Invalid("range too large".into()))?;
            let mut f = conn
                .sftp
                .open(inner.path(k.as_str()))
                .map_err(|e| inner.map("open", k.as_str(), &e))?;
            f.seek(SeekFrom::Start(range.start))
                .map_err(|e| inner.io("read", k.as_str(), &e))?;
            let mut buf = vec![0u8; len];
            read_exact_within(&mut f, &mut buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => TargetError::Permanent {
                    target: inner.display.clone(),
                    op: "read",
                    key: k.to_string(),
                    detail: format!("range {}..{} is past the end", range.start, range.end),
                },
                _ => inner.io("read", k.as_str(), &e),
            })?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        let k = key.clone();
        self.run(move |inner, conn| {
            let st = conn
                .sftp
                .stat(&inner.path(k.as_str()))
                .map_err(|e| inner.map("stat", k.as_str(), &e))?;
            Ok(st.size.unwrap_or(0))
        })
        .await
    }

    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        let d = dir.map(|d| d.to_string());
        self.run(move |inner, conn| {
            let key = d.clone().unwrap_or_default();
            let path = match &d {
                Some(d) => inner.path(d),
                None => PathBuf::from(if inner.root.is_empty() {
                    "/"
                } else {
                    &inner.root
                }),
            };
            let entries = conn
                .sftp
                .readdir(&path)
                .map_err(|e| inner.map("list", &key, &e))?;
            Ok(entries
                .into_iter()
                .filter_map(|(p, st)| {
                    let name = p.file_name()?.to_string_lossy().into_owned();
                    (!is_temp_name(&name) && name != "." && name != "..").then(|| ObjectMeta {
                        name,
                        size: if st.is_dir() { 0 } else { st.size.unwrap_or(0) },
                        is_dir: st.is_dir(),
                    })
                })
                .collect())
        })
        .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        let k = key.clone();
        self.run(move |inner, conn| {
            conn.sftp
                .unlink(&inner.path(k.as_str()))
                .map_err(|e| inner.map("delete", k.as_str(), &e))
        })
        .await
    }

    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        let d = dir.clone();
        self.run(move |inner, conn| {
            let mut path = inner.root.clone();
            for part in d.as_str().split('/') {
                path.push('/');
                path.push_str(part);
                let p = Path::new(&path);
                if conn.sftp.stat(p).is_ok_and(|s| s.is_dir()) {
                    continue;
                }
                conn.sftp
                    .mkdir(p, 0o755)
                    .map_err(|e| inner.map("mkdir", d.as_str(), &e))?;
            }
            Ok(())
        })
        .await
    }

    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        // ssh2 does not expose the statvfs@openssh.com extension.
        Ok(None)
    }
}
