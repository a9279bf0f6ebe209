//! What the blocking backends (SFTP on libssh2, FTP on suppaftp) share: a pool of
//! connections used on tokio's blocking threads, and the hand-over of an upload body from
//! the async side to the blocking side.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::error::TargetError;
use crate::Body;

/// Chunk size of uploads.
const CHUNK: usize = 1 << 20;

/// A backend whose connections block.
pub(crate) trait Pooled: Send + Sync + 'static {
    /// One connection.
    type Conn: Send + 'static;
    /// Idle connections.
    fn pool(&self) -> &Mutex<Vec<Self::Conn>>;
    /// Open a new connection.
    fn connect(&self) -> Result<Self::Conn, TargetError>;
    /// The target's name for messages.
    fn display(&self) -> &str;
}

/// When a connection goes back to the pool after an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Unless the operation failed with a transient error (a dropped connection is not
    /// worth keeping).
    UnlessDropped,
    /// Only after a success (a failed transfer can leave replies queued on it).
    OnSuccess,
    /// Never (the operation leaves it in a state not worth trusting).
    Never,
}

/// Run `f` with a pooled (or new) connection on the blocking pool; the connection goes
/// back to the pool afterwards as `reuse` says.
pub(crate) async fn run<P, R, F>(inner: &Arc<P>, reuse: Reuse, f: F) -> Result<R, TargetError>
where
    P: Pooled,
    R: Send + 'static,
    F: FnOnce(&P, &mut P::Conn) -> Result<R, TargetError> + Send + 'static,
{
    let inner = inner.clone();
    let display = inner.display().to_owned();
    let task = tokio::task::spawn_blocking(move || {
        let mut conn = take(&*inner)?;
        let r = f(&inner, &mut conn);
        let keep = match (reuse, &r) {
            (Reuse::Never, _) | (Reuse::OnSuccess, Err(_)) => false,
            (Reuse::UnlessDropped, Err(e)) => !e.is_retryable(),
            (_, Ok(_)) => true,
        };
        if keep {
            give_back(&*inner, conn);
        }
        r
    });
    match task.await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(TargetError::Transient {
                target: display,
                op: "run",
                key: String::new(),
                detail: "the operation was cancelled".into(),
            }),
        },
    }
}

/// An idle connection from the pool, or a new one (on a blocking thread).
pub(crate) fn take<P: Pooled>(inner: &P) -> Result<P::Conn, TargetError> {
    match inner.pool().lock().ok().and_then(|mut p| p.pop()) {
        Some(c) => Ok(c),
        None => inner.connect(),
    }
}

/// Return a connection that is still good to the pool.
pub(crate) fn give_back<P: Pooled>(inner: &P, conn: P::Conn) {
    if let Ok(mut p) = inner.pool().lock() {
        p.push(conn);
    }
}

/// Chunks of an upload body; an `Err` means the body failed and the upload must not complete.
pub(crate) type Chunks = mpsc::Receiver<std::io::Result<Bytes>>;

/// A channel for [`pump`] and the blocking uploader.
pub(crate) fn chunks() -> (mpsc::Sender<std::io::Result<Bytes>>, Chunks) {
    mpsc::channel(4)
}

/// Read `body` in chunks into `tx`. A read error is sent on, so the uploader fails (and
/// removes its temporary file) instead of taking the bytes so far for the whole file.
pub(crate) async fn pump(mut body: Body, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        let filled = match fill(&mut body, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if filled == 0 {
            return;
        }
        buf.truncate(filled);
        // A closed channel means the upload already failed; its error is reported.
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            return;
        }
    }
}

/// Read from `body` until `buf` is full or the body ends; the count read.
pub(crate) async fn fill(body: &mut Body, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match body.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The error for a failed upload body.
pub(crate) fn body_error(target: &str, key: &str, e: &std::io::Error) -> TargetError {
    TargetError::Permanent {
        target: target.to_owned(),
        op: "read body",
        key: key.to_owned(),
        detail: e.to_string(),
    }
}
