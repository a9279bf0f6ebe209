//! SFTP faults: each gives a clear error naming the target.

use holdfast_targets::{ObjectKey, Target, TargetError};

use crate::conformance::{body, files_in, noise, sftp_creds, sftp_target, slow_body};
use holdfast_testkit::servers::{Sshd, PASSWORD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_auth_error() {
    let Some(sshd) = Sshd::start("wrong_password_is_an_auth_error") else {
        return;
    };
    let mut creds = sftp_creds(&sshd, false);
    creds.password = Some(zeroize::Zeroizing::new("not the password".into()));
    let t = holdfast_targets::sftp::SftpTarget::new("127.0.0.1", sshd.port, None, "/tmp", creds)
        .expect("target");
    let e = t.list(None).await.expect_err("login must fail");
    assert!(matches!(e, TargetError::Auth { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("authentication failed") && text.contains(&format!(":{}", sshd.port)),
        "{text}"
    );
    assert!(!text.contains("not the password") && !text.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_is_pinned_on_first_use_and_a_change_is_refused() {
    let Some(mut sshd) = Sshd::start("host_key_is_pinned") else {
        return;
    };
    let known = sshd.dir.path().join("known_hosts");
    assert!(!known.exists());
    sftp_target(&sshd, false)
        .list(None)
        .await
        .expect("first use records the key");
    let pinned = std::fs::read_to_string(&known).expect("known_hosts written");
    assert!(
        pinned.contains(&format!("[127.0.0.1]:{} SHA256:", sshd.port)),
        "{pinned}"
    );
    sftp_target(&sshd, false)
        .list(None)
        .await
        .expect("same key accepted");

    assert!(sshd.restart_with_new_host_key("host_key_is_pinned"));
    let e = sftp_target(&sshd, false)
        .list(None)
        .await
        .expect_err("changed key");
    assert!(matches!(e, TargetError::HostKeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("host key changed"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&known).expect("pins"),
        pinned,
        "the pin is not replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_leaves_nothing_complete_looking() {
    let Some(mut sshd) = Sshd::start("server_killed_mid_upload") else {
        return;
    };
    let t = sftp_target(&sshd, false);
    let k = ObjectKey::new("big.hfi").expect("key");
    // A slow body: the server dies while it is still being sent.
    let (slow, feeder) = slow_body();
    let upload = tokio::spawn(async move { t.put_stream(&k, slow, false).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sshd.kill();
    let res = upload.await.expect("join");
    feeder.abort();
    let e = res.expect_err("upload must fail");
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{}", sshd.port)),
        "{e}"
    );
    // Nothing under the final name; at most a hidden temporary file.
    assert!(!sshd.data.join("big.hfi").exists());
    for name in files_in(&sshd.data) {
        assert!(holdfast_targets::is_temp_name(&name), "unexpected {name}");
    }
    // The next upload of that name, once the server is back, removes the leftover.
    assert!(sshd.restart("server_killed_mid_upload"));
    let t = sftp_target(&sshd, false);
    let k = ObjectKey::new("big.hfi").expect("key");
    t.put_stream(&k, body(noise(1 << 20, 9)), false)
        .await
        .expect("upload after restart");
    assert_eq!(
        files_in(&sshd.data),
        ["big.hfi"],
        "the partial file is gone"
    );
}
