//! SMB faults: each gives a clear error naming the target, and no image is left behind.

use holdfast_targets::location::Credentials;
use holdfast_targets::smb::SmbTarget;
use holdfast_targets::{is_temp_name, ObjectKey, Target, TargetError};
use zeroize::Zeroizing;

use crate::conformance::{body, files_in, noise, smb_target};
use holdfast_testkit::servers::{Smbd, PASSWORD, USER};

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_missing_share_and_missing_folder() {
    let Some(smbd) = Smbd::start("smb_wrong_password") else {
        return;
    };
    let e = smb_target(&smbd, "wrong-password")
        .list(None)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, TargetError::Auth { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("smb://") && !text.contains("wrong-password"),
        "{text}"
    );

    let creds = Credentials {
        user: Some(USER.into()),
        password: Some(Zeroizing::new(PASSWORD.to_owned())),
        ..Default::default()
    };
    let e = SmbTarget::new("127.0.0.1", smbd.port, None, None, "nosuchshare", "", creds)
        .expect("target")
        .list(None)
        .await
        .expect_err("missing share");
    assert!(
        e.to_string().contains("no share named 'nosuchshare'"),
        "{e}"
    );

    let t = smb_target(&smbd, PASSWORD);
    let e = t
        .put_stream(&key("no/such/folder/x.hfi"), body(vec![1; 10]), false)
        .await
        .expect_err("missing folder");
    assert!(e.is_not_found(), "{e}");
    assert!(e.to_string().contains("no/such/folder"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_leaves_no_image() {
    let Some(mut smbd) = Smbd::start("smb_server_killed") else {
        return;
    };
    let t = std::sync::Arc::new(smb_target(&smbd, PASSWORD));
    let k = key("killed.hfi");
    // A body that never ends quickly: the server dies while it is being written.
    let upload = {
        let t = t.clone();
        let k = k.clone();
        tokio::spawn(async move { t.put_stream(&k, body(noise(512 << 20, 9)), false).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    smbd.kill();
    let e = upload.await.expect("join").expect_err("the server died");
    assert!(e.to_string().contains("smb://"), "{e}");
    assert!(smbd.restart("smb_server_killed"));
    // The target reconnects; the name was never completed. The temporary file the dead
    // connection could not remove is hidden from listings and named as one.
    assert!(t.size(&k).await.is_err_and(|e| e.is_not_found()));
    assert!(t
        .list(None)
        .await
        .expect("list")
        .iter()
        .all(|m| m.name != "killed.hfi"));
    let left = files_in(&smbd.data);
    assert!(left.iter().all(|n| is_temp_name(n)), "{left:?}");
    // A new upload of the same name works and removes what earlier ones left (also one
    // planted here, in case the dead connection's file was already gone).
    std::fs::write(
        smbd.data.join(holdfast_targets::temp_name("killed.hfi")),
        b"left",
    )
    .expect("plant a leftover");
    t.put_stream(&k, body(noise(3 << 20, 10)), false)
        .await
        .expect("upload after restart");
    assert_eq!(t.size(&k).await.expect("size"), 3 << 20);
    assert_eq!(files_in(&smbd.data), ["killed.hfi"], "leftovers are gone");
}
