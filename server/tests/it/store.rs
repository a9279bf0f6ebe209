//! The store's queries, run the same way on SQLite and on PostgreSQL.

use holdfast_server::auth::Role;
use holdfast_server::store::{Store, StoreError};

use crate::postgres::Postgres;

async fn exercise(store: &Store) {
    assert_eq!(store.count_users().await.expect("count"), 0);
    let a = store
        .create_user("alice", "hash-a", Role::Admin)
        .await
        .expect("create");
    let b = store
        .create_user("bob", "hash-b", Role::Viewer)
        .await
        .expect("create");
    assert!(matches!(
        store.create_user("alice", "x", Role::Viewer).await,
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
    store
        .create_session("s-live", a.id, holdfast_server::store::now() + 60)
        .await
        .expect("session");
    store
        .create_session("s-old", a.id, holdfast_server::store::now() - 1)
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

    // Tokens: usable until revoked, and only by their owner.
    let t = store
        .create_token(b.id, "ci", "t-hash")
        .await
        .expect("token");
    assert_eq!(
        store.token_user("t-hash").await.expect("get").map(|u| u.id),
        Some(b.id)
    );
    assert!(store.tokens(b.id).await.expect("list")[0]
        .last_used_at
        .is_some());
    assert!(
        !store.revoke_token(a.id, t.id).await.expect("revoke"),
        "not alice's"
    );
    assert!(store.revoke_token(b.id, t.id).await.expect("revoke"));
    assert!(store.token_user("t-hash").await.expect("get").is_none());

    // Deleting a user takes their sessions and tokens along.
    assert!(store.delete_user(a.id).await.expect("delete"));
    assert!(store.session_user("s-live").await.expect("get").is_none());
    assert!(!store.delete_user(a.id).await.expect("delete again"));

    // The audit log pages newest first.
    for i in 0..3 {
        store
            .audit("alice", "test", &format!("thing:{i}"), "")
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
    let t = store
        .create_enrollment_token("lab", "e-hash", 2, now + 60, "alice")
        .await
        .expect("token");
    let a1 = store
        .enroll_agent("e-hash", "pc1", "s1")
        .await
        .expect("enrol")
        .expect("agent");
    let a2 = store
        .enroll_agent("e-hash", "pc2", "s2")
        .await
        .expect("enrol")
        .expect("agent");
    assert_ne!(a1, a2);
    assert!(
        store
            .enroll_agent("e-hash", "pc3", "s3")
            .await
            .expect("enrol")
            .is_none(),
        "used up"
    );
    store
        .create_enrollment_token("old", "e-old", 5, now - 1, "alice")
        .await
        .expect("token");
    assert!(
        store
            .enroll_agent("e-old", "pc4", "s4")
            .await
            .expect("enrol")
            .is_none(),
        "expired"
    );
    let t2 = store
        .create_enrollment_token("rev", "e-rev", 5, now + 60, "alice")
        .await
        .expect("token");
    assert!(store.revoke_enrollment_token(t2.id).await.expect("revoke"));
    assert!(
        store
            .enroll_agent("e-rev", "pc5", "s5")
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
    assert!(store.revoke_agent(a1).await.expect("revoke"));
    assert!(!store.revoke_agent(a1).await.expect("revoke twice"));
    assert_eq!(store.agents(0, 10).await.expect("list").len(), 2);
}

#[tokio::test]
async fn store_on_sqlite() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&Store::sqlite_url(d.path()))
        .await
        .expect("open");
    exercise(&store).await;
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
    drop(store);
    let again = Store::open(&pg.url).await.expect("reopen");
    assert_eq!(again.count_users().await.expect("count"), 1);
}
