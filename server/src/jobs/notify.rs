//! Report mails: when a run ends and its job's rule asks for it, a mail with the report is
//! put in the outbox (the sender delivers it; a job never waits for mail).

use holdfast_proto::RunReport;

use super::report_xml::time;
use crate::mail::{SmtpSettings, SMTP_KEY};
use crate::store::jobs::RunRow;
use crate::store::{RunState, StoreError};

/// Bytes in binary units.
fn size(n: i64) -> String {
    holdfast_proto::human_bytes(u64::try_from(n).unwrap_or(0))
}

/// The report as mail text.
pub fn body(run: &RunRow, computer: &str, report: Option<&RunReport>, text: &str) -> String {
    let mut b = String::new();
    if !text.trim().is_empty() {
        b.push_str(text.trim());
        b.push_str("\n\n");
    }
    b.push_str(&format!(
        "Job:       {}\nComputer:  {computer} (agent {})\nStatus:    {}\nReport id: {}\n",
        run.name, run.agent_id, run.state, run.id
    ));
    if let Some(t) = run.scheduled_for {
        b.push_str(&format!("Scheduled: {}\n", time(t)));
    }
    if let (Some(s), Some(e)) = (run.started_at, run.ended_at) {
        b.push_str(&format!("Start:     {}\nEnd:       {}\n", time(s), time(e)));
    }
    b.push_str(&format!(
        "Read:      {}\nWritten:   {}\n",
        size(run.bytes_read),
        size(run.bytes_written)
    ));
    if let Some(r) = report {
        for i in &r.images {
            b.push_str(&format!(
                "Image:     {} ({:?}, {})\n",
                i.name,
                i.method,
                size(i.bytes as i64)
            ));
        }
        b.push_str("\nSteps:\n");
        for s in &r.steps {
            b.push_str(&format!(
                "  {}  {:<7}  {}{}\n",
                time(s.at),
                format!("{:?}", s.status).to_lowercase(),
                s.title,
                if s.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.detail)
                }
            ));
        }
    }
    b
}

/// Put the report mail of run `run_id` in the outbox when its job's rule asks for it.
pub async fn run_ended(jobs: &super::Dispatcher, run_id: i64) -> Result<(), StoreError> {
    let store = &jobs.store;
    let Some(run) = store.run(run_id).await? else {
        return Ok(());
    };
    let Some(job) = (match run.job_id {
        Some(j) => store.job(j).await?,
        None => None,
    }) else {
        return Ok(());
    };
    // A site's notification rule applies when the job has none (sites read from the
    // dispatcher's cache: many runs can end at once).
    let Ok(spec) = jobs.spec_of(&job).await else {
        return Ok(());
    };
    let Some(rule) = spec.notify.filter(|n| n.when.matches(run.state)) else {
        return Ok(());
    };
    let computer = store
        .agent(run.agent_id)
        .await?
        .map(|a| a.hostname)
        .unwrap_or_else(|| format!("agent {}", run.agent_id));
    let template = store
        .setting(SMTP_KEY)
        .await?
        .and_then(|(v, _)| serde_json::from_str::<SmtpSettings>(&v).ok())
        .map(|s| s.subject_template)
        .unwrap_or_else(|| "[Holdfast] $STATUS: $JOB on $COMPUTER".into());
    let subject = template
        .replace("$STATUS", run.state.as_str())
        .replace("$JOB", &run.name)
        .replace("$COMPUTER", &computer)
        .replace("$REPORT", &run.id.to_string());
    let report: Option<RunReport> = run
        .report
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let text = body(&run, &computer, report.as_ref(), &rule.text);
    let kind = if run.state == RunState::Missed {
        "missed"
    } else {
        "report"
    };
    store
        .enqueue_mail(kind, &rule.recipients.join(", "), &subject, &text)
        .await?;
    Ok(())
}
