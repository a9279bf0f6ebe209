//! Read-ahead for images read from a target.
//!
//! Restore and validate read an image front to back in frame-sized pieces. Over a network,
//! one range request at a time waits a round trip (FTP even logs in again) for each frame.
//! Once reads run in order, this reads the part ahead in fixed blocks, several requests in
//! flight (as many as the target's connection cap lets through), and serves the reads from
//! those blocks. Scattered reads (header, index, trailer) go straight to the target.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use holdfast_targets::{ObjectKey, Target, TargetError};
use tokio::runtime::Runtime;

/// Bytes per read-ahead request.
const BLOCK: u64 = 8 << 20;
/// Blocks requested ahead at first; doubled while reads stay in order, up to [`MAX_WINDOW`].
const FIRST_WINDOW: u64 = 1;
const MAX_WINDOW: u64 = 6;
/// Blocks kept behind the current read, for readers on several threads slightly out of order.
const KEEP_BEHIND: u64 = 1;

type Fetch = Shared<BoxFuture<'static, Result<Bytes, Arc<TargetError>>>>;

/// The read-ahead state of one image (all its parts).
#[derive(Default)]
pub struct ReadAhead {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Part the blocks belong to, and its size.
    part: Option<(u32, u64)>,
    blocks: BTreeMap<u64, Fetch>,
    /// Last block the previous read touched.
    last: Option<u64>,
    window: u64,
}

impl ReadAhead {
    /// Fill `buf` from `key` (part `part` of `size` bytes) at `offset` through the blocks,
    /// when reads run in order; `None` when this read should go straight to the target.
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
                return None;
            }
            st.blocks.retain(|&b, _| b + KEEP_BEHIND >= first);
            let ahead = last + st.window;
            for b in first..=ahead {
                let start = b * BLOCK;
                if start >= size {
                    break;
                }
                st.blocks
                    .entry(b)
                    .or_insert_with(|| fetch(rt, target, key, start..(start + BLOCK).min(size)));
            }
            st.window = (st.window * 2).min(MAX_WINDOW);
            (first..=last)
                .filter_map(|b| st.blocks.get(&b).map(|f| (b, f.clone())))
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
        for (b, f) in fetches {
            let data = match rt.block_on(f) {
                Ok(d) => d,
                Err(e) => {
                    // Forget the failed block, so the next read asks again.
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.blocks.remove(&b);
                    return Some(Err(crate::storage::to_io(&e)));
                }
            };
            let block_start = b * BLOCK;
            let from = offset.max(block_start);
            let to = end.min(block_start + data.len() as u64);
            if to <= from {
                return Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the part is shorter than its size said",
                )));
            }
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - block_start) as usize..(to - block_start) as usize]);
        }
        Some(Ok(()))
    }
}

/// Start reading `range` of `key` now; the result can be awaited by any reader.
fn fetch(
    rt: &Runtime,
    target: &Arc<dyn Target>,
    key: &ObjectKey,
    range: std::ops::Range<u64>,
) -> Fetch {
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
    use super::*;
    use holdfast_targets::local::LocalTarget;

    #[test]
    fn reads_in_order_and_scattered_return_the_right_bytes() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let data: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("img"), &data).expect("write");
        let rt = Runtime::new().expect("runtime");
        let target: Arc<dyn Target> = Arc::new(LocalTarget::new(dir.path()));
        let key = ObjectKey::new("img").expect("key");
        let part = (1, &key, data.len() as u64);
        let ahead = ReadAhead::default();
        let read = |offset: u64, len: usize| {
            let mut buf = vec![0u8; len];
            let served = ahead.read(&rt, &target, part, &mut buf, offset);
            (
                served.map(|r| r.map(|()| buf)),
                offset as usize..offset as usize + len,
            )
        };
        // A scattered read is left to the caller.
        assert!(read(19 << 20, 100).0.is_none());
        // Reads in order, across block boundaries, slightly out of order, to the very end.
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
}
