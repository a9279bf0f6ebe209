//! Read-ahead for images read from a target.
//!
//! Restore and validate read an image front to back in frame-sized pieces. Over a network,
//! one range request at a time waits a round trip (FTP even logs in again) for each frame.
//! Once reads run in order, this reads the part ahead in fixed blocks, several requests in
//! flight (as many as the target's connection cap lets through), and serves the reads from
//! those blocks; the first block starts where the first in-order read does, so bytes read
//! before the order showed are not read again. Other scattered reads go straight to the
//! target, but for those at a part's two ends: opening an image reads its header, trailer
//! and index in several small pieces there, so each end is read once, whole, and kept.
//!
//! Where the target reads a file front to back cheaper than by ranges (FTP: one `RETR`
//! instead of a connection per range), the blocks come from one stream per part instead; a
//! block the stream fails to deliver is read by range, so a passing fault is retried like any
//! other read.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use futures_util::StreamExt as _;
use holdfast_targets::{ObjectKey, Target, TargetError};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

/// Bytes per read-ahead request.
const BLOCK: u64 = 8 << 20;
/// Blocks requested ahead at first; doubled while reads stay in order, up to [`MAX_WINDOW`].
const FIRST_WINDOW: u64 = 1;
const MAX_WINDOW: u64 = 6;
/// Blocks kept behind the current read, for readers on several threads slightly out of order.
const KEEP_BEHIND: u64 = 1;
/// Bytes kept of a part's start (the image's header, a later part's header) ...
const HEAD: u64 = 64 << 10;
/// ... and of its end (the trailer and, in most images, the index before it).
const TAIL: u64 = 256 << 10;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, Arc<TargetError>>>>;

/// The read-ahead state of one image (all its parts).
#[derive(Default)]
pub struct ReadAhead {
    state: Mutex<State>,
    /// Whether the target streams (asked once: its answer does not change).
    streams: std::sync::OnceLock<bool>,
    /// The ends of the parts read so far, by part and start offset.
    ends: Mutex<HashMap<(u32, u64), Fetch>>,
}

#[derive(Default)]
struct State {
    /// Part the blocks belong to, and its size.
    part: Option<(u32, u64)>,
    /// Blocks by number, each with the offset its data starts at (a block's start, or later
    /// for the first block of a stream).
    blocks: BTreeMap<u64, (u64, Fetch)>,
    /// Last block the previous read touched.
    last: Option<u64>,
    window: u64,
    /// The stream the next blocks come from, on targets that stream.
    stream: Option<Streamed>,
}

impl ReadAhead {
    /// Fill `buf` from `key` (part `part` of `size` bytes) at `offset` through the blocks
    /// when reads run in order, or through the kept ends of the part; `None` when this read
    /// should go straight to the target.
    pub fn read(
        &self,
        rt: &Runtime,
        target: &Arc<dyn Target>,
        (part, key, size): (u32, &ObjectKey, u64),
        buf: &mut [u8],
        offset: u64,
    ) -> Option<io::Result<()>> {
        if buf.is_empty() {
            return Some(Ok(()));
        }
        let end = offset + buf.len() as u64;
        if end > size {
            // The target says what is wrong with a read past the end.
            return None;
        }
        let (first, last) = (offset / BLOCK, (end - 1) / BLOCK);
        let streams = *self.streams.get_or_init(|| target.caps().stream_reads);
        let fetches: Vec<(u64, Fetch)> = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.part != Some((part, size)) {
                *st = State {
                    part: Some((part, size)),
                    window: FIRST_WINDOW,
                    ..State::default()
                };
            }
            let in_order = st.blocks.contains_key(&first)
                || st.last.is_some_and(|l| first == l || first == l + 1);
            st.last = Some(last);
            if !in_order {
                drop(st);
                let (from, to) = end_around(offset..end, size)?;
                return Some(self.read_end(rt, target, (part, key), from..to, buf, offset));
            }
            st.blocks.retain(|&b, _| b + KEEP_BEHIND >= first);
            let ahead = last + st.window;
            for b in first..=ahead {
                let block_start = b * BLOCK;
                if block_start >= size {
                    break;
                }
                if st.blocks.contains_key(&b) {
                    continue;
                }
                // What this read asks for, and everything after it.
                let start = block_start.max(offset);
                let f = match streams {
                    true => st.streamed_block(rt, target, key, size, b, start),
                    false => fetch(rt, target, key, start..(block_start + BLOCK).min(size)),
                };
                st.blocks.insert(b, (start, f));
            }
            st.window = (st.window * 2).min(MAX_WINDOW);
            (first..=last)
                .filter_map(|b| st.blocks.get(&b).cloned())
                .collect()
        };
        if fetches.len() as u64 != last - first + 1 {
            return Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} is past the end of the part",
                    buf.len()
                ),
            )));
        }
        if fetches
            .iter()
            .any(|&(start, _)| start > offset.max(start / BLOCK * BLOCK))
        {
            // A block kept from a later start than this read's (a reader on another thread
            // came first): this one goes to the target.
            return None;
        }
        for (data_start, f) in fetches {
            let data = match rt.block_on(f) {
                Ok(d) => d,
                Err(e) => {
                    // Forget the failed block, so the next read asks again.
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.blocks.remove(&(data_start / BLOCK));
                    return Some(Err(crate::storage::to_io(&e)));
                }
            };
            if let Err(e) = copy_out(&data, data_start, buf, offset) {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// Fill `buf` (at `offset`) from the part's end `window`, read once and kept.
    fn read_end(
        &self,
        rt: &Runtime,
        target: &Arc<dyn Target>,
        (part, key): (u32, &ObjectKey),
        window: Range<u64>,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<()> {
        let f = {
            let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
            ends.entry((part, window.start))
                .or_insert_with(|| fetch(rt, target, key, window.clone()))
                .clone()
        };
        match rt.block_on(f) {
            Ok(data) => copy_out(&data, window.start, buf, offset),
            Err(e) => {
                // Forget the failed read, so the next one asks again.
                let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
                ends.remove(&(part, window.start));
                Err(crate::storage::to_io(&e))
            }
        }
    }
}

/// The end of a part of `size` bytes that holds all of `read`, when it is one.
fn end_around(read: Range<u64>, size: u64) -> Option<(u64, u64)> {
    let head = HEAD.min(size);
    let tail = size.saturating_sub(TAIL);
    if read.end <= head {
        Some((0, head))
    } else if read.start >= tail {
        Some((tail, size))
    } else {
        None
    }
}

/// Copy what `data` (the part's bytes from `data_start`) holds of the read at `offset` into
/// the matching place of `buf`.
fn copy_out(data: &[u8], data_start: u64, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let end = offset + buf.len() as u64;
    let from = offset.max(data_start);
    let to = end.min(data_start + data.len() as u64);
    if to <= from {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the part is shorter than its size said",
        ));
    }
    buf[(from - offset) as usize..(to - offset) as usize]
        .copy_from_slice(&data[(from - data_start) as usize..(to - data_start) as usize]);
    Ok(())
}

impl State {
    /// Block `b` of `key` (`size` bytes) from the stream, from `start` on; a stream is
    /// started there when there is none that delivers `b` next.
    fn streamed_block(
        &mut self,
        rt: &Runtime,
        target: &Arc<dyn Target>,
        key: &ObjectKey,
        size: u64,
        b: u64,
        start: u64,
    ) -> Fetch {
        let (mut s, start) = match self.stream.take() {
            Some(s) if s.next == b && !s.wanted.is_closed() => (s, b * BLOCK),
            // The old stream still delivers the blocks already asked of it, then stops (and
            // with it its transfer).
            _ => (Streamed::start(rt, target, key, start, size), start),
        };
        let (reply, delivered) = oneshot::channel();
        let asked = s.wanted.send(reply).is_ok();
        s.next = b + 1;
        self.stream = Some(s);
        let (target, key) = (target.clone(), key.clone());
        async move {
            if asked {
                if let Ok(data) = delivered.await {
                    return Ok(data);
                }
            }
            target
                .get_range(&key, start..((b + 1) * BLOCK).min(size))
                .await
                .map_err(Arc::new)
        }
        .boxed()
        .shared()
    }
}

/// One stream over a part, cut into blocks as they are asked for.
struct Streamed {
    /// The block the next request is for.
    next: u64,
    /// Requests, in block order; each is answered with the rest of its block, or dropped
    /// when the stream broke.
    wanted: mpsc::UnboundedSender<oneshot::Sender<Bytes>>,
}

impl Streamed {
    /// A stream over `key` (`size` bytes) from offset `from` to the end. It reads only as
    /// far as blocks are asked for; the first is the rest of the block `from` is in.
    fn start(
        rt: &Runtime,
        target: &Arc<dyn Target>,
        key: &ObjectKey,
        from: u64,
        size: u64,
    ) -> Self {
        let (wanted, mut asked) = mpsc::unbounded_channel::<oneshot::Sender<Bytes>>();
        let (target, key) = (target.clone(), key.clone());
        rt.spawn(async move {
            let mut at = from;
            // An error ends the stream; the blocks asked for are then read by range and
            // report it.
            let Ok(mut stream) = target.read_stream(&key, at..size).await else {
                return;
            };
            let mut carry = Bytes::new();
            while at < size {
                let Some(reply) = asked.recv().await else {
                    return;
                };
                let want = ((at / BLOCK + 1) * BLOCK).min(size) - at;
                let want = want as usize;
                let mut block = BytesMut::with_capacity(want);
                while block.len() < want {
                    if carry.is_empty() {
                        match stream.next().await {
                            Some(Ok(piece)) => carry = piece,
                            _ => return,
                        }
                    }
                    let n = carry.len().min(want - block.len());
                    block.extend_from_slice(&carry.split_to(n));
                }
                at += want as u64;
                let _ = reply.send(block.freeze());
            }
        });
        Self {
            next: from / BLOCK,
            wanted,
        }
    }
}

/// Start reading `range` of `key` now; the result can be awaited by any reader.
fn fetch(rt: &Runtime, target: &Arc<dyn Target>, key: &ObjectKey, range: Range<u64>) -> Fetch {
    let (target, key) = (target.clone(), key.clone());
    let task = rt.spawn(async move { target.get_range(&key, range).await });
    async move {
        match task.await {
            Ok(r) => r.map_err(Arc::new),
            Err(e) => Err(Arc::new(TargetError::Invalid(format!(
                "the read-ahead task failed: {e}"
            )))),
        }
    }
    .boxed()
    .shared()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use holdfast_targets::local::LocalTarget;
    use holdfast_targets::{Body, ByteStream, ObjectMeta, TargetCaps};

    /// A local folder that also streams, in 1 MiB pieces; each stream breaks (a transient
    /// error) after `break_after` bytes, as a dropped connection would.
    struct Streaming {
        local: LocalTarget,
        break_after: u64,
        opened: AtomicU64,
        /// Bytes handed out, by ranges and by streams.
        served: Arc<AtomicU64>,
    }

    #[async_trait::async_trait]
    impl Target for Streaming {
        fn caps(&self) -> TargetCaps {
            TargetCaps {
                stream_reads: true,
                ..self.local.caps()
            }
        }
        async fn put_stream(&self, k: &ObjectKey, b: Body, o: bool) -> Result<u64, TargetError> {
            self.local.put_stream(k, b, o).await
        }
        async fn get_range(&self, k: &ObjectKey, r: Range<u64>) -> Result<Bytes, TargetError> {
            self.served.fetch_add(r.end - r.start, Ordering::SeqCst);
            self.local.get_range(k, r).await
        }
        async fn read_stream(
            &self,
            key: &ObjectKey,
            range: Range<u64>,
        ) -> Result<ByteStream, TargetError> {
            self.opened.fetch_add(1, Ordering::SeqCst);
            let whole = self.local.get_range(key, range.clone()).await?;
            let cut = (self.break_after as usize).min(whole.len());
            let mut items: Vec<Result<Bytes, TargetError>> = whole
                .slice(..cut)
                .chunks(1 << 20)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            if cut < whole.len() {
                items.push(Err(TargetError::Transient {
                    target: "streaming".into(),
                    op: "read",
                    key: key.to_string(),
                    detail: "connection reset".into(),
                }));
            }
            let served = self.served.clone();
            Ok(Box::pin(futures_util::stream::iter(items).inspect(
                move |item| {
                    if let Ok(piece) = item {
                        served.fetch_add(piece.len() as u64, Ordering::SeqCst);
                    }
                },
            )))
        }
        async fn size(&self, k: &ObjectKey) -> Result<u64, TargetError> {
            self.local.size(k).await
        }
        async fn list(&self, d: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
            self.local.list(d).await
        }
        async fn delete(&self, k: &ObjectKey) -> Result<(), TargetError> {
            self.local.delete(k).await
        }
        async fn mkdirs(&self, d: &ObjectKey) -> Result<(), TargetError> {
            self.local.mkdirs(d).await
        }
        async fn free_space(&self) -> Result<Option<u64>, TargetError> {
            self.local.free_space().await
        }
    }

    /// Reads in order, across block boundaries, slightly out of order, scattered and past
    /// the end, each checked against `data`.
    fn read_all_ways(target: &Arc<dyn Target>, data: &[u8]) {
        let rt = Runtime::new().expect("runtime");
        let key = ObjectKey::new("img").expect("key");
        let part = (1, &key, data.len() as u64);
        let ahead = ReadAhead::default();
        let read = |offset: u64, len: usize| {
            let mut buf = vec![0u8; len];
            let served = ahead.read(&rt, target, part, &mut buf, offset);
            (
                served.map(|r| r.map(|()| buf)),
                offset as usize..offset as usize + len,
            )
        };
        // A scattered read is left to the caller.
        assert!(read(19 << 20, 100).0.is_none());
        let _ = read(0, 4096);
        let mut at = 4096u64;
        for len in [3_000_000usize, 7_000_001, 5_000_000, 1] {
            let (got, range) = read(at, len);
            let got = got.expect("in order").expect("read");
            assert!(got == data[range], "read at {at} of {len}");
            at += len as u64;
        }
        let (got, range) = read(at - 10, 20);
        assert!(got.expect("in order").expect("read") == data[range]);
        let rest = data.len() - at as usize;
        let (got, range) = read(at, rest);
        assert!(got.expect("in order").expect("read") == data[range]);
        // Past the end: left to the target, which refuses it.
        assert!(read(data.len() as u64 - 4, 8).0.is_none());
    }

    #[test]
    fn reads_by_ranges_and_by_streams_return_the_right_bytes() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("img"), &data).expect("write");
        let ranged: Arc<dyn Target> = Arc::new(LocalTarget::new(dir.path()));
        read_all_ways(&ranged, &data);
        // A stream that breaks inside the first block: the reader waits for that block, so
        // the break is seen (and the stream gone) before it asks for blocks past the first
        // two, which then come from a new stream. A break further on could come after
        // every block was already asked of the first stream, and no new one would be needed.
        for break_after in [u64::MAX, 3 << 20] {
            let streaming = Arc::new(Streaming {
                local: LocalTarget::new(dir.path()),
                break_after,
                opened: AtomicU64::new(0),
                served: Arc::default(),
            });
            let target: Arc<dyn Target> = streaming.clone();
            read_all_ways(&target, &data);
            let opened = streaming.opened.load(Ordering::SeqCst);
            // Broken streams are replaced (their blocks read by range meanwhile).
            assert!(
                opened >= if break_after == u64::MAX { 1 } else { 2 },
                "streams opened: {opened} (break after {break_after})"
            );
        }
    }

    #[test]
    fn opening_then_restoring_an_image_reads_each_byte_about_once() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("img"), &data).expect("write");
        let streaming = Arc::new(Streaming {
            local: LocalTarget::new(dir.path()),
            break_after: u64::MAX,
            opened: AtomicU64::new(0),
            served: Arc::default(),
        });
        let target: Arc<dyn Target> = streaming.clone();
        let rt = Runtime::new().expect("runtime");
        let key = ObjectKey::new("img").expect("key");
        let size = data.len() as u64;
        let ahead = ReadAhead::default();
        // As the storage does: through the read-ahead, or else straight from the target.
        let read = |offset: u64, len: u64| {
            let mut buf = vec![0u8; len as usize];
            match ahead.read(&rt, &target, (1, &key, size), &mut buf, offset) {
                Some(r) => r.expect("read"),
                None => buf.copy_from_slice(
                    &rt.block_on(target.get_range(&key, offset..offset + len))
                        .expect("read"),
                ),
            }
            let at = offset as usize;
            assert!(
                buf == data[at..at + len as usize],
                "read at {offset} of {len}"
            );
        };
        // Opening: header, trailer, the rest of the header, the index before the trailer.
        let index = size - 168 - 80_000;
        read(0, 4096);
        read(size - 168, 168);
        read(4096, 597);
        read(index, 80_000);
        // Restoring: frames in order up to the index.
        let mut at = 4693;
        while at < index {
            let len = (4u64 << 20).min(index - at);
            read(at, len);
            at += len;
        }
        let served = streaming.served.load(Ordering::SeqCst);
        assert!(
            served <= size + HEAD + TAIL,
            "{served} bytes read for an image of {size}"
        );
    }
}
