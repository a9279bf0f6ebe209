//! Output: one JSON document (its types are in `crate::outcome`), or text and a progress bar on a terminal, or progress as
//! JSON lines on stderr for the daemon that runs the command as a job.

use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use holdfast_image::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// How often progress lines are printed.
const LINE_EVERY: Duration = Duration::from_millis(500);

/// Progress as JSON lines: `{"stage":"write","done":N,"total":N}`.
struct Lines {
    stage: String,
    done: u64,
    total: u64,
    printed: Instant,
}

impl Lines {
    fn print(&mut self) {
        let line = serde_json::json!({"stage": self.stage, "done": self.done, "total": self.total});
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        self.printed = Instant::now();
    }
}

/// A progress bar on stderr when it is a terminal and JSON was not asked for; progress
/// lines when asked for.
pub struct Bar {
    bar: Option<ProgressBar>,
    lines: Option<Mutex<Lines>>,
}

impl Bar {
    /// A bar, progress lines, or nothing, as `common` asks.
    pub fn new(common: &crate::cli::Common) -> Self {
        let lines = common.progress_lines.then(|| {
            Mutex::new(Lines {
                stage: String::new(),
                done: 0,
                total: 0,
                printed: Instant::now(),
            })
        });
        let json = common.json || common.progress_lines;
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self { bar, lines }
    }

    /// Remove the bar (print the last progress line).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let Some(l) = &self.lines {
            l.lock().unwrap_or_else(|p| p.into_inner()).print();
        }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.set_message(name.to_owned());
            b.set_length(total);
            b.set_position(0);
            b.reset_eta();
        }
        if let Some(l) = &self.lines {
            let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
            l.stage = name.to_owned();
            l.done = 0;
            l.total = total;
            l.print();
        }
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        if let Some(l) = &self.lines {
            let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
            l.done += n;
            if l.printed.elapsed() >= LINE_EVERY {
                l.print();
            }
        }
    }
}

/// Human-readable bytes (binary units).
pub use holdfast_proto::human_bytes as bytes;
