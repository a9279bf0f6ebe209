//! Notes between instances, through PostgreSQL's `LISTEN`/`NOTIFY`: the live progress of
//! the runs each instance follows (so every console shows every run moving), and requests
//! for an agent connected to another instance (cancel a run, close a revoked agent's
//! channel). Notes are fire-and-forget: one lost while a listener reconnects costs a
//! second of progress, and a cancel is asked again by the admin.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;

use super::Cluster;
use crate::jobs::Dispatcher;

/// The notification channel.
pub const CHANNEL: &str = "holdfast";
/// A notification's payload must stay under PostgreSQL's 8000 bytes.
const PAYLOAD_MAX: usize = 7000;
/// How often changed progress is passed on.
const PUBLISH: Duration = Duration::from_secs(1);

/// A run's progress as its instance passes it on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub run: i64,
    pub agent: i64,
    pub stage: String,
    pub done: u64,
    pub total: u64,
    pub rate: f64,
    pub eta_seconds: Option<u64>,
    pub log: Vec<String>,
}

/// What one instance tells the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Note {
    /// Progress of runs followed by instance `from`, and runs that ended there.
    Live {
        from: String,
        runs: Vec<Progress>,
        ended: Vec<i64>,
    },
    /// Cancel `run` on `agent` (for the instance the agent is connected to).
    Cancel { from: String, agent: i64, run: i64 },
    /// Close `agent`'s channel: it was revoked.
    Kick { from: String, agent: i64 },
    /// Runs were queued: look at the queue now rather than at the next tick.
    Queued { from: String },
}

impl Note {
    fn from(&self) -> &str {
        match self {
            Note::Live { from, .. }
            | Note::Cancel { from, .. }
            | Note::Kick { from, .. }
            | Note::Queued { from } => from,
        }
    }

    /// The note as notification payloads, each small enough (a long progress note is
    /// split by runs; a single run's log is cut to fit).
    pub fn payloads(&self) -> Vec<String> {
        let Note::Live { from, runs, ended } = self else {
            return serde_json::to_string(self).into_iter().collect();
        };
        let note = |runs: Vec<Progress>, ended: Vec<i64>| Note::Live {
            from: from.clone(),
            runs,
            ended,
        };
        let size = |n: &Note| serde_json::to_string(n).map_or(0, |s| s.len());
        let mut out = Vec::new();
        let mut batch: Vec<Progress> = Vec::new();
        let mut batch_ended = ended.clone();
        for p in runs {
            let mut p = p.clone();
            while size(&note(vec![p.clone()], Vec::new())) > PAYLOAD_MAX / 2 && !p.log.is_empty() {
                p.log.remove(0);
            }
            batch.push(p);
            if size(&note(batch.clone(), batch_ended.clone())) > PAYLOAD_MAX {
                let last = batch.pop().into_iter().collect();
                out.extend(serde_json::to_string(&note(
                    std::mem::replace(&mut batch, last),
                    std::mem::take(&mut batch_ended),
                )));
            }
        }
        out.extend(serde_json::to_string(&note(batch, batch_ended)));
        out
    }
}

/// Listen for the other instances' notes and act on them, until the task is dropped;
/// reconnects when the connection drops.
pub fn spawn_listener(
    url: String,
    cluster: Arc<Cluster>,
    jobs: Arc<Dispatcher>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = listen(&url, &cluster, &jobs).await {
                tracing::warn!(error = %e, "notes from other instances: connection lost");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn listen(url: &str, cluster: &Cluster, jobs: &Arc<Dispatcher>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    loop {
        let n = listener.recv().await?;
        let note: Note = match serde_json::from_str(n.payload()) {
            Ok(note) => note,
            Err(e) => {
                tracing::warn!(error = %e, "malformed note from another instance ignored");
                continue;
            }
        };
        if note.from() == cluster.id {
            continue;
        }
        match note {
            Note::Live { runs, ended, .. } => jobs.merge_remote(runs, &ended),
            Note::Cancel { agent, run, .. } => {
                if jobs.gateway.is_online(agent) {
                    let jobs = jobs.clone();
                    tokio::spawn(async move {
                        if let Err(e) = jobs.cancel_here(agent, run).await {
                            tracing::warn!(run, error = %e, "cancel asked by another instance failed");
                        }
                    });
                }
            }
            Note::Kick { agent, .. } => jobs.gateway.kick(agent),
            Note::Queued { .. } => jobs.queue_changed.notify_one(),
        }
    }
}

/// Pass on, once a second, the progress of the runs this instance follows that changed.
pub fn spawn_publisher(
    cluster: Arc<Cluster>,
    jobs: Arc<Dispatcher>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PUBLISH);
        loop {
            tick.tick().await;
            let (runs, ended) = jobs.take_changes();
            if runs.is_empty() && ended.is_empty() {
                continue;
            }
            let note = Note::Live {
                from: cluster.id.clone(),
                runs,
                ended,
            };
            cluster.tell(&note).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(run: i64, lines: usize) -> Progress {
        Progress {
            run,
            agent: 7,
            stage: "imaging".into(),
            done: 10,
            total: 100,
            rate: 1.5,
            eta_seconds: Some(60),
            log: (0..lines)
                .map(|i| format!("info: line {i} {}", "x".repeat(100)))
                .collect(),
        }
    }

    #[test]
    fn long_progress_notes_are_split_and_every_run_arrives() {
        let runs: Vec<Progress> = (0..200).map(|r| progress(r, 3)).collect();
        let note = Note::Live {
            from: "a".into(),
            runs: runs.clone(),
            ended: vec![5, 6],
        };
        let payloads = note.payloads();
        assert!(payloads.len() > 1);
        let mut got = Vec::new();
        let mut ended = Vec::new();
        for p in &payloads {
            assert!(p.len() <= PAYLOAD_MAX, "{}", p.len());
            match serde_json::from_str::<Note>(p).expect("note") {
                Note::Live { runs, ended: e, .. } => {
                    got.extend(runs);
                    ended.extend(e);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, runs);
        assert_eq!(ended, vec![5, 6]);
    }

    #[test]
    fn a_run_with_a_long_log_keeps_its_latest_lines() {
        let note = Note::Live {
            from: "a".into(),
            runs: vec![progress(1, 200)],
            ended: vec![],
        };
        let payloads = note.payloads();
        assert_eq!(payloads.len(), 1);
        let Note::Live { runs, .. } = serde_json::from_str::<Note>(&payloads[0]).expect("note")
        else {
            panic!("not live");
        };
        assert!(!runs[0].log.is_empty() && runs[0].log.len() < 200);
        assert!(runs[0].log.last().is_some_and(|l| l.contains("line 199")));
    }

    #[test]
    fn notes_of_another_shape_are_refused() {
        assert!(serde_json::from_str::<Note>(r#"{"kind":"cancel","from":"a","agent":1}"#).is_err());
        assert!(serde_json::from_str::<Note>(r#"{"kind":"reboot","from":"a"}"#).is_err());
    }
}
