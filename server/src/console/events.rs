//! Server-sent events for open console pages: once a second, the progress of every running
//! run and the state of every agent, as one `state` event.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use serde::Serialize;

use super::{view, Session};
use crate::app::AppState;

const EVERY: Duration = Duration::from_secs(1);
/// Events between checks that the session is still valid (a logout ends its streams).
const RECHECK: u32 = 30;

#[derive(Serialize)]
struct RunState {
    id: i64,
    percent: u32,
    text: String,
}

#[derive(Serialize)]
struct LiveState {
    runs: Vec<RunState>,
    agents: BTreeMap<i64, &'static str>,
}

async fn snapshot(state: &AppState) -> Option<Event> {
    // Queued runs too: a page that shows one learns when it starts and ends.
    let mut runs = state.store.running_runs().await.ok()?;
    runs.extend(state.store.queued_runs().await.ok()?);
    let busy: std::collections::HashSet<i64> = runs
        .iter()
        .filter(|r| r.state == crate::store::RunState::Running)
        .map(|r| r.agent_id)
        .collect();
    let agents = state
        .store
        .agent_list()
        .await
        .ok()?
        .iter()
        .map(|a| (a.id, view::agent_state(state, a, &busy).as_str()))
        .collect();
    let runs = runs
        .iter()
        .map(|r| {
            let (percent, text) = view::progress(state, r.id);
            RunState {
                id: r.id,
                percent,
                text,
            }
        })
        .collect();
    Event::default()
        .event("state")
        .json_data(LiveState { runs, agents })
        .ok()
}

pub async fn stream(State(state): State<AppState>, session: Session) -> impl IntoResponse {
    // The session was checked to get here; it is checked again now and then, so that a
    // logout or an expiry also ends the stream.
    let session = session.key;
    let events = futures_util::stream::unfold((state, 0u32), move |(state, n)| {
        let session = session.clone();
        async move {
            if n > 0 {
                tokio::time::sleep(EVERY).await;
            }
            if n > 0 && n % RECHECK == 0 {
                match state.store.session_user(&session).await {
                    Ok(Some(_)) => {}
                    _ => return None,
                }
            }
            let event = snapshot(&state)
                .await
                .unwrap_or_else(|| Event::default().comment("store unavailable"));
            Some((Ok::<_, Infallible>(event), (state, n.wrapping_add(1))))
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
