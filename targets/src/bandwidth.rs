//! Bandwidth limits with time windows, and a wrapper that holds any target to them.
//!
//! A limit is a list of rules, the first whose window contains the present moment (local
//! time) applies; a rule without a window always matches; when none matches, transfers are
//! unlimited. Written as text, the way admins type it in the console or on the command line:
//!
//! ```text
//! 20M@mon-fri/08:00-18:00,unlimited      20 MiB/s on weekdays' working hours, else no limit
//! 5M@mon-fri/07:30-19:00,50M@sat+sun     weekends faster, weekday nights unlimited
//! 512K                                    always
//! ```
//!
//! Rates are bytes per second with binary units (`K`, `M`, `G`); days `mon`…`sun`, ranges with
//! `-` and lists with `+`, `*` for every day; times `HH:MM[:SS]`, the end may be `24:00`, and a
//! window may cross midnight (`22:00-06:00`). The rate is looked up again every time bytes
//! pass, so a transfer changes speed when a window starts or ends.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{Datelike as _, Timelike as _};
use futures_util::StreamExt as _;

use crate::error::TargetError;
use crate::{Body, ByteStream, ObjectKey, ObjectMeta, Target, TargetCaps};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A bandwidth limit: rules, the first matching one applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bandwidth {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Bytes per second; None: unlimited.
    rate: Option<u64>,
    when: Option<Window>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// Bit d set: the window opens on day d (0 = Monday).
    days: u8,
    /// Seconds after midnight.
    from: u32,
    to: u32,
}

impl Window {
    fn on(&self, day: u32) -> bool {
        self.days & (1 << (day % 7)) != 0
    }

    /// True at `secs` after midnight on `day` (0 = Monday).
    fn contains(&self, day: u32, secs: u32) -> bool {
        if self.from < self.to {
            self.on(day) && (self.from..self.to).contains(&secs)
        } else {
            // Across midnight: from the start on an opening day to the end on the next day.
            (self.on(day) && secs >= self.from) || (self.on(day + 6) && secs < self.to)
        }
    }
}

fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("rate '{text}': a number of bytes per second (e.g. 20M) or unlimited")
    })?;
    let unit = unit.trim().trim_end_matches("/s");
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("rate '{text}': unit {unit} (K, M or G)")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!("rate '{text}': a limit of 0 stops every transfer")),
        Some(r) => Ok(Some(r)),
        None => Err(format!("rate '{text}' is too large")),
    }
}

fn parse_day(text: &str) -> Result<u32, String> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(text))
        .map(|p| p as u32)
        .ok_or_else(|| format!("day '{text}' (mon, tue, wed, thu, fri, sat, sun)"))
}

fn parse_days(text: &str) -> Result<u8, String> {
    if text == "*" {
        return Ok(0x7f);
    }
    let mut days = 0u8;
    for part in text.split('+') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (parse_day(a)?, parse_day(b)?),
            None => (parse_day(part)?, parse_day(part)?),
        };
        let mut d = a;
        loop {
            days |= 1 << d;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

fn parse_time(text: &str) -> Result<u32, String> {
    let bad = || format!("time '{text}' (HH:MM or HH:MM:SS)");
    let mut parts = text.split(':');
    let mut field = |max: u32| -> Result<u32, String> {
        let v: u32 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        if v > max {
            return Err(bad());
        }
        Ok(v)
    };
    let (h, m) = (field(24)?, field(59)?);
    let s = match parts.next() {
        Some(s) => s.parse::<u32>().ok().filter(|s| *s < 60).ok_or_else(bad)?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    let secs = h * 3600 + m * 60 + s;
    if secs > 86_400 {
        return Err(bad());
    }
    Ok(secs)
}

fn parse_window(text: &str) -> Result<Window, String> {
    let (days, times) = match text.split_once('/') {
        Some((d, t)) => (parse_days(d)?, Some(t)),
        None => (parse_days(text)?, None),
    };
    let (from, to) = match times {
        Some(t) => {
            let (a, b) = t
                .split_once('-')
                .ok_or_else(|| format!("hours '{t}' (HH:MM-HH:MM)"))?;
            (parse_time(a)?, parse_time(b)?)
        }
        None => (0, 86_400),
    };
    if from == to {
        return Err(format!("window '{text}' is empty"));
    }
    Ok(Window { days, from, to })
}

fn show_time(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// Days as runs: three or more in a row as `mon-fri`, others listed with `+`.
fn show_days(w: Window) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut d = 0;
    while d < 7 {
        if !w.on(d) {
            d += 1;
            continue;
        }
        let start = d;
        while d + 1 < 7 && w.on(d + 1) {
            d += 1;
        }
        let (a, b) = (DAYS[start as usize], DAYS[d as usize]);
        match d - start {
            0 => parts.push(a.to_owned()),
            1 => parts.push(format!("{a}+{b}")),
            _ => parts.push(format!("{a}-{b}")),
        }
        d += 1;
    }
    parts.join("+")
}

fn show_rate(rate: Option<u64>) -> String {
    match rate {
        None => "unlimited".into(),
        Some(r) if r % (1 << 30) == 0 => format!("{}G", r >> 30),
        Some(r) if r % (1 << 20) == 0 => format!("{}M", r >> 20),
        Some(r) if r % (1 << 10) == 0 => format!("{}K", r >> 10),
        Some(r) => r.to_string(),
    }
}

impl std::str::FromStr for Bandwidth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text.len() > 1000 {
            return Err("a bandwidth limit is 1 to 1000 characters".into());
        }
        let rules = text
            .split(',')
            .map(|rule| {
                let rule = rule.trim();
                let (rate, when) = match rule.split_once('@') {
                    Some((r, w)) => (parse_rate(r.trim())?, Some(parse_window(w.trim())?)),
                    None => (parse_rate(rule)?, None),
                };
                Ok(Rule { rate, when })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { rules })
    }
}

impl std::fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&show_rate(rule.rate))?;
            if let Some(w) = rule.when {
                let days = if w.days == 0x7f {
                    "*".to_owned()
                } else {
                    show_days(w)
                };
                write!(f, "@{days}/{}-{}", show_time(w.from), show_time(w.to))?;
            }
        }
        Ok(())
    }
}

impl Bandwidth {
    /// Bytes per second at `secs` after midnight on `day` (0 = Monday); None: unlimited.
    pub fn rate_at(&self, day: u32, secs: u32) -> Option<u64> {
        self.rules
            .iter()
            .find(|r| r.when.is_none_or(|w| w.contains(day, secs)))
            .and_then(|r| r.rate)
    }

    /// The rate now, in the machine's local time.
    pub fn rate_now(&self) -> Option<u64> {
        let now = chrono::Local::now();
        self.rate_at(
            now.weekday().num_days_from_monday(),
            now.num_seconds_from_midnight(),
        )
    }
}

/// Holds transfers to the lowest of several limits (a target's and an agent's), as a token
/// bucket that lets at most a tenth of a second of traffic through at once.
pub struct Throttle {
    limits: Vec<Bandwidth>,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes that may pass now (negative: owed).
    tokens: f64,
    last: Instant,
}

/// Longest sleep before the rate is looked up again.
const RECHECK: Duration = Duration::from_millis(100);

impl Throttle {
    pub fn new(limits: Vec<Bandwidth>) -> Self {
        Self {
            limits,
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// The lowest rate of the limits now (None: unlimited).
    pub fn rate_now(&self) -> Option<u64> {
        self.limits.iter().filter_map(Bandwidth::rate_now).min()
    }

    /// Refill at the current rate; the bytes owed (0 when none), and that rate.
    fn refill(&self, take: usize) -> (f64, Option<u64>) {
        let rate = self.rate_now();
        let mut b = match self.bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        match rate {
            None => {
                b.tokens = 0.0;
                (0.0, None)
            }
            Some(r) => {
                let r = r as f64;
                b.tokens = (b.tokens + r * elapsed).min(r / 10.0) - take as f64;
                ((-b.tokens).max(0.0), Some(r as u64))
            }
        }
    }

    /// Let `n` bytes pass: returns once they fit the limit.
    pub async fn take(&self, n: usize) {
        let mut owed = self.refill(n);
        while let (debt, Some(rate)) = owed {
            if debt <= 0.0 {
                return;
            }
            // Sleep in short steps, looking the rate up again: a window may start or end.
            let wait = Duration::from_secs_f64(debt / rate as f64).min(RECHECK);
            tokio::time::sleep(wait).await;
            owed = self.refill(0);
        }
    }
}

/// Largest read passed through at once, so the rate is checked often.
const READ_STEP: usize = 64 << 10;

/// An upload body held to a throttle: each read waits for the bytes before it to fit.
struct ThrottledBody {
    inner: Body,
    /// Where each read lands before it is passed on (allocated once).
    step: Vec<u8>,
    throttle: Arc<Throttle>,
    waiting: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl tokio::io::AsyncRead for ThrottledBody {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if let Some(w) = self.waiting.as_mut() {
            match w.as_mut().poll(cx) {
                Poll::Ready(()) => self.waiting = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        let room = buf.remaining().min(READ_STEP);
        let this = &mut *self;
        let mut part = tokio::io::ReadBuf::new(&mut this.step[..room]);
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                let n = part.filled().len();
                buf.put_slice(part.filled());
                if n > 0 {
                    let throttle = Arc::clone(&self.throttle);
                    self.waiting = Some(Box::pin(async move { throttle.take(n).await }));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// Any target, its uploads and downloads held to a throttle.
pub struct Throttled<T> {
    inner: T,
    throttle: Arc<Throttle>,
}

impl<T: Target> Throttled<T> {
    pub fn new(inner: T, throttle: Arc<Throttle>) -> Self {
        Self { inner, throttle }
    }
}

#[async_trait]
impl<T: Target> Target for Throttled<T> {
    fn caps(&self) -> TargetCaps {
        self.inner.caps()
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        let body = ThrottledBody {
            inner: body,
            step: vec![0; READ_STEP],
            throttle: Arc::clone(&self.throttle),
            waiting: None,
        };
        self.inner.put_stream(key, Box::new(body), overwrite).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        let data = self.inner.get_range(key, range).await?;
        self.throttle.take(data.len()).await;
        Ok(data)
    }

    async fn read_stream(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<ByteStream, TargetError> {
        let throttle = Arc::clone(&self.throttle);
        let stream = self.inner.read_stream(key, range).await?;
        Ok(Box::pin(stream.then(move |piece| {
            let throttle = Arc::clone(&throttle);
            async move {
                if let Ok(p) = &piece {
                    throttle.take(p.len()).await;
                }
                piece
            }
        })))
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        self.inner.size(key).await
    }

    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        self.inner.list(dir).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        self.inner.delete(key).await
    }

    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        self.inner.mkdirs(dir).await
    }

    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        self.inner.free_space().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(s: &str) -> Bandwidth {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_shows_limits() {
        for text in [
            "20M@mon-fri/08:00-18:00,unlimited",
            "5M@mon+wed+thu/07:30-19:00,50M@sat+sun/00:00-24:00",
            "512K",
            "1G@*/22:00-06:00:30",
            "1000",
        ] {
            assert_eq!(bw(text).to_string(), text);
        }
        assert_eq!(
            bw("20 MiB @ sat+sun").to_string(),
            "20M@sat+sun/00:00-24:00"
        );
        for bad in [
            "",
            "0",
            "20X",
            "fast",
            "20M@someday",
            "20M@mon/08:00",
            "20M@mon/25:00-26:00",
            "20M@mon/08:00-08:00",
            "20M@mon/08:60-09:00",
            "99999999999999G",
        ] {
            assert!(bad.parse::<Bandwidth>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_matching_window_applies() {
        let b = bw("20M@mon-fri/08:00-18:00,50M@sat+sun,unlimited");
        let h = |h: u32| h * 3600;
        assert_eq!(b.rate_at(0, h(8)), Some(20 << 20)); // Monday 08:00
        assert_eq!(b.rate_at(4, h(18) - 1), Some(20 << 20)); // Friday 17:59:59
        assert_eq!(b.rate_at(4, h(18)), None); // Friday 18:00
        assert_eq!(b.rate_at(5, h(12)), Some(50 << 20)); // Saturday
        assert_eq!(b.rate_at(6, h(23)), Some(50 << 20)); // Sunday night
                                                         // Across midnight: Friday 22:00 to Saturday 06:00, not Sunday night.
        let night = bw("1M@fri/22:00-06:00");
        assert_eq!(night.rate_at(4, h(23)), Some(1 << 20));
        assert_eq!(night.rate_at(5, h(5)), Some(1 << 20));
        assert_eq!(night.rate_at(5, h(6)), None);
        assert_eq!(night.rate_at(6, h(23)), None);
        assert_eq!(night.rate_at(0, h(1)), None);
        // Wrapping day ranges: sat-mon.
        let weekend = bw("1M@sat-mon");
        assert!([5, 6, 0].iter().all(|d| weekend.rate_at(*d, 0).is_some()));
        assert!(weekend.rate_at(1, 0).is_none());
    }
}
