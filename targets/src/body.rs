//! A [`Body`] fed from synchronous code: the image writer runs on plain threads and hands
//! its bytes to an upload running on the async runtime.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::Body;

/// The sending half: `send` blocks while the upload is behind (back-pressure).
pub struct BodySender {
    tx: Option<mpsc::Sender<std::io::Result<Bytes>>>,
}

impl BodySender {
    /// Queue bytes; fails when the upload has stopped.
    pub fn send(&self, data: Bytes) -> std::io::Result<()> {
        match &self.tx {
            Some(tx) => tx.blocking_send(Ok(data)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped")
            }),
            None => Err(std::io::Error::other("body already finished")),
        }
    }

    /// End the body normally: the upload completes and becomes visible.
    pub fn finish(mut self) {
        self.tx = None;
    }

    /// End the body with an error: the upload fails and removes what it wrote.
    pub fn fail(mut self, why: &str) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.blocking_send(Err(std::io::Error::other(why.to_owned())));
        }
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        // Dropped without finish(): the write was abandoned, so the upload must fail rather
        // than take the bytes so far for the whole file.
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(Err(std::io::Error::other("the writer went away")));
        }
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl AsyncRead for ChannelBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let chunk = self.current.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.current = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A body and the sender that feeds it, holding up to `depth` chunks in flight.
pub fn channel_body(depth: usize) -> (BodySender, Body) {
    let (tx, rx) = mpsc::channel(depth.max(1));
    (
        BodySender { tx: Some(tx) },
        Box::new(ChannelBody {
            rx,
            current: Bytes::new(),
        }),
    )
}
