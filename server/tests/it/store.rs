//! The store's queries, run the same way on SQLite and on PostgreSQL.

use crate::changed;
use holdfast_server::auth::Role;
use holdfast_server::store::jobs::JobSecret;
use holdfast_server::store::{RunState, Store, StoreError};

use crate::postgres::Postgres;

async fn exercise(store: &Store) {
    assert_eq!(store.count_users().await.expect("count"), 0);
    let a = changed(store, async |c| {
        c.create_user("alice", "hash-a", Role::Admin, false).await
    })
    .await
    .expect("create");
    let b = changed(store, async |c| {
        c.create_user("bob", "hash-b", Role::Viewer, false).await
    })
    .await
    .expect("create");
    assert!(matches!(
        changed(store, async |c| c
            .create_user("alice", "x", Role::Viewer, false)
            .await)
        .await,
        Err(StoreError::Conflict(_))
    ));
    let (u, hash) = store
        .user_with_hash("alice")
        .await
        .expect("get")
        .expect("found");
    assert_eq!((u.id, u.role, hash.as_str()), (a.id, Role::Admin, "hash-a"));
    assert!(store.user_with_hash("nobody").await.expect("get").is_none());
    // Pagination by id.
    let first = store.users(0, 1).await.expect("page");
    assert_eq!(first.len(), 1);
    let second = store.users(first[0].id, 10).await.expect("page");
    assert_eq!(second.iter().map(|u| u.id).collect::<Vec<_>>(), vec![b.id]);

    // Sessions: live ones find their user, expired ones do not.
    changed(store, async |c| {
        c.create_session("s-live", a.id, holdfast_server::store::now() + 60)
            .await
    })
    .await
    .expect("session");
    changed(store, async |c| {
        c.create_session("s-old", a.id, holdfast_server::store::now() - 1)
            .await
    })
    .await
    .expect("session");
    assert_eq!(
        store
            .session_user("s-live")
            .await
            .expect("get")
            .map(|u| u.id),
        Some(a.id)
    );
    assert!(store.session_user("s-old").await.expect("get").is_none());
    assert_eq!(store.purge_sessions().await.expect("purge"), 1);

    // Tokens: usable until revoked or expired, with their own role, and only by their owner.
    let t = changed(store, async |c| {
        c.create_token(b.id, ("ci", Role::Viewer), "t-hash", i64::MAX)
            .await
    })
    .await
    .expect("token");
    assert_eq!(
        store
            .token_user("t-hash")
            .await
            .expect("get")
            .map(|u| (u.id, u.role)),
        Some((b.id, Role::Viewer))
    );
    changed(store, async |c| {
        c.create_token(b.id, ("old", Role::Viewer), "t-expired", 1)
            .await
    })
    .await
    .expect("token");
    assert!(store.token_user("t-expired").await.expect("get").is_none());
    assert!(store
        .tokens(b.id)
        .await
        .expect("list")
        .iter()
        .any(|x| x.id == t.id && x.last_used_at.is_some()));
    assert!(
        !changed(store, async |c| c.revoke_token(a.id, t.id).await)
            .await
            .expect("revoke"),
        "not alice's"
    );
    assert!(changed(store, async |c| c.revoke_token(b.id, t.id).await)
        .await
        .expect("revoke"));
    assert!(store.token_user("t-hash").await.expect("get").is_none());

    // Deleting a user takes their sessions and tokens along.
    assert!(changed(store, async |c| c.delete_user(a.id).await)
        .await
        .expect("delete"));
    assert!(store.session_user("s-live").await.expect("get").is_none());
    assert!(!changed(store, async |c| c.delete_user(a.id).await)
        .await
        .expect("delete again"));

    // The audit log pages newest first.
    for i in 0..3 {
        store
            .change("alice")
            .await
            .expect("begin")
            .commit("test", &format!("thing:{i}"), "")
            .await
            .expect("audit");
    }
    let page = store.audit_log(i64::MAX, 2).await.expect("log");
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].subject, "thing:2");
    let rest = store.audit_log(page[1].id, 10).await.expect("log");
    assert_eq!(rest[0].subject, "thing:0");
    assert!(store.ping().await);

    // Enrolment tokens: each use creates an agent, until used up, revoked or expired.
    let now = holdfast_server::store::now();
    let t = changed(store, async |c| {
        c.create_enrollment_token("lab", "e-hash", 2, now + 60, "alice")
            .await
    })
    .await
    .expect("token");
    let a1 = changed(store, async |c| c.enroll_agent("e-hash", "pc1", "s1").await)
        .await
        .expect("enrol")
        .expect("agent");
    let a2 = changed(store, async |c| c.enroll_agent("e-hash", "pc2", "s2").await)
        .await
        .expect("enrol")
        .expect("agent");
    assert_ne!(a1, a2);
    assert!(
        changed(store, async |c| c.enroll_agent("e-hash", "pc3", "s3").await)
            .await
            .expect("enrol")
            .is_none(),
        "used up"
    );
    changed(store, async |c| {
        c.create_enrollment_token("old", "e-old", 5, now - 1, "alice")
            .await
    })
    .await
    .expect("token");
    assert!(
        changed(store, async |c| c.enroll_agent("e-old", "pc4", "s4").await)
            .await
            .expect("enrol")
            .is_none(),
        "expired"
    );
    let t2 = changed(store, async |c| {
        c.create_enrollment_token("rev", "e-rev", 5, now + 60, "alice")
            .await
    })
    .await
    .expect("token");
    assert!(
        changed(store, async |c| c.revoke_enrollment_token(t2.id).await)
            .await
            .expect("revoke")
    );
    assert!(
        changed(store, async |c| c.enroll_agent("e-rev", "pc5", "s5").await)
            .await
            .expect("enrol")
            .is_none(),
        "revoked"
    );
    assert_eq!(
        store
            .enrollment_tokens()
            .await
            .expect("list")
            .iter()
            .find(|x| x.id == t.id)
            .map(|x| x.uses_left),
        Some(0)
    );
    // Agents: inventory, last seen, revocation.
    store
        .set_inventory(a1, "pc1.lan", "Debian 12", "0.1.0", "{\"disks\":[]}")
        .await
        .expect("inventory");
    let a = store.agent(a1).await.expect("get").expect("agent");
    assert_eq!(
        (a.hostname.as_str(), a.secret_hash.as_str()),
        ("pc1.lan", "s1")
    );
    assert!(a.inventory.is_some() && a.last_seen_at.is_some());
    assert!(changed(store, async |c| c.revoke_agent(a1).await)
        .await
        .expect("revoke"));
    assert!(!changed(store, async |c| c.revoke_agent(a1).await)
        .await
        .expect("revoke twice"));
    assert_eq!(store.agents(0, 10).await.expect("list").len(), 2);
}

/// Targets, jobs, runs and images: the statements the scheduler and dispatcher rely on.
async fn exercise_jobs(store: &Store) {
    use holdfast_server::store::jobs::{Finish, NewImage, RunFilter};
    use holdfast_server::store::targets::TargetFields;
    changed(store, async |c| {
        c.create_enrollment_token("jobs", "jobs-token", 2, i64::MAX, "admin")
            .await
    })
    .await
    .expect("token");
    let a = changed(store, async |c| {
        c.enroll_agent("jobs-token", "a", "ha").await
    })
    .await
    .expect("a")
    .expect("a");
    let b = changed(store, async |c| {
        c.enroll_agent("jobs-token", "b", "hb").await
    })
    .await
    .expect("b")
    .expect("b");
    let fields = TargetFields {
        name: "nas",
        url: "smb://nas/share",
        username: Some("bk"),
        ca_pem: None,
        host_key: None,
        bandwidth: Some("20M@mon-fri/08:00-18:00,unlimited"),
        notes: "",
    };
    let t = changed(store, async |c| c.create_target(&fields).await)
        .await
        .expect("target");
    assert!(matches!(
        changed(store, async |c| c.create_target(&fields).await).await,
        Err(holdfast_server::store::StoreError::Conflict(_))
    ));
    changed(store, async |c| {
        c.set_target_secret(t.id, Some("v1:sealed")).await
    })
    .await
    .expect("secret");
    assert_eq!(
        store
            .target(t.id)
            .await
            .expect("get")
            .expect("t")
            .secret
            .as_deref(),
        Some("v1:sealed")
    );
    assert_eq!(
        store
            .target(t.id)
            .await
            .expect("get")
            .expect("t")
            .bandwidth
            .as_deref(),
        Some("20M@mon-fri/08:00-18:00,unlimited")
    );
    let spec = format!(
        "{{\"agents\":[{a},{b}],\"source\":\"/dev/sda\",\"target_id\":{}}}",
        t.id
    );
    let j = changed(store, async |c| c.create_job("nightly", true, &spec).await)
        .await
        .expect("job");
    assert_eq!(j.target_id, Some(t.id));
    assert_eq!(
        (j.secret.as_deref(), j.luks_secret.as_deref()),
        (None, None)
    );
    // The image password and the LUKS passphrase: sealed values in columns of their own,
    // each set and cleared alone, in every list of jobs.
    changed(store, async |c| {
        c.set_job_secret(j.id, JobSecret::ImagePassword, Some("v1:image"))
            .await?;
        c.set_job_secret(j.id, JobSecret::LuksPassphrase, Some("v1:luks"))
            .await
    })
    .await
    .expect("secrets");
    let row = store.job(j.id).await.expect("get").expect("job");
    assert_eq!(
        (row.secret.as_deref(), row.luks_secret.as_deref()),
        (Some("v1:image"), Some("v1:luks"))
    );
    let listed = store.jobs_with_last_run(0, 100).await.expect("jobs");
    assert!(listed
        .iter()
        .any(|(r, _)| r.id == j.id && r.luks_secret.as_deref() == Some("v1:luks")));
    changed(store, async |c| {
        c.set_job_secret(j.id, JobSecret::LuksPassphrase, None)
            .await
    })
    .await
    .expect("clear");
    let row = store.job(j.id).await.expect("get").expect("job");
    assert_eq!(
        (row.secret.as_deref(), row.luks_secret.as_deref()),
        (Some("v1:image"), None)
    );
    // The database's foreign key refuses, and the error names the job that uses it.
    match changed(store, async |c| c.delete_target(t.id).await).await {
        Err(holdfast_server::store::StoreError::InUse(why)) => {
            assert!(why.contains("job(s) nightly"), "{why}")
        }
        other => panic!("deleting a target in use: {other:?}"),
    }
    // A job that names a target, site or agent that does not exist is refused.
    for dangling in [
        "{\"target_id\":99999}".to_owned(),
        "{\"site_id\":99999}".to_owned(),
        "{\"agents\":[99999]}".to_owned(),
    ] {
        assert!(
            matches!(
                changed(store, async |c| c
                    .create_job("dangling", true, &dangling)
                    .await)
                .await,
                Err(holdfast_server::store::StoreError::Dangling(_))
            ),
            "{dangling}"
        );
    }

    // A start is recorded once per agent, however often it is seen.
    let made = store
        .create_scheduled_runs(j.id, &[a, b], "nightly", 1000)
        .await
        .expect("runs");
    assert_eq!(made.len(), 2);
    // Job lists read each job with its newest run in one query.
    let newest = made.iter().map(|r| r.id).max();
    let listed = store.jobs_with_last_run(0, 100).await.expect("jobs");
    assert_eq!(
        listed
            .iter()
            .find(|(row, _)| row.id == j.id)
            .and_then(|(_, last)| last.as_ref().map(|l| l.id)),
        newest
    );
    assert_eq!(
        store.last_run(j.id).await.expect("last run").map(|l| l.id),
        newest
    );
    let again = store
        .create_scheduled_runs(j.id, &[a, b], "nightly", 1000)
        .await
        .expect("again");
    assert!(again.is_empty());
    assert_eq!(store.queued_runs().await.expect("queued").len(), 2);
    let ra = made
        .iter()
        .find(|r| r.agent_id == a)
        .expect("run a")
        .clone();
    assert!(store.claim_run(ra.id).await.expect("claim"));
    assert!(!store.claim_run(ra.id).await.expect("claim twice"));
    store.requeue_run(ra.id).await.expect("requeue");
    assert!(store.claim_run(ra.id).await.expect("claim again"));
    assert_eq!(store.running_runs().await.expect("running").len(), 1);

    // A report is stored once, with its images.
    let finish = Finish {
        run_id: ra.id,
        state: RunState::Successful,
        started_at: 1001,
        ended_at: 1010,
        bytes_read: 10,
        bytes_written: 5,
        report: "{}",
        images: vec![NewImage {
            name: "a/full.hfi",
            method: "full",
            base_name: None,
            image_id: "id1",
            bytes: 5,
            verified: Some(true),
            source: Some("/dev/sdb"),
        }],
    };
    assert!(store.finish_run(&finish).await.expect("finish"));
    assert!(!store.finish_run(&finish).await.expect("finish twice"));
    store
        .set_images_target(ra.id, t.id)
        .await
        .expect("target of images");
    let imgs = store.job_images(j.id, a).await.expect("images");
    assert_eq!(imgs.len(), 1);
    assert_eq!(
        (imgs[0].verified, imgs[0].target_id),
        (Some(true), Some(t.id))
    );

    // Filters, newest first.
    let by_state = |s: &str| RunFilter {
        state: Some(s.parse().expect("a run state")),
        ..RunFilter::default()
    };
    assert_eq!(
        store
            .runs(&by_state("successful"), i64::MAX, 10)
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        store
            .runs(&by_state("queued"), i64::MAX, 10)
            .await
            .expect("list")
            .len(),
        1
    );
    let all = store
        .runs(
            &RunFilter {
                job_id: Some(j.id),
                ..RunFilter::default()
            },
            i64::MAX,
            10,
        )
        .await
        .expect("list");
    assert!(all.len() == 2 && all[0].id > all[1].id);
    let rb = made.iter().find(|r| r.agent_id == b).expect("run b");
    assert!(store
        .run_ended_here(rb.id, RunState::Missed, "{}")
        .await
        .expect("missed"));
    assert!(!store
        .run_ended_here(rb.id, RunState::Failed, "{}")
        .await
        .expect("ended already"));
    // The console's reads over many runs: conditions combined, the problems since a time,
    // counts, daily sums and storage per target, the same on both databases.
    let combined = RunFilter {
        job_id: Some(j.id),
        agent_id: Some(b),
        state: Some(RunState::Missed),
    };
    let found = store.runs(&combined, i64::MAX, 10).await.expect("list");
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), [rb.id]);
    let problems = store
        .runs_ended_in(0, &[RunState::Failed, RunState::Missed], 10)
        .await
        .expect("problems");
    assert_eq!(problems.iter().map(|r| r.id).collect::<Vec<_>>(), [rb.id]);
    assert_eq!(
        store.state_counts(0).await.expect("counts"),
        [("missed".to_owned(), 1), ("successful".to_owned(), 1)]
    );
    let days = store.daily_totals(0).await.expect("days");
    assert_eq!(
        days.first()
            .map(|d| (d.day, d.runs, d.failed, d.bytes_written, d.seconds)),
        Some((0, 1, 0, 5, 9)),
        "{days:?}"
    );
    assert_eq!(
        (
            days.iter().map(|d| d.runs).sum::<i64>(),
            days.iter().map(|d| d.failed).sum::<i64>()
        ),
        (2, 1)
    );
    let usage = store.target_usage().await.expect("usage");
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.target_id, u.images, u.bytes))
            .collect::<Vec<_>>(),
        [(Some(t.id), 1, 5)]
    );
    let listed = store.agent_list().await.expect("agent list");
    assert!(listed.len() >= 2 && listed.iter().all(|x| x.inventory.is_none()));
    // A manual run has no start time: any number of them.
    for _ in 0..2 {
        assert!(changed(store, async |c| c
            .create_run(Some(j.id), a, "nightly", "manual", None)
            .await)
        .await
        .expect("manual")
        .is_some());
    }
    assert!(changed(store, async |c| c.delete_job(j.id).await)
        .await
        .expect("delete job"));

    // Sites: defaults, members, and what names them cannot go.
    let site = changed(store, async |c| {
        c.create_site("branch", &format!("{{\"target_id\":{}}}", t.id))
            .await
    })
    .await
    .expect("site");
    assert!(
        changed(store, async |c| c.set_agent_site(a, Some(site.id)).await)
            .await
            .expect("move")
    );
    assert!(!changed(store, async |c| c
        .set_agent_site(99_999, Some(site.id))
        .await)
    .await
    .expect("no agent"));
    let book = store.site_book().await.expect("book");
    assert_eq!(
        book.get(&site.id).map(|(_, agents)| agents.clone()),
        Some(vec![a])
    );
    assert_eq!(
        store.agent(a).await.expect("get").expect("a").site_id,
        Some(site.id)
    );
    assert!(matches!(
        changed(store, async |c| c.delete_target(t.id).await).await,
        Err(holdfast_server::store::StoreError::InUse(_))
    ));
    let on_site = changed(store, async |c| {
        c.create_job("site job", true, &format!("{{\"site_id\":{}}}", site.id))
            .await
    })
    .await
    .expect("site job");
    match changed(store, async |c| c.delete_site(site.id).await).await {
        Err(holdfast_server::store::StoreError::InUse(why)) => {
            assert!(why.contains("site job"), "{why}")
        }
        other => panic!("deleting a site in use: {other:?}"),
    }
    assert!(changed(store, async |c| c.delete_job(on_site.id).await)
        .await
        .expect("delete"));
    assert!(changed(store, async |c| c
        .update_site(site.id, "branch 2", "{}")
        .await)
    .await
    .expect("update")
    .is_some());
    assert!(changed(store, async |c| c.delete_site(site.id).await)
        .await
        .expect("delete site"));
    assert_eq!(store.agent(a).await.expect("get").expect("a").site_id, None);
    assert!(changed(store, async |c| c.delete_target(t.id).await)
        .await
        .expect("delete target"));

    // A change and its audit entry are kept together or not at all; a committed change to
    // sites moves the epoch caches compare, a dropped one does not.
    let newest = |store: &Store| {
        let store = store.clone();
        async move { store.audit_log(i64::MAX, 1).await.expect("log")[0].id }
    };
    let (logged, epoch) = (newest(store).await, store.sites_epoch());
    {
        let mut c = store.change("alice").await.expect("begin");
        c.create_site("dropped", "{}").await.expect("site");
    }
    assert!(store
        .sites(0, 100)
        .await
        .expect("sites")
        .iter()
        .all(|s| s.name != "dropped"));
    assert_eq!((newest(store).await, store.sites_epoch()), (logged, epoch));
    let mut c = store.change("alice").await.expect("begin");
    let kept = c.create_site("kept", "{}").await.expect("site");
    c.commit("create_site", &format!("site:{}", kept.id), "kept")
        .await
        .expect("commit");
    let entry = store.audit_log(i64::MAX, 1).await.expect("log").remove(0);
    assert_eq!(
        (entry.actor.as_str(), entry.action.as_str(), entry.subject),
        ("alice", "create_site", format!("site:{}", kept.id))
    );
    assert_eq!(store.sites_epoch(), epoch + 1);
    // A refused change writes no entry.
    let logged = newest(store).await;
    let mut c = store.change("alice").await.expect("begin");
    assert!(matches!(
        c.create_site("kept", "{}").await,
        Err(StoreError::Conflict(_))
    ));
    drop(c);
    assert_eq!(newest(store).await, logged);
}

#[tokio::test]
async fn store_on_sqlite() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&Store::sqlite_url(d.path()))
        .await
        .expect("open");
    exercise(&store).await;
    exercise_jobs(&store).await;
    // Private: it holds password hashes, sealed secrets and the audit log.
    for file in ["holdfast.db", "holdfast.db-wal"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.path().join(file))
                .expect(file)
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    // Reopening applies no migration twice and keeps the data.
    drop(store);
    let again = Store::open(&Store::sqlite_url(d.path()))
        .await
        .expect("reopen");
    assert_eq!(again.count_users().await.expect("count"), 1);
}

#[tokio::test]
async fn store_on_postgres() {
    let Some(pg) = Postgres::start("store_on_postgres") else {
        return;
    };
    let store = Store::open(&pg.url).await.expect("open");
    exercise(&store).await;
    exercise_jobs(&store).await;
    drop(store);
    let again = Store::open(&pg.url).await.expect("reopen");
    assert_eq!(again.count_users().await.expect("count"), 1);
}

/// Jobs saved before consistency methods had a `live` flag: migration 0009 turns it into
/// the method they used (a live copy stays live; the others remounted read-only: `lock`).
#[tokio::test]
async fn jobs_saved_with_the_live_flag_keep_doing_what_they_did() {
    let d = tempfile::tempdir().expect("tempdir");
    let before = d.path().join("migrations-before-0009");
    std::fs::create_dir(&before).expect("mkdir");
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    for e in std::fs::read_dir(&all).expect("migrations").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0009" {
            std::fs::copy(e.path(), before.join(&name)).expect("copy");
        }
    }
    let url = Store::sqlite_url(d.path());
    let pool = sqlx::sqlite::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .expect("open");
    sqlx::migrate::Migrator::new(before.as_path())
        .await
        .expect("read migrations")
        .run(&pool)
        .await
        .expect("migrate to 0008");
    for (name, live) in [("copied-live", true), ("remounted", false)] {
        let spec = format!(r#"{{"source":"/dev/vdb1","live":{live},"method":"full"}}"#);
        sqlx::query(
            "INSERT INTO jobs (name, enabled, spec, created_at, updated_at) VALUES (?, 1, ?, 0, 0)",
        )
        .bind(name)
        .bind(spec)
        .execute(&pool)
        .await
        .expect("insert");
    }
    pool.close().await;

    let store = Store::open(&url).await.expect("open and migrate");
    for (id, method) in [(1, "live"), (2, "lock")] {
        let row = store.job(id).await.expect("read").expect("job");
        let spec: serde_json::Value = serde_json::from_str(&row.spec).expect("json");
        assert_eq!(spec["consistency"], method, "{spec}");
        assert!(spec.get("live").is_none(), "{spec}");
        assert_eq!(spec["source"], "/dev/vdb1", "{spec}");
    }
}
