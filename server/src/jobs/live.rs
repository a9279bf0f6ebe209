//! The live progress of running runs, as consoles show it: kept by the instance whose
//! agent reports it, and passed to the other instances on a shared store (their copies
//! are marked remote and replaced by each note).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cluster::relay::Progress;

/// Log lines kept per run.
const LOG_LINES: usize = 50;
/// A copy from another instance not refreshed for this long is dropped (that instance
/// went away; the run's agent reports elsewhere or its run ends).
const REMOTE_STALE: Duration = Duration::from_secs(600);

/// The latest progress of a running run, as the console shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveProgress {
    pub stage: String,
    pub done: u64,
    pub total: u64,
    /// Bytes per second, smoothed.
    pub rate: f64,
    /// Seconds left at this rate.
    pub eta_seconds: Option<u64>,
    /// The latest log lines.
    #[schema(value_type = Vec<String>)]
    pub log: VecDeque<String>,
    /// When it last changed here.
    #[serde(skip)]
    at: Option<Instant>,
    /// The agent running it: only it may report progress.
    #[serde(skip)]
    pub(crate) agent_id: i64,
    /// Copied from another instance's note, not reported here.
    #[serde(skip)]
    remote: bool,
}

impl LiveProgress {
    fn new(agent_id: i64) -> Self {
        Self {
            stage: "starting".into(),
            done: 0,
            total: 0,
            rate: 0.0,
            eta_seconds: None,
            log: VecDeque::new(),
            at: None,
            agent_id,
            remote: false,
        }
    }
}

/// Every run followed here, and what changed since it was last passed on.
#[derive(Default)]
pub struct Board {
    runs: Mutex<Runs>,
}

#[derive(Default)]
struct Runs {
    live: HashMap<i64, LiveProgress>,
    changed: HashSet<i64>,
    ended: Vec<i64>,
}

impl Board {
    fn runs(&self) -> std::sync::MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The progress of run `id`, while it runs.
    pub fn get(&self, id: i64) -> Option<LiveProgress> {
        self.runs().live.get(&id).cloned()
    }

    /// The agent of run `id` when it is followed (here or as a copy).
    pub fn agent_of(&self, id: i64) -> Option<i64> {
        self.runs().live.get(&id).map(|p| p.agent_id)
    }

    /// Follow run `id` of `agent_id` here (when not followed yet, or only as a copy).
    pub fn follow(&self, id: i64, agent_id: i64) {
        let mut runs = self.runs();
        let p = runs
            .live
            .entry(id)
            .or_insert_with(|| LiveProgress::new(agent_id));
        if p.remote {
            *p = LiveProgress::new(agent_id);
        }
    }

    /// Run `id` ended: forgotten here, and by the other instances.
    pub fn end(&self, id: i64) {
        let mut runs = self.runs();
        if runs.live.remove(&id).is_some() {
            runs.changed.remove(&id);
            runs.ended.push(id);
        }
    }

    /// A progress event of run `id` (followed here).
    pub fn progress(&self, id: i64, stage: String, done: u64, total: u64) {
        let mut runs = self.runs();
        let Some(p) = runs.live.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        if p.stage == stage && done >= p.done && !p.remote {
            if let Some(at) = p.at {
                let secs = now.duration_since(at).as_secs_f64();
                if secs > 0.0 {
                    let rate = (done - p.done) as f64 / secs;
                    // Smoothed so one slow moment does not swing the estimate.
                    p.rate = if p.rate == 0.0 {
                        rate
                    } else {
                        0.7 * p.rate + 0.3 * rate
                    };
                }
            }
        } else {
            p.rate = 0.0;
        }
        p.remote = false;
        p.stage = stage;
        p.done = done;
        p.total = total;
        p.at = Some(now);
        p.eta_seconds =
            (p.rate > 0.0).then(|| (total.saturating_sub(done) as f64 / p.rate).round() as u64);
        runs.changed.insert(id);
    }

    /// A log line of run `id` (followed here).
    pub fn log(&self, id: i64, line: String) {
        let mut runs = self.runs();
        let Some(p) = runs.live.get_mut(&id) else {
            return;
        };
        if p.log.len() == LOG_LINES {
            p.log.pop_front();
        }
        p.log.push_back(line);
        p.remote = false;
        runs.changed.insert(id);
    }

    /// What changed here since the last call: progress of runs followed here, and runs
    /// that ended.
    pub fn take_changes(&self) -> (Vec<Progress>, Vec<i64>) {
        let mut runs = self.runs();
        let changed = std::mem::take(&mut runs.changed);
        let ended = std::mem::take(&mut runs.ended);
        let progress = changed
            .into_iter()
            .filter_map(|id| {
                let p = runs.live.get(&id).filter(|p| !p.remote)?;
                Some(Progress {
                    run: id,
                    agent: p.agent_id,
                    stage: p.stage.clone(),
                    done: p.done,
                    total: p.total,
                    rate: p.rate,
                    eta_seconds: p.eta_seconds,
                    log: p.log.iter().cloned().collect(),
                })
            })
            .collect();
        (progress, ended)
    }

    /// Another instance's progress and ended runs. A run followed here keeps its own.
    pub fn merge_remote(&self, progress: Vec<Progress>, ended: &[i64]) {
        let mut runs = self.runs();
        let now = Instant::now();
        for id in ended {
            if runs.live.get(id).is_some_and(|p| p.remote) {
                runs.live.remove(id);
            }
        }
        for p in progress {
            if runs.live.get(&p.run).is_some_and(|mine| !mine.remote) {
                continue;
            }
            runs.live.insert(
                p.run,
                LiveProgress {
                    stage: p.stage,
                    done: p.done,
                    total: p.total,
                    rate: p.rate,
                    eta_seconds: p.eta_seconds,
                    log: p.log.into_iter().rev().take(LOG_LINES).rev().collect(),
                    at: Some(now),
                    agent_id: p.agent,
                    remote: true,
                },
            );
        }
        runs.live
            .retain(|_, p| !p.remote || p.at.is_some_and(|at| at.elapsed() < REMOTE_STALE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_passes_to_another_board_and_ends_there() {
        let (here, there) = (Board::default(), Board::default());
        here.follow(1, 9);
        here.progress(1, "imaging".into(), 10, 100);
        here.log(1, "info: started".into());
        let (progress, ended) = here.take_changes();
        assert_eq!(progress.len(), 1);
        there.merge_remote(progress, &ended);
        let copy = there.get(1).expect("copied");
        assert_eq!((copy.done, copy.total, copy.log.len()), (10, 100, 1));
        assert_eq!(there.agent_of(1), Some(9));
        // Nothing new: nothing to pass on; a copy is never passed on again.
        assert_eq!(here.take_changes().0.len(), 0);
        assert_eq!(there.take_changes().0.len(), 0);
        here.end(1);
        let (progress, ended) = here.take_changes();
        there.merge_remote(progress, &ended);
        assert!(there.get(1).is_none());
    }

    #[test]
    fn a_run_followed_here_is_not_overwritten_by_a_copy() {
        let board = Board::default();
        board.follow(1, 9);
        board.progress(1, "imaging".into(), 50, 100);
        board.merge_remote(
            vec![Progress {
                run: 1,
                agent: 9,
                stage: "old".into(),
                done: 5,
                total: 100,
                rate: 0.0,
                eta_seconds: None,
                log: vec![],
            }],
            &[1],
        );
        assert_eq!(board.get(1).map(|p| p.done), Some(50));
    }
}
