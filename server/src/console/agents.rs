//! Agents: the list with filters and enrolment, and one agent's page with its disks drawn
//! to scale (as DiskView does), its jobs, images and reports.

use std::collections::{HashMap, HashSet};

use askama::Template;
use axum::extract::{Path, Query, State};
use serde::Deserialize;

use super::view::{self, bytes, when};
use super::{render, site_names, PageError, PageResult, Session, Shell};
use crate::app::AppState;
use crate::http::ApiError;
use crate::store::jobs::RunFilter;
use crate::store::{AgentStatus, RunState};

pub struct AgentLine {
    pub id: i64,
    pub hostname: String,
    pub status: AgentStatus,
    pub os: String,
    pub version: String,
    /// Older than the server: an installation over SSH upgrades it.
    pub older: bool,
    pub site: String,
    pub last_seen: String,
    pub last_backup: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct Agents {
    shell: Shell,
    agents: Vec<AgentLine>,
    /// Id, name, chosen in the filter.
    sites: Vec<(i64, String, bool)>,
    q: String,
    status: String,
    total: usize,
    server_version: &'static str,
}

/// True when agent version `v` is known and older than this server's.
fn older_than_server(v: &str) -> bool {
    let parse = |v: &str| -> Option<Vec<u64>> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().ok())
            .collect()
    };
    match (parse(v), parse(env!("CARGO_PKG_VERSION"))) {
        (Some(a), Some(s)) => a < s,
        _ => false,
    }
}

#[derive(Deserialize)]
pub struct Filters {
    #[serde(default)]
    q: String,
    #[serde(default, deserialize_with = "empty_none")]
    site: Option<i64>,
    #[serde(default)]
    status: String,
}

/// An empty select value is "any".
fn empty_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(f): Query<Filters>,
) -> PageResult {
    let store = &state.store;
    let sites: Vec<(i64, String)> = site_names(&state).await?;
    let site_names: HashMap<i64, &str> = sites.iter().map(|(i, n)| (*i, n.as_str())).collect();
    let busy: HashSet<i64> = store
        .running_runs()
        .await?
        .iter()
        .map(|r| r.agent_id)
        .collect();
    let last = store.last_success().await?;
    let all = store.agent_list().await?;
    let total = all.len();
    let q = f.q.trim().to_lowercase();
    let agents = all
        .iter()
        .filter(|a| q.is_empty() || a.hostname.to_lowercase().contains(&q))
        .filter(|a| f.site.is_none() || a.site_id == f.site)
        .map(|a| {
            let status = view::agent_state(&state, a, &busy);
            AgentLine {
                id: a.id,
                hostname: a.hostname.clone(),
                status,
                os: a.os.clone(),
                version: a.agent_version.clone(),
                older: older_than_server(&a.agent_version),
                site: a
                    .site_id
                    .and_then(|s| site_names.get(&s).map(|n| (*n).to_owned()))
                    .unwrap_or_default(),
                last_seen: if status.is_connected() {
                    "now".into()
                } else {
                    view::ago(a.last_seen_at)
                },
                last_backup: view::ago(last.get(&a.id).copied()),
            }
        })
        .filter(|a| f.status.is_empty() || a.status.as_str() == f.status)
        .collect();
    Ok(render(Agents {
        shell: session.shell("agents"),
        agents,
        sites: sites
            .iter()
            .map(|(id, n)| (*id, n.clone(), f.site == Some(*id)))
            .collect(),
        q: f.q,
        status: f.status,
        total,
        server_version: env!("CARGO_PKG_VERSION"),
    }))
}

/// One partition or free space on a disk bar, as a share of the disk.
pub struct Segment {
    pub label: String,
    pub detail: String,
    pub percent: f64,
    pub used_percent: f64,
    pub free: bool,
}

pub struct DiskView {
    pub title: String,
    pub segments: Vec<Segment>,
    /// Its volumes, one line each.
    pub volumes: Vec<VolumeLine>,
}

/// A volume as listed under its disk.
pub struct VolumeLine {
    pub name: String,
    pub size: String,
    pub filesystem: String,
    /// Where it is mounted, and how (empty: not mounted).
    pub mounted: String,
    pub used: String,
    /// How a job images it consistently now.
    pub consistency: String,
}

pub struct JobLine {
    pub id: i64,
    pub name: String,
    pub enabled: bool,
}

pub struct ImageLine {
    pub name: String,
    pub method: String,
    pub bytes: String,
    pub at: String,
    pub run_id: i64,
}

pub struct ReportLine {
    pub id: i64,
    pub name: String,
    pub state: RunState,
    pub at: String,
    pub written: String,
}

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentPage {
    shell: Shell,
    id: i64,
    hostname: String,
    status: AgentStatus,
    os: String,
    version: String,
    site: String,
    enrolled: String,
    last_seen: String,
    inventory_at: String,
    disks: Vec<DiskView>,
    jobs: Vec<JobLine>,
    images: Vec<ImageLine>,
    reports: Vec<ReportLine>,
    revoked: bool,
    /// Why the server refused the agent's channel (another protocol version), and when.
    refusal: Option<(String, String)>,
    /// Bandwidth limit of its target transfers (empty: none).
    bandwidth: String,
}

pub async fn show(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<i64>,
) -> PageResult {
    let store = &state.store;
    let a = store
        .agent(id)
        .await?
        .ok_or_else(|| PageError(ApiError::NotFound(format!("agent {id}"))))?;
    let inventory: Option<holdfast_proto::Inventory> = a
        .inventory
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let disks = inventory.as_ref().map(disk_views).unwrap_or_default();
    let site = match a.site_id {
        Some(s) => store.site(s).await?.map(|s| s.name).unwrap_or_default(),
        None => String::new(),
    };
    let mut jobs = Vec::new();
    for j in store.jobs(0, i64::MAX).await? {
        if let Ok(spec) = state.jobs.spec_of(&j).await {
            if spec.agents.contains(&id) {
                jobs.push(JobLine {
                    id: j.id,
                    name: j.name.clone(),
                    enabled: j.enabled,
                });
            }
        }
    }
    let images = store
        .agent_images(id, 50)
        .await?
        .into_iter()
        .map(|i| ImageLine {
            name: i.name,
            method: i.method,
            bytes: bytes(i.bytes),
            at: when(Some(i.created_at)),
            run_id: i.run_id,
        })
        .collect();
    let filter = RunFilter {
        agent_id: Some(id),
        ..RunFilter::default()
    };
    let reports = store
        .runs(&filter, i64::MAX, 20)
        .await?
        .into_iter()
        .map(|r| ReportLine {
            id: r.id,
            name: r.name,
            state: r.state,
            at: when(r.ended_at.or(r.started_at).or(Some(r.created_at))),
            written: bytes(r.bytes_written),
        })
        .collect();
    let status = state.agent_status(&a);
    Ok(render(AgentPage {
        shell: session.shell("agents"),
        id,
        hostname: a.hostname.clone(),
        status,
        os: a.os.clone(),
        version: a.agent_version.clone(),
        site,
        enrolled: when(Some(a.enrolled_at)),
        last_seen: if status.is_connected() {
            "now".into()
        } else {
            view::ago(a.last_seen_at)
        },
        inventory_at: when(a.inventory_at),
        disks,
        jobs,
        images,
        reports,
        revoked: a.revoked_at.is_some(),
        refusal: a.refusal.clone().map(|why| (why, view::ago(a.refused_at))),
        bandwidth: a.bandwidth.clone().unwrap_or_default(),
    }))
}

/// Each disk as a bar: its partitions at their offsets and sizes (used space shaded), the
/// gaps between them as free space. A disk that is one filesystem is one segment.
fn disk_views(inv: &holdfast_proto::Inventory) -> Vec<DiskView> {
    inv.disks
        .iter()
        .map(|d| {
            let size = d.size.max(1) as f64;
            let mut parts: Vec<&holdfast_proto::inventory::Volume> = inv
                .volumes
                .iter()
                .filter(|v| {
                    v.disk.as_deref() == Some(d.name.as_str())
                        || (v.disk.is_none() && v.name == d.name)
                })
                .collect();
            parts.sort_by_key(|v| v.start);
            let volumes = parts.iter().map(|v| volume_line(v)).collect();
            let mut segments = Vec::new();
            let mut at = 0u64;
            for v in parts {
                if v.start > at + (1 << 20) {
                    segments.push(free(v.start - at, size));
                }
                let used = v.used.map(|u| u as f64 / v.size.max(1) as f64 * 100.0);
                let mut detail = format!("{} {}", v.name, holdfast_proto::human_bytes(v.size));
                if let Some(fs) = &v.filesystem {
                    detail.push_str(&format!(", {fs}"));
                }
                if let Some(l) = &v.label {
                    detail.push_str(&format!(", label {l}"));
                }
                if let Some(m) = &v.mount_point {
                    detail.push_str(&format!(", mounted at {m}"));
                }
                if let Some(u) = v.used {
                    detail.push_str(&format!(", {} used", holdfast_proto::human_bytes(u)));
                }
                segments.push(Segment {
                    label: format!("{} {}", v.name, v.filesystem.as_deref().unwrap_or("")),
                    detail,
                    percent: v.size as f64 / size * 100.0,
                    used_percent: used.unwrap_or(0.0).min(100.0),
                    free: false,
                });
                at = at.max(v.start + v.size);
            }
            if d.size > at + (1 << 20) {
                segments.push(free(d.size - at, size));
            }
            let what = match (&d.backing, &d.model) {
                (Some(b), _) => b.describe(),
                (None, Some(m)) => m.clone(),
                (None, None) => "disk".to_owned(),
            };
            DiskView {
                title: format!(
                    "{} · {} · {what}{}",
                    d.name,
                    holdfast_proto::human_bytes(d.size),
                    d.partition_table
                        .as_deref()
                        .map(|t| format!(" · {}", t.to_uppercase()))
                        .unwrap_or_default()
                ),
                segments,
                volumes,
            }
        })
        .collect()
}

/// How a job images a volume with these methods available, for people (the agent page and
/// the job wizard).
pub(super) fn consistency_summary(methods: &[holdfast_proto::job::ConsistencyMethod]) -> String {
    use holdfast_proto::job::ConsistencyMethod as M;
    match methods {
        [] => String::new(),
        [M::Unmounted] => "as it is (not mounted read-write)".to_owned(),
        m if m.contains(&M::LvmSnapshot) => {
            "LVM snapshot available (auto); or freeze, lock, live".to_owned()
        }
        m if m.contains(&M::DmSnapshot) => {
            "device-mapper snapshot available (auto); or freeze, lock, live".to_owned()
        }
        m if m.contains(&M::Freeze) => {
            "no snapshot: frozen while imaging (auto, within the job's limit); or lock, live"
                .to_owned()
        }
        _ => "no snapshot, cannot be frozen: lock (remount read-only) or live".to_owned(),
    }
}

fn volume_line(v: &holdfast_proto::inventory::Volume) -> VolumeLine {
    let consistency = consistency_summary(&v.consistency);
    VolumeLine {
        name: v.name.clone(),
        size: holdfast_proto::human_bytes(v.size),
        filesystem: v.filesystem.clone().unwrap_or_default(),
        mounted: v
            .mount_point
            .as_ref()
            .map(|m| {
                format!(
                    "{m} ({})",
                    if v.read_write {
                        "read-write"
                    } else {
                        "read-only"
                    }
                )
            })
            .unwrap_or_default(),
        used: v.used.map(holdfast_proto::human_bytes).unwrap_or_default(),
        consistency,
    }
}

fn free(len: u64, disk: f64) -> Segment {
    Segment {
        label: "free".into(),
        detail: format!("unallocated {}", holdfast_proto::human_bytes(len)),
        percent: len as f64 / disk * 100.0,
        used_percent: 0.0,
        free: true,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn older_agents_are_told_apart() {
        assert!(super::older_than_server("0.0.9"));
        assert!(!super::older_than_server(env!("CARGO_PKG_VERSION")));
        assert!(!super::older_than_server("99.0.0"));
        assert!(!super::older_than_server("sim"));
        assert!(!super::older_than_server(""));
    }
}
