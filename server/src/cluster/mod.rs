//! Several server instances on one PostgreSQL store: who this instance is, which other
//! instances live (each beats in the store), which one leads the work that must happen
//! once ([`leader`]), and the notes they pass each other ([`relay`]).
//!
//! Every instance serves the console, the API and the agents connected to it, and hands
//! queued runs to those agents; an agent's row names the instance its channel is open on,
//! so every console shows it online. With SQLite there is one instance ([`Cluster::sole`]).

pub mod leader;
pub mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::agents::Agent;
use crate::store::Store;
pub use leader::Leadership;
pub use relay::Note;

/// How often an instance beats.
pub const BEAT: Duration = Duration::from_secs(1);
/// An instance silent this long is gone: its agents show offline until they reconnect
/// elsewhere.
const SILENT: Duration = Duration::from_secs(5);
/// Gone instances are forgotten after this long.
const FORGET: Duration = Duration::from_secs(3600);

/// This instance among the others.
pub struct Cluster {
    /// Unique to this process: host, listening port and a random part.
    pub id: String,
    /// As people read it: host and listening address.
    pub name: String,
    pub leadership: Leadership,
    /// Other instances that beat lately: id → name.
    others: Mutex<HashMap<String, String>>,
    /// The store other instances share (PostgreSQL), for beats and notes.
    shared: Option<Store>,
}

impl Cluster {
    /// The only instance on its store (SQLite).
    pub fn sole(name: &str) -> Self {
        Self {
            id: instance_id(name),
            name: name.to_owned(),
            leadership: Leadership::Sole,
            others: Mutex::default(),
            shared: None,
        }
    }

    /// One of the instances on the PostgreSQL store at `url`, standing for election with
    /// terms of `lease`; the election runs until the returned task is dropped.
    pub fn shared(
        store: Store,
        url: String,
        name: &str,
        lease: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let id = instance_id(name);
        let (leadership, campaign) = Leadership::elect(store.clone(), url, id.clone(), lease);
        (
            Self {
                id,
                name: name.to_owned(),
                leadership,
                others: Mutex::default(),
                shared: Some(store),
            },
            campaign,
        )
    }

    fn others(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.others.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The name of the other live instance agent `a`'s channel is open on.
    pub fn elsewhere(&self, a: &Agent) -> Option<String> {
        let on = a.instance.as_deref().filter(|i| *i != self.id)?;
        self.others().get(on).cloned()
    }

    /// Other live instances' names.
    pub fn other_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.others().values().cloned().collect();
        names.sort();
        names
    }

    /// Pass `note` to the other instances (nothing to do alone).
    pub async fn tell(&self, note: &Note) {
        let Some(store) = &self.shared else {
            return;
        };
        for payload in note.payloads() {
            if let Err(e) = store.notify(relay::CHANNEL, &payload).await {
                tracing::warn!(error = %e, "cannot pass a note to the other instances");
            }
        }
    }

    /// Beat in the store and learn which instances live, until the task is dropped (a
    /// shared store only). The leader forgets instances gone long ago.
    pub fn spawn_beat(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let store = self.shared.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            let silent = i64::try_from(SILENT.as_millis()).unwrap_or(i64::MAX);
            let forget = i64::try_from(FORGET.as_millis()).unwrap_or(i64::MAX);
            let mut tick = tokio::time::interval(BEAT);
            loop {
                tick.tick().await;
                if let Err(e) = store.instance_beat(&me.id, &me.name).await {
                    tracing::warn!(error = %e, "cannot beat in the store");
                    continue;
                }
                match store.live_instances(silent).await {
                    Ok(live) => {
                        *me.others() = live
                            .into_iter()
                            .filter(|i| i.id != me.id)
                            .map(|i| (i.id, i.name))
                            .collect();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the live instances"),
                }
                if me.leadership.believes_leading() {
                    if let Err(e) = store.forget_instances(forget).await {
                        tracing::warn!(error = %e, "cannot forget gone instances");
                    }
                    // Installations of instances that stopped end failed.
                    let mut live: Vec<String> = me.others().keys().cloned().collect();
                    live.push(me.id.clone());
                    if let Err(e) = store
                        .end_abandoned_installs(
                            &live,
                            "its server instance stopped during the installation",
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "cannot end abandoned installations");
                    }
                }
            }
        }))
    }
}

/// A new instance id: `name`, then random hex (a restarted process is another instance).
fn instance_id(name: &str) -> String {
    let mut bytes = [0u8; 6];
    let random = getrandom::getrandom(&mut bytes)
        .map(|()| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_else(|_| std::process::id().to_string());
    format!("{name}/{random}")
}
