//! S3 faults against a real SeaweedFS: wrong keys, a missing bucket, a server killed in the
//! middle of an upload.

use holdfast_targets::location::Credentials;
use holdfast_targets::s3::{S3Config, S3Target};
use holdfast_targets::{ObjectKey, Target, TargetError};
use holdfast_testkit::servers::{S3Server, S3_ACCESS_KEY};
use zeroize::Zeroizing;

use crate::conformance::{body, noise, s3_target, slow_body};

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refuses_wrong_keys_and_names_a_missing_bucket() {
    let Some(s3) = S3Server::start("s3_refuses_wrong_keys_and_names_a_missing_bucket") else {
        return;
    };
    s3_target(&s3, "faults", "")
        .create_bucket(false)
        .await
        .expect("bucket");
    let wrong = S3Target::new(
        &S3Config {
            endpoint: s3.endpoint.clone(),
            region: "us-east-1".into(),
            bucket: "faults".into(),
            prefix: String::new(),
            path_style: true,
        },
        Credentials {
            user: Some(S3_ACCESS_KEY.into()),
            password: Some(Zeroizing::new("not-the-secret".into())),
            ..Default::default()
        },
    )
    .expect("target");
    for result in [
        wrong.list(None).await.map(drop),
        wrong.size(&key("x.hfi")).await.map(drop),
        wrong
            .put_stream(&key("x.hfi"), body(vec![1; 10]), false)
            .await
            .map(drop),
    ] {
        let e = result.expect_err("a wrong secret is refused");
        assert!(matches!(e, TargetError::Auth { .. }), "{e:?}");
        assert!(
            !e.to_string().contains("not-the-secret") && e.to_string().contains("faults"),
            "{e}"
        );
    }
    let missing = s3_target(&s3, "no-such-bucket", "x");
    let e = missing.list(None).await.expect_err("no bucket");
    assert!(e.to_string().contains("the bucket does not exist"), "{e}");
}

/// Killed while an image streams in: the upload fails, nothing appears under its name, and the
/// next upload of that name (after the restart) frees the parts the dead one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_killed_mid_upload_leaves_no_object() {
    let test = "s3_killed_mid_upload_leaves_no_object";
    let Some(mut s3) = S3Server::start(test) else {
        return;
    };
    let t = s3_target(&s3, "faults", "site");
    t.create_bucket(false).await.expect("bucket");
    let k = key("img/full.hfi");
    let (slow, feeder) = slow_body();
    let upload = {
        let t = t.clone();
        let k = k.clone();
        tokio::spawn(async move { t.put_stream(&k, slow, false).await })
    };
    // Two parts (32 MiB) are stored by then; the third is on its way.
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    s3.kill();
    let result = upload.await.expect("join");
    feeder.abort();
    assert!(result.is_err(), "{result:?}");
    assert!(s3.restart(test));
    assert!(t.size(&k).await.is_err_and(|e| e.is_not_found()));
    assert_eq!(
        t.unfinished_uploads().await.expect("uploads"),
        vec!["img/full.hfi"]
    );
    let data = noise(20 << 20, 9);
    t.put_stream(&k, body(data.clone()), false)
        .await
        .expect("put after restart");
    assert!(t.unfinished_uploads().await.expect("uploads").is_empty());
    assert_eq!(
        &t.get_range(&k, 0..data.len() as u64).await.expect("read")[..],
        &data[..]
    );
}
