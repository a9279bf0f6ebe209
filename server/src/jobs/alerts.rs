//! Mails beyond a job's own rule: a daily digest of the last day's runs, and an alert when
//! an agent that has jobs has had no successful backup for N hours (which also catches jobs
//! that never ran: no report, no success).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::report_xml::time;
use super::Dispatcher;
use crate::store::{RunState, StoreError};

/// The settings key of the alert rules.
pub const ALERTS_KEY: &str = "alerts";

/// The daily digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub recipients: Vec<String>,
    /// Local time it goes out (`HH:MM`).
    pub time: String,
    /// IANA time zone (`UTC` by default).
    #[serde(default = "utc")]
    pub timezone: String,
}

/// The "no successful backup for N hours" alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stale {
    pub recipients: Vec<String>,
    pub hours: u32,
}

fn utc() -> String {
    "UTC".into()
}

/// Alert rules (settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    #[serde(default)]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub stale: Option<Stale>,
}

impl Alerts {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(d) = &self.digest {
            crate::mail::mailboxes(&d.recipients).map_err(|e| format!("digest: {e}"))?;
            chrono::NaiveTime::parse_from_str(&d.time, "%H:%M")
                .map_err(|_| format!("digest: '{}' is not a time (HH:MM)", d.time))?;
            d.timezone
                .parse::<Tz>()
                .map_err(|_| format!("digest: unknown time zone '{}'", d.timezone))?;
        }
        if let Some(s) = &self.stale {
            crate::mail::mailboxes(&s.recipients).map_err(|e| format!("stale: {e}"))?;
            if !(1..=24 * 90).contains(&s.hours) {
                return Err("stale: hours must be 1 to 2160".into());
            }
        }
        Ok(())
    }
}

/// Look at the rules at `now`: send the digest when its time has come today (once a day,
/// across restarts), and alert for agents without a success for too long (once per
/// period of silence).
pub async fn check(jobs: &Dispatcher, now: DateTime<Utc>) -> Result<(), StoreError> {
    let Some((value, _)) = jobs.store.setting(ALERTS_KEY).await? else {
        return Ok(());
    };
    let Ok(rules) = serde_json::from_str::<Alerts>(&value) else {
        return Ok(());
    };
    if let Some(d) = &rules.digest {
        digest(jobs, d, now).await?;
    }
    if let Some(s) = &rules.stale {
        stale(jobs, s, now).await?;
    }
    Ok(())
}

/// Mail that a verify run of `job` on `host` found `damaged` images (name, what is wrong):
/// to the job's notification recipients and the stale-backup alert's, whatever their rules
/// say about ordinary reports. Nobody to tell: logged only.
pub async fn damaged_images(
    jobs: &Dispatcher,
    job: &crate::store::jobs::JobRow,
    host: &str,
    run_id: i64,
    damaged: &[(String, String)],
) -> Result<(), StoreError> {
    let mut to: Vec<String> = Vec::new();
    if let Ok(spec) = jobs.spec_of(job).await {
        to.extend(spec.notify.map(|n| n.recipients).unwrap_or_default());
    }
    if let Some((value, _)) = jobs.store.setting(ALERTS_KEY).await? {
        if let Ok(rules) = serde_json::from_str::<Alerts>(&value) {
            to.extend(rules.stale.map(|s| s.recipients).unwrap_or_default());
        }
    }
    to.sort();
    to.dedup();
    if to.is_empty() {
        tracing::warn!(
            job = job.id,
            run = run_id,
            "damaged images found and nobody to mail"
        );
        return Ok(());
    }
    let subject = format!(
        "[Holdfast] Damaged image{}: {} on {host}",
        if damaged.len() == 1 { "" } else { "s" },
        job.name
    );
    let mut body = format!(
        "A verify run of job '{}' on {host} (report {run_id}) found {} stored image(s) damaged:\n\n",
        job.name,
        damaged.len()
    );
    for (name, detail) in damaged {
        let _ = writeln!(body, "- {name}: {detail}");
    }
    body.push_str(
        "\nThey are marked damaged (the console shows it on their page), and the job's next run starts a new chain with a full image.\n",
    );
    jobs.store
        .enqueue_mail("damaged", &to.join(", "), &subject, &body)
        .await?;
    Ok(())
}

async fn digest(jobs: &Dispatcher, d: &Digest, now: DateTime<Utc>) -> Result<(), StoreError> {
    let (Ok(tz), Ok(at)) = (
        d.timezone.parse::<Tz>(),
        chrono::NaiveTime::parse_from_str(&d.time, "%H:%M"),
    ) else {
        return Ok(());
    };
    let local = now.with_timezone(&tz);
    if local.time() < at {
        return Ok(());
    }
    let day = local.date_naive().to_string();
    let key = "alerts:digest:last";
    if jobs
        .store
        .setting(key)
        .await?
        .is_some_and(|(v, _)| v == day)
    {
        return Ok(());
    }
    let since = now.timestamp() - 86_400;
    let runs = jobs.store.runs_ended_since(since).await?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &runs {
        *counts.entry(r.state.as_str()).or_default() += 1;
    }
    let mut body = format!(
        "Holdfast: runs that ended in the 24 hours before {}\n\n",
        time(now.timestamp())
    );
    if runs.is_empty() {
        body.push_str("No run ended.\n");
    }
    for (state, n) in &counts {
        let _ = writeln!(body, "{state:<11} {n}");
    }
    let bad: Vec<_> = runs
        .iter()
        .filter(|r| r.state != RunState::Successful)
        .collect();
    if !bad.is_empty() {
        body.push_str("\nNot successful:\n");
        for r in bad {
            let _ = writeln!(
                body,
                "  report {:>6}  {:<10} {} on agent {} ({})",
                r.id,
                r.state,
                r.name,
                r.agent_id,
                r.ended_at.map(time).unwrap_or_default()
            );
        }
    }
    let subject = format!(
        "[Holdfast] Daily digest {day}: {} successful, {} not",
        counts
            .get(RunState::Successful.as_str())
            .copied()
            .unwrap_or(0),
        runs.len()
            - counts
                .get(RunState::Successful.as_str())
                .copied()
                .unwrap_or(0)
    );
    jobs.store
        .enqueue_mail("digest", &d.recipients.join(", "), &subject, &body)
        .await?;
    jobs.store.set_setting(key, &day, Some(None)).await
}

async fn stale(jobs: &Dispatcher, s: &Stale, now: DateTime<Utc>) -> Result<(), StoreError> {
    let limit = i64::from(s.hours) * 3600;
    let now_s = now.timestamp();
    let last = jobs.store.last_success().await?;
    // Agents that have an enabled job, and since when (the oldest such job).
    let mut watched: HashMap<i64, i64> = HashMap::new();
    let mut after = 0;
    loop {
        let page = jobs.store.jobs(after, 500).await?;
        let Some(end) = page.last().map(|j| j.id) else {
            break;
        };
        for j in page.into_iter().filter(|j| j.enabled) {
            if let Ok(spec) = jobs.spec_of(&j).await {
                for a in spec.agents {
                    let since = watched.entry(a).or_insert(j.created_at);
                    *since = (*since).min(j.created_at);
                }
            }
        }
        after = end;
    }
    for (agent, since) in watched {
        let reference = last.get(&agent).copied().unwrap_or(since);
        if now_s - reference < limit {
            continue;
        }
        // Once per silence: again only after another full period.
        let key = format!("alerts:stale:{agent}");
        if let Some((v, _)) = jobs.store.setting(&key).await? {
            if v.parse::<i64>().is_ok_and(|t| now_s - t < limit) {
                continue;
            }
        }
        let name = jobs
            .store
            .agent(agent)
            .await?
            .map(|a| a.hostname)
            .unwrap_or_else(|| format!("agent {agent}"));
        let what = match last.get(&agent) {
            Some(t) => format!("its last successful backup ended {}", time(*t)),
            None => format!(
                "it has had jobs since {} and none has succeeded",
                time(since)
            ),
        };
        let subject = format!(
            "[Holdfast] No successful backup of {name} for {} hours",
            s.hours
        );
        let body = format!(
            "Agent {agent} ({name}) has had no successful backup for more than {} hours: {what}.\n\
             Look at its reports and its connection to the server.\n",
            s.hours
        );
        jobs.store
            .enqueue_mail("alert", &s.recipients.join(", "), &subject, &body)
            .await?;
        jobs.store
            .set_setting(&key, &now_s.to_string(), Some(None))
            .await?;
        tracing::warn!(agent, "no successful backup for {} hours", s.hours);
    }
    Ok(())
}

/// Run the checks every minute until the task is dropped (on the leading instance only:
/// each digest and alert goes out once).
pub fn spawn(jobs: std::sync::Arc<Dispatcher>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            if jobs.cluster.leadership.leading().await.is_none() {
                continue;
            }
            if let Err(e) = check(&jobs, Utc::now()).await {
                tracing::error!(error = %e, "alert check failed");
            }
        }
    })
}
