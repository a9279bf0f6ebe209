//! Object Lock on SeaweedFS: an image written with a retention cannot be deleted — not through
//! our target, not with a plain S3 `DeleteObject` of its version with the same credentials —
//! until the lock ends; then it can.

use std::time::Duration;

use holdfast_targets::s3::{LockMode, ObjectLock};
use holdfast_targets::{ObjectKey, Target, TargetError};
use holdfast_testkit::servers::S3Server;

use crate::conformance::{body, noise, s3_target};

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_locked_images_cannot_be_deleted_until_the_lock_ends() {
    let Some(s3) = S3Server::start("s3_locked_images_cannot_be_deleted_until_the_lock_ends") else {
        return;
    };
    let plain = s3_target(&s3, "unlocked", "img");
    plain.create_bucket(false).await.expect("bucket");
    assert!(plain.lock_configuration().await.expect("config").is_none());
    let vault = s3_target(&s3, "vault", "img");
    vault.create_bucket(true).await.expect("lock bucket");
    assert!(vault.lock_configuration().await.expect("config").is_some());

    let lock = ObjectLock {
        mode: LockMode::Compliance,
        period: Duration::from_secs(6),
    };
    // Asking a bucket without Object Lock to lock is refused, and nothing is left.
    let refused = plain
        .clone()
        .with_retention(lock)
        .put_stream(&key("a.hfi"), body(vec![1; 1000]), false)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(plain
        .size(&key("a.hfi"))
        .await
        .is_err_and(|e| e.is_not_found()));

    let locked = vault.clone().with_retention(lock);
    let small = key("small.hfi");
    let big = key("chain/full.hfi");
    locked
        .put_stream(&small, body(vec![7; 4096]), false)
        .await
        .expect("put small");
    let data = noise(20 << 20, 3);
    locked
        .put_stream(&big, body(data.clone()), false)
        .await
        .expect("put multipart");
    for k in [&small, &big] {
        let until = vault.locked_until(k).await.expect("retention");
        assert!(until.is_some(), "{k} is not locked");
        let e = vault.delete(k).await.expect_err("locked");
        assert!(matches!(e, TargetError::Locked { .. }), "{e:?}");
        assert!(e.to_string().contains("locked (Object Lock) until"), "{e}");
        // The bucket itself refuses, whatever the client: delete the version directly.
        let version = vault.current_version(k).await.expect("version");
        assert!(version.is_some(), "a lock bucket keeps versions");
        let direct = vault.delete_version(k, version.as_deref()).await;
        assert!(direct.is_err(), "{k}: the bucket deleted a locked version");
    }
    assert_eq!(
        &vault
            .get_range(&big, 0..data.len() as u64)
            .await
            .expect("read")[..],
        &data[..]
    );

    // Once the lock has ended, retention may delete: the version goes for good.
    let until = vault
        .locked_until(&small)
        .await
        .expect("retention")
        .expect("locked");
    let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    for k in [&small, &big] {
        assert_eq!(vault.locked_until(k).await.expect("retention"), None);
        vault.delete(k).await.expect("delete after the lock");
        assert!(vault.size(k).await.is_err_and(|e| e.is_not_found()));
    }
}
