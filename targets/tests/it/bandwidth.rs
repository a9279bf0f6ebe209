//! Bandwidth limits measured on real transfers: an upload crossing a window boundary changes
//! rate within a second of it, and downloads keep to the limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Timelike as _;
use holdfast_targets::bandwidth::{Bandwidth, Throttle, Throttled};
use holdfast_targets::local::LocalTarget;
use holdfast_targets::{ObjectKey, Target};

use crate::conformance::noise;

const MIB: f64 = 1048576.0;

/// A body that notes when each byte was handed on.
struct Timed {
    data: std::io::Cursor<Vec<u8>>,
    log: Arc<Mutex<Vec<(Instant, u64)>>>,
}

impl tokio::io::AsyncRead for Timed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.data).poll_read(cx, buf);
        let pos = self.data.position();
        if buf.filled().len() > before {
            if let Ok(mut log) = self.log.lock() {
                log.push((Instant::now(), pos));
            }
        }
        r
    }
}

/// Bytes per second between `from` and `to` (offsets from `t0`), from the log.
fn rate(log: &[(Instant, u64)], t0: Instant, from: f64, to: f64) -> f64 {
    let at = |secs: f64| {
        let t = if secs >= 0.0 {
            t0 + Duration::from_secs_f64(secs)
        } else {
            t0 - Duration::from_secs_f64(-secs)
        };
        log.iter()
            .take_while(|(when, _)| *when <= t)
            .last()
            .map_or(0, |(_, bytes)| *bytes)
    };
    (at(to) - at(from)) as f64 / (to - from)
}

fn hms(secs: u32) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_changes_rate_when_a_window_ends() {
    // A window that ends three seconds from now (not across midnight).
    let mut now = chrono::Local::now();
    if now.num_seconds_from_midnight() > 86_400 - 20 {
        tokio::time::sleep(Duration::from_secs(21)).await;
        now = chrono::Local::now();
    }
    let secs = now.num_seconds_from_midnight();
    let end = secs + 3;
    let limit: Bandwidth = format!("1M@*/{}-{},4M", hms(secs.saturating_sub(60)), hms(end))
        .parse()
        .expect("limit");
    // The boundary, as an instant: three seconds after `now`, less what has passed.
    let boundary = Instant::now()
        + Duration::from_millis(3000).saturating_sub(Duration::from_millis(u64::from(
            now.nanosecond() / 1_000_000,
        )));
    let dir = tempfile::tempdir_in("/var/tmp").expect("dir");
    let t = Throttled::new(
        LocalTarget::new(dir.path()),
        Arc::new(Throttle::new(vec![limit])),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let body = Timed {
        data: std::io::Cursor::new(noise(20 << 20, 1)),
        log: Arc::clone(&log),
    };
    let k = ObjectKey::new("limited.bin").expect("key");
    t.put_stream(&k, Box::new(body), false)
        .await
        .expect("upload");
    let log = log.lock().expect("log").clone();
    let before = rate(&log, boundary, -2.0, -0.2) / MIB;
    let first = rate(&log, boundary, 0.2, 1.0) / MIB;
    let after = rate(&log, boundary, 1.0, 3.0) / MIB;
    eprintln!("MiB/s: {before:.2} before, {first:.2} in the first second after, {after:.2} after");
    assert!(
        (0.7..1.3).contains(&before),
        "before the boundary: {before:.2} MiB/s"
    );
    assert!(
        first > 2.5,
        "in the second after the boundary: {first:.2} MiB/s"
    );
    assert!(
        (3.0..5.0).contains(&after),
        "after the boundary: {after:.2} MiB/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_keep_to_the_limit() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("dir");
    let k = ObjectKey::new("data.bin").expect("key");
    let data = noise(3 << 20, 2);
    std::fs::write(dir.path().join("data.bin"), &data).expect("write");
    let limit: Bandwidth = "1M".parse().expect("limit");
    let t = Throttled::new(
        LocalTarget::new(dir.path()),
        Arc::new(Throttle::new(vec![limit])),
    );
    let t0 = Instant::now();
    let mut log = Vec::new();
    let mut got = Vec::new();
    for start in (0..data.len() as u64).step_by(128 << 10) {
        let piece = t
            .get_range(&k, start..start + (128 << 10))
            .await
            .expect("range");
        got.extend_from_slice(&piece);
        log.push((Instant::now(), got.len() as u64));
    }
    assert!(got == data);
    let r = rate(&log, t0, 0.5, 2.5) / MIB;
    assert!((0.7..1.3).contains(&r), "{r:.2} MiB/s");
}
