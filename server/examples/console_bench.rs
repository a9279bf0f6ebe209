//! Console page times with a big store: agents with inventories, sites, jobs and reports
//! spread over 30 days (with images), then every page rendered through the server's router
//! in this process — server time only, no network, no TLS. Used by
//! `scripts/bench/console.sh`; see docs/benchmarks.md.
//!
//! `console_bench [AGENTS] [REPORTS] [ROUNDS]` (defaults 2000, 100000, 20)

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt as _;
use sqlx::Connection as _;
use tower::ServiceExt as _;

use holdfast_server::app::{app, AppState};
use holdfast_server::auth::{csrf_token, secret_hash, Role};
use holdfast_server::http::SESSION_COOKIE;
use holdfast_server::store::Store;
use holdfast_server::vault::Vault;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const JOBS: i64 = 20;
const SITES: i64 = 10;
const DAY: i64 = 86_400;

/// A typical inventory: two disks, four partitions.
fn inventory(host: &str) -> String {
    serde_json::json!({
        "hostname": host, "os": "Debian GNU/Linux 12 (bookworm)", "agent_version": "0.1.0",
        "disks": [
            {"name": "sda", "model": "Samsung SSD 870", "serial": "S5Y1NX0", "size": 500_107_862_016u64, "logical_sector_size": 512, "partition_table": "gpt", "removable": false},
            {"name": "sdb", "model": "WDC WD40EFRX", "serial": "WD-WCC7K", "size": 4_000_787_030_016u64, "logical_sector_size": 512, "partition_table": "gpt", "removable": false},
        ],
        "volumes": [
            {"name": "sda1", "disk": "sda", "number": 1, "start": 1_048_576, "size": 536_870_912, "filesystem": "vfat", "label": "EFI", "uuid": "A1B2-C3D4", "mount_point": "/boot/efi", "used": 6_291_456},
            {"name": "sda2", "disk": "sda", "number": 2, "start": 537_919_488, "size": 499_569_000_000u64, "filesystem": "ext4", "label": "root", "uuid": "0b7e6c2a-9a57-4f0e-8d3c-2f1f0e9b1a11", "mount_point": "/", "used": 123_456_789_012u64},
            {"name": "sdb1", "disk": "sdb", "number": 1, "start": 1_048_576, "size": 4_000_785_000_000u64, "filesystem": "ext4", "label": "data", "uuid": "5d0f8e1c-7b2a-4c3e-9f1d-6a5b4c3d2e1f", "mount_point": "/srv", "used": 2_100_000_000_000u64},
        ],
    })
    .to_string()
}

/// A report as agents send it: three steps and one image.
fn report(run: i64, job: i64, agent: i64, at: i64, state: &str) -> String {
    serde_json::json!({
        "run_id": run, "job_id": job, "name": format!("job {job}"), "status": state,
        "started_at": at, "ended_at": at + 600, "bytes_read": 40_000_000_000u64, "bytes_written": 18_000_000_000u64,
        "images": [{"name": format!("host-{agent}/img-{run}.hfi"), "method": "incremental", "base": format!("host-{agent}/img-{}.hfi", run - 1),
                    "image_id": format!("00000000-0000-4000-8000-{run:012}"), "bytes": 18_000_000_000u64, "parts": 1, "verified": true}],
        "deleted": [],
        "steps": [
            {"at": at, "status": "info", "title": "Job started", "detail": format!("job {job}")},
            {"at": at + 590, "status": "ok", "title": "Image created", "detail": "read 40000000000 bytes, wrote 18000000000 bytes in 1 part(s), validated"},
            {"at": at + 600, "status": "ok", "title": "Job finished", "detail": state},
        ],
    })
    .to_string()
}

async fn fill(url: &str, agents: i64, reports: i64) -> Res<()> {
    let mut db = sqlx::SqliteConnection::connect(url).await?;
    let mut tx = db.begin().await?;
    let now = holdfast_server::store::now();
    for s in 1..=SITES {
        sqlx::query(
            "INSERT INTO sites (name, defaults, created_at, updated_at) VALUES ($1, $2, $3, $3)",
        )
        .bind(format!("site {s}"))
        .bind(r#"{"target_id": 1, "folder": "$TEMPL:(ComputerName)"}"#)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("INSERT INTO targets (name, url, notes, created_at, updated_at) VALUES ('nas', 'smb://nas/backup', '', $1, $1)")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    for a in 1..=agents {
        let host = format!("host-{a:05}");
        sqlx::query(
            "INSERT INTO agents (hostname, secret_hash, enrolled_at, last_seen_at, os, agent_version, inventory, inventory_at, site_id) \
             VALUES ($1, $2, $3, $3, 'Debian GNU/Linux 12', '0.1.0', $4, $3, $5)",
        )
        .bind(&host)
        .bind(format!("hash-{a}"))
        .bind(now - 40 * DAY)
        .bind(inventory(&host))
        .bind(1 + a % SITES)
        .execute(&mut *tx)
        .await?;
    }
    for j in 1..=JOBS {
        let spec = serde_json::json!({
            "site_id": 1 + j % SITES, "source": "/dev/sda",
            "method": "incremental_chain", "chain_length": 7, "retention": {"keep_last": 2},
            "schedule": {"kind": "daily", "time": "22:00", "timezone": "Europe/Berlin"},
        });
        sqlx::query("INSERT INTO jobs (name, enabled, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
            .bind(format!("nightly {j}"))
            .bind(true)
            .bind(spec.to_string())
            .bind(now - 40 * DAY)
            .execute(&mut *tx)
            .await?;
    }
    // Reports over 30 days, oldest first; one in 50 failed, one in 200 missed.
    for r in 1..=reports {
        let agent = 1 + r % agents;
        let job = 1 + r % JOBS;
        let at = now - 30 * DAY + r * (30 * DAY) / reports;
        let state = match r % 200 {
            0 => "missed",
            x if x % 50 == 7 => "failed",
            _ => "successful",
        };
        sqlx::query(
            "INSERT INTO runs (job_id, agent_id, name, cause, scheduled_for, state, created_at, started_at, ended_at, bytes_read, bytes_written, report) \
             VALUES ($1, $2, $3, 'schedule', $4, $5, $4, $4, $6, 40000000000, 18000000000, $7)",
        )
        .bind(job)
        .bind(agent)
        .bind(format!("nightly {job}"))
        .bind(at)
        .bind(state)
        .bind(at + 600)
        .bind(report(r, job, agent, at, state))
        .execute(&mut *tx)
        .await?;
        if state == "successful" {
            sqlx::query(
                "INSERT INTO images (run_id, job_id, agent_id, target_id, name, method, base_name, image_id, bytes, verified, created_at, deleted_at) \
                 VALUES ($1, $2, $3, 1, $4, 'incremental', NULL, $5, 18000000000, 1, $6, $7)",
            )
            .bind(r)
            .bind(job)
            .bind(agent)
            .bind(format!("host-{agent:05}/img-{r}.hfi"))
            .bind(format!("id-{r}"))
            .bind(at + 600)
            // Most old images were deleted by retention.
            .bind((r < reports - 4 * agents).then_some(at + 7 * DAY))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let agents = args.first().copied().unwrap_or(2000);
    let reports = args.get(1).copied().unwrap_or(100_000);
    let rounds = args.get(2).copied().unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("holdfast.db").display());
    let store = Store::open(&url).await?;
    let started = Instant::now();
    fill(&url, agents, reports).await?;
    println!(
        "store: {agents} agents, {reports} reports, {JOBS} jobs, {SITES} sites (filled in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let hash = holdfast_server::auth::hash_password("bench-password-1")?;
    let secret = "bench-session-secret";
    let mut change = store.change("bench").await?;
    let user = change
        .create_user("bench", &hash, Role::Admin, false)
        .await?;
    change
        .create_session(
            &secret_hash(secret),
            user.id,
            holdfast_server::store::now() + 3600,
        )
        .await?;
    change.commit("create_user", "user:bench", "").await?;
    // The dashboard's queries one by one (the page runs them in a row).
    let now = holdfast_server::store::now();
    macro_rules! timed {
        ($name:expr, $e:expr) => {{
            $e.await?;
            let t = Instant::now();
            for _ in 0..rounds {
                $e.await?;
            }
            println!(
                "  {:<30} {:>7.1} ms",
                $name,
                t.elapsed().as_secs_f64() * 1000.0 / rounds as f64
            );
        }};
    }
    println!("dashboard queries (mean of {rounds}):");
    timed!("agent_list", store.agent_list());
    timed!("last_success", store.last_success());
    timed!("daily_totals (30 days)", store.daily_totals(now - 30 * DAY));
    timed!("state_counts (24 h)", store.state_counts(now - DAY));
    timed!("target_usage", store.target_usage());
    timed!("running_runs", store.running_runs());
    let vault = Vault::open(dir.path(), None)?;
    let router = app(AppState::new(store, "SHA256:bench".into(), vault)?);
    // Pages of one agent in the middle of the fleet (and of the reports of another).
    let (mid_agent, some_agent) = ((agents / 2).max(1), (agents * 77 / 2000).max(1));
    let pages = [
        "/",
        "/agents",
        "/agents?status=offline&q=host-01",
        &format!("/agents/{mid_agent}"),
        "/sites",
        "/sites/3",
        "/jobs",
        "/jobs/7",
        "/jobs/new",
        "/reports",
        "/reports?status=failed",
        "/reports?status=warning",
        &format!("/reports?agent={some_agent}"),
        &format!("/reports?before={}", reports / 2),
        &format!("/reports/{}", reports - 3),
        "/targets",
        "/targets/1",
        "/settings",
    ];
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>8}",
        "page", "p50 ms", "p90 ms", "max ms", "KiB"
    );
    for page in pages {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..=rounds {
            let req = Request::builder()
                .uri(page)
                .header(header::COOKIE, format!("{SESSION_COOKIE}={secret}"))
                .header("x-csrf-token", csrf_token(secret))
                .body(Body::empty())?;
            let t = Instant::now();
            let resp = router.clone().oneshot(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            times.push(t.elapsed());
            if status != StatusCode::OK {
                return Err(format!("{page}: {status}: {}", String::from_utf8_lossy(&body)).into());
            }
            size = body.len();
        }
        times.remove(0); // the first round warms the caches
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{page:<36} {:>9.1} {:>9.1} {:>9.1} {:>8.0}",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10]),
            ms(times[times.len() - 1]),
            size as f64 / 1024.0
        );
    }
    Ok(())
}
