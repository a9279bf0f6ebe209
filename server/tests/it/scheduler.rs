//! The scheduler driven by a test clock (each look is given its time window), over the
//! real store and gateway, with simulated agents on the gateway that accept every order.

use crate::changed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use holdfast_proto::job::{Coverage, ImageKind, ImageWritten, Step, StepStatus};
use holdfast_proto::request::{Acceptance, RunAccepted, RunList};
use holdfast_proto::{Reply, Request, RunReport, RunStatus, ServerMsg};
use holdfast_server::gateway::Gateway;
use holdfast_server::jobs::{scheduler, Dispatcher};
use holdfast_server::store::jobs::RunFilter;
use holdfast_server::store::targets::TargetFields;
use holdfast_server::store::Store;
use holdfast_server::vault::Vault;
use serde_json::Value;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

/// An agent on the gateway that accepts every order and keeps it (the API's tests use it
/// too).
pub(crate) struct SimAgent {
    orders: Arc<Mutex<Vec<Value>>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl SimAgent {
    pub(crate) fn connect(gateway: &Arc<Gateway>, id: i64) -> Self {
        let mut reg = gateway.register(id);
        let orders = Arc::new(Mutex::new(Vec::new()));
        let (g, o) = (gateway.clone(), orders.clone());
        let task = tokio::spawn(async move {
            while let Some(msg) = reg.rx.recv().await {
                if let ServerMsg::Request { id: req, request } = msg {
                    let reply = match &request {
                        Request::ListRuns(_) => Reply::Runs(RunList::default()),
                        _ => Reply::RunAccepted(RunAccepted {
                            acceptance: Acceptance::Started,
                        }),
                    };
                    o.lock()
                        .expect("orders")
                        .push(serde_json::to_value(&request).expect("json"));
                    g.respond(req, Ok(reply));
                }
            }
        });
        Self { orders, task }
    }

    pub(crate) fn orders(&self) -> Vec<Value> {
        self.orders.lock().expect("orders").clone()
    }

    /// Wait until `n` orders arrived (deliveries run in tasks).
    pub(crate) async fn wait_orders(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let o = self.orders();
            if o.len() >= n {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {n} orders, got {:?}", self.orders());
    }
}

/// A store with two enrolled agents (alpha, beta) and a target, and a dispatcher over it.
struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    vault: Arc<Vault>,
    gateway: Arc<Gateway>,
    jobs: Arc<Dispatcher>,
    a: i64,
    b: i64,
    target: holdfast_server::store::targets::TargetRow,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Store::sqlite_url(dir.path()))
            .await
            .expect("store");
        let vault = Arc::new(Vault::open(dir.path(), None).expect("vault"));
        let gateway: Arc<Gateway> = Arc::default();
        let jobs = Arc::new(Dispatcher::new(
            store.clone(),
            gateway.clone(),
            vault.clone(),
        ));
        changed(&store, async |c| {
            c.create_enrollment_token("t", "tok", 2, i64::MAX, "admin")
                .await
        })
        .await
        .expect("token");
        let mut ids = Vec::new();
        for name in ["alpha", "beta"] {
            ids.push(
                changed(&store, async |c| c.enroll_agent("tok", name, "h").await)
                    .await
                    .expect("enrol")
                    .expect("agent"),
            );
        }
        let target = changed(&store, async |c| {
            c.create_target(&TargetFields {
                name: "nas",
                url: "/srv/images",
                username: None,
                ca_pem: None,
                host_key: None,
                bandwidth: None,
                notes: "",
            })
            .await
        })
        .await
        .expect("target");
        Self {
            _dir: dir,
            store,
            vault,
            gateway,
            jobs,
            a: ids[0],
            b: ids[1],
            target,
        }
    }
}

fn report(run_id: i64, job_id: i64, image: Option<&str>) -> RunReport {
    RunReport {
        run_id,
        job_id: Some(job_id),
        name: "nightly".into(),
        host: "alpha".into(),
        status: RunStatus::Successful,
        started_at: 1,
        ended_at: 2,
        bytes_read: 10,
        bytes_written: 5,
        images: image
            .map(|n| ImageWritten {
                name: n.into(),
                method: ImageKind::Full,
                base: None,
                image_id: "x".into(),
                bytes: 5,
                parts: 1,
                verified: Some(true),
                source: "/dev/sdb1".into(),
                source_kind: "partition".into(),
                filesystem: Some("ext4".into()),
                target: "sftp://backup@nas/images".into(),
                coverage: Some(Coverage::UsedSector),
                consistency: "unmounted".into(),
                warnings: Vec::new(),
                source_size: 1 << 30,
                sample: Vec::new(),
                changes: None,
            })
            .into_iter()
            .collect(),
        deleted: Vec::new(),
        checked: Vec::new(),
        drill: None,
        steps: vec![Step {
            at: 2,
            status: StepStatus::Ok,
            title: "Job finished".into(),
            detail: String::new(),
        }],
    }
}

async fn state_of(store: &Store, job: i64, agent: i64) -> Vec<String> {
    store
        .runs(
            &RunFilter {
                job_id: Some(job),
                agent_id: Some(agent),
                ..RunFilter::default()
            },
            i64::MAX,
            100,
        )
        .await
        .expect("runs")
        .into_iter()
        .rev()
        .map(|r| r.state.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn schedules_fire_once_wait_for_agents_chain_images_and_miss_after_the_frame() {
    let Setup {
        _dir,
        store,
        vault,
        gateway,
        jobs,
        a,
        b,
        target,
    } = Setup::new().await;
    let spec = serde_json::json!({
        "agents": [a, b],
        "source": "/dev/vdb",
        "target_id": target.id,
        "method": "incremental_chain",
        "name_template": "$TEMPL:(ComputerName)-$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day).hfi",
        "schedule": {"kind": "daily", "time": "03:00", "time_frame_minutes": 60},
    });
    let job = changed(&store, async |c| {
        c.create_job("nightly", true, &spec.to_string()).await
    })
    .await
    .expect("job")
    .id;

    // 03:00 falls due: alpha is connected and gets its order, beta is not and waits.
    let alpha = SimAgent::connect(&gateway, a);
    scheduler::once(
        &jobs,
        at("2026-11-22T02:59:00Z"),
        at("2026-11-22T03:00:30Z"),
    )
    .await
    .expect("tick");
    let orders = alpha.wait_orders(1).await;
    let order = &orders[0]["order"];
    assert_eq!(order["task"]["task"], "image", "{order}");
    assert_eq!(order["task"]["name"], "alpha-20261122.hfi", "{order}");
    assert_eq!(order["task"]["method"], "full", "{order}");
    assert_eq!(state_of(&store, job, a).await, ["running"]);
    assert_eq!(state_of(&store, job, b).await, ["queued"]);

    // Looking again, or a restarted server looking back a day, records nothing twice.
    scheduler::once(
        &jobs,
        at("2026-11-22T03:00:30Z"),
        at("2026-11-22T03:01:00Z"),
    )
    .await
    .expect("tick");
    let restarted = Arc::new(Dispatcher::new(
        store.clone(),
        gateway.clone(),
        vault.clone(),
    ));
    scheduler::once(
        &restarted,
        at("2026-11-21T03:01:00Z"),
        at("2026-11-22T03:02:00Z"),
    )
    .await
    .expect("tick after restart");
    assert_eq!(alpha.orders().len(), 1);
    assert_eq!(state_of(&store, job, a).await, ["running"]);
    assert_eq!(state_of(&store, job, b).await, ["queued"]);

    // Beta comes back within the time frame: it runs.
    let beta = SimAgent::connect(&gateway, b);
    scheduler::once(
        &jobs,
        at("2026-11-22T03:02:00Z"),
        at("2026-11-22T03:40:00Z"),
    )
    .await
    .expect("tick");
    beta.wait_orders(1).await;
    assert_eq!(state_of(&store, job, b).await, ["running"]);

    // Next night alpha has not finished: its new run waits (one run per job at a time).
    scheduler::once(
        &jobs,
        at("2026-11-23T02:59:00Z"),
        at("2026-11-23T03:00:10Z"),
    )
    .await
    .expect("tick");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(alpha.orders().len(), 1);
    assert_eq!(state_of(&store, job, a).await, ["running", "queued"]);
    // Its report arrives (with an image): the waiting run goes out as an increment on it.
    let first_a = store
        .runs(
            &RunFilter {
                agent_id: Some(a),
                state: Some(holdfast_server::store::RunState::Running),
                ..RunFilter::default()
            },
            i64::MAX,
            1,
        )
        .await
        .expect("runs")[0]
        .id;
    assert!(
        jobs.on_report(a, &report(first_a, job, Some("alpha-20261122.hfi")))
            .await
    );
    // A report for another agent's run is not taken.
    let first_b = store
        .runs(
            &RunFilter {
                agent_id: Some(b),
                state: Some(holdfast_server::store::RunState::Running),
                ..RunFilter::default()
            },
            i64::MAX,
            1,
        )
        .await
        .expect("runs")[0]
        .id;
    assert!(jobs.on_report(a, &report(first_b, job, None)).await);
    assert_eq!(state_of(&store, job, b).await, ["running", "queued"]);
    scheduler::once(
        &jobs,
        at("2026-11-23T03:00:10Z"),
        at("2026-11-23T03:00:20Z"),
    )
    .await
    .expect("tick");
    let orders = alpha.wait_orders(2).await;
    let second = &orders[1]["order"]["task"];
    assert_eq!(second["method"], "incremental", "{second}");
    assert_eq!(second["base"], "alpha-20261122.hfi", "{second}");
    assert_eq!(second["name"], "alpha-20261123.hfi", "{second}");

    // Beta finishes night one, then is away all of night two's frame: missed, with why.
    assert!(jobs.on_report(b, &report(first_b, job, None)).await);
    beta.task.abort();
    gateway.kick(b);
    scheduler::once(
        &jobs,
        at("2026-11-23T03:00:20Z"),
        at("2026-11-23T04:00:30Z"),
    )
    .await
    .expect("tick");
    assert_eq!(state_of(&store, job, b).await, ["successful", "missed"]);
    let missed = store
        .runs(
            &RunFilter {
                agent_id: Some(b),
                state: Some(holdfast_server::store::RunState::Missed),
                ..RunFilter::default()
            },
            i64::MAX,
            1,
        )
        .await
        .expect("runs");
    let text = missed[0].report.clone().unwrap_or_default();
    assert!(
        text.contains("not connected") && text.contains("60 min"),
        "{text}"
    );
    alpha.task.abort();
}

#[tokio::test]
async fn stale_agents_are_alerted_once_and_the_digest_goes_out_once_a_day() {
    use holdfast_server::jobs::alerts;
    let Setup {
        _dir,
        store,
        jobs,
        a,
        b,
        target,
        ..
    } = Setup::new().await;
    let spec = serde_json::json!({"agents": [a, b], "source": "/dev/vdb", "target_id": target.id});
    let job = changed(&store, async |c| {
        c.create_job("nightly", true, &spec.to_string()).await
    })
    .await
    .expect("job")
    .id;
    // Alpha succeeds now; beta never ran.
    let run = changed(&store, async |c| {
        c.create_run(Some(job), a, "nightly", "manual", None).await
    })
    .await
    .expect("run")
    .expect("run");
    assert!(store.claim_run(run.id).await.expect("claim"));
    let mut ok = report(run.id, job, None);
    ok.ended_at = Utc::now().timestamp();
    assert!(jobs.on_report(a, &ok).await);
    store
        .set_setting(
            alerts::ALERTS_KEY,
            &serde_json::json!({
                "stale": {"recipients": ["ops@example.test"], "hours": 26},
            })
            .to_string(),
            Some(None),
        )
        .await
        .expect("rules");
    let now = Utc::now();
    let outbox = |kind: &'static str| {
        let store = store.clone();
        async move {
            store
                .mails(i64::MAX, 100)
                .await
                .expect("mails")
                .into_iter()
                .filter(|m| m.kind == kind)
                .collect::<Vec<_>>()
        }
    };
    // Within 26 hours: nothing. After them: beta (never succeeded) is named; alpha's
    // success is 27 hours old as well: both, once.
    alerts::check(&jobs, now + chrono::Duration::hours(1))
        .await
        .expect("check");
    assert!(outbox("alert").await.is_empty());
    let later = now + chrono::Duration::hours(27);
    alerts::check(&jobs, later).await.expect("check");
    alerts::check(&jobs, later + chrono::Duration::minutes(5))
        .await
        .expect("again");
    let sent = outbox("alert").await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent
        .iter()
        .any(|m| m.subject.contains("beta") && m.body.contains("none has succeeded")));
    assert!(sent
        .iter()
        .any(|m| m.subject.contains("alpha") && m.body.contains("last successful backup")));
    assert!(sent.iter().all(|m| m.recipients == "ops@example.test"));
    // Another full period of silence: alerted again.
    alerts::check(&jobs, later + chrono::Duration::hours(27))
        .await
        .expect("check");
    assert_eq!(outbox("alert").await.len(), 4);

    // The digest: once a day, after its time.
    store
        .set_setting(
            alerts::ALERTS_KEY,
            &serde_json::json!({
                "digest": {"recipients": ["boss@example.test"], "time": "07:00", "timezone": "UTC"},
            })
            .to_string(),
            Some(None),
        )
        .await
        .expect("rules");
    let day = |h: u32, m: u32| {
        now.date_naive()
            .and_hms_opt(h, m, 0)
            .expect("time")
            .and_utc()
            + chrono::Duration::days(1)
    };
    alerts::check(&jobs, day(6, 59)).await.expect("check");
    assert!(outbox("digest").await.is_empty());
    alerts::check(&jobs, day(7, 1)).await.expect("check");
    alerts::check(&jobs, day(9, 0)).await.expect("check");
    let digests = outbox("digest").await;
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert_eq!(digests[0].recipients, "boss@example.test");
    alerts::check(&jobs, day(7, 1) + chrono::Duration::days(1))
        .await
        .expect("check");
    assert_eq!(outbox("digest").await.len(), 2);
}

#[tokio::test]
async fn an_agent_gets_no_more_runs_at_once_than_its_limit() {
    let Setup {
        _dir,
        store,
        gateway,
        jobs,
        a,
        target,
        ..
    } = Setup::new().await;
    let spec = serde_json::json!({
        "agents": [a], "source": "/dev/vdb", "target_id": target.id,
        "schedule": {"kind": "daily", "time": "03:00"},
    });
    for name in ["system disk", "data disk"] {
        changed(&store, async |c| {
            c.create_job(name, true, &spec.to_string()).await
        })
        .await
        .expect("job");
    }
    let alpha = SimAgent::connect(&gateway, a);
    scheduler::once(
        &jobs,
        at("2026-11-22T02:59:00Z"),
        at("2026-11-22T03:00:05Z"),
    )
    .await
    .expect("tick");
    alpha.wait_orders(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(alpha.orders().len(), 1, "the default limit is one run");
    jobs.set_per_agent(2);
    scheduler::once(
        &jobs,
        at("2026-11-22T03:00:05Z"),
        at("2026-11-22T03:00:10Z"),
    )
    .await
    .expect("tick");
    alpha.wait_orders(2).await;
    alpha.task.abort();
}
