//! The states of runs and agents: one enum each, used by the store, the API and the console.
//! Their names (`as_str`) are what the database holds and the API and reports show; nowhere
//! else compares those strings.

use std::fmt;
use std::str::FromStr;

use holdfast_proto::RunStatus;
use serde::{Deserialize, Serialize};

/// Where a run is: waiting, under way, or how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for its agent (or a free slot).
    Queued,
    /// Handed to the agent.
    Running,
    Successful,
    /// Done, with something to look at (a fallback, a retry, a skipped step).
    Warning,
    Failed,
    Cancelled,
    /// Its start fell outside its time frame (the agent was away).
    Missed,
}

impl RunState {
    /// Every state, in the order a run goes through them.
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Running,
        Self::Successful,
        Self::Warning,
        Self::Failed,
        Self::Cancelled,
        Self::Missed,
    ];

    /// The states of a run that did not end well: what the dashboard lists.
    pub const TROUBLE: [Self; 4] = [Self::Failed, Self::Missed, Self::Warning, Self::Cancelled];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Successful => "successful",
            Self::Warning => "warning",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Missed => "missed",
        }
    }

    /// Queued or running.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }

    /// The names of every state, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl From<RunStatus> for RunState {
    fn from(s: RunStatus) -> Self {
        match s {
            RunStatus::Successful => Self::Successful,
            RunStatus::Warning => Self::Warning,
            RunStatus::Failed => Self::Failed,
            RunStatus::Cancelled => Self::Cancelled,
            RunStatus::Missed => Self::Missed,
        }
    }
}

/// A name that is not a run state.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a run state (one of: {names})", names = RunState::names())]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownRunState(s.to_owned()))
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent as the API and the console show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Revoked by an admin: it can no longer connect.
    Revoked,
    /// Its channel is open and it runs a job.
    Busy,
    /// Its channel is open.
    Online,
    /// No channel.
    Offline,
}

impl AgentStatus {
    /// The name shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Busy => "busy",
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }

    /// Its channel is open (online or busy).
    pub fn is_connected(self) -> bool {
        matches!(self, Self::Online | Self::Busy)
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_states_round_trip_by_name() {
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().ok(), Some(s));
            assert_eq!(
                serde_json::to_string(&s).ok(),
                Some(format!("\"{}\"", s.as_str()))
            );
        }
        let e = "done".parse::<RunState>().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("queued, running")));
    }
}
