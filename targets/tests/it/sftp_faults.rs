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

/// Servers offering a single cipher each — old (CBC), counter mode, OpenSSH's ChaCha20,
/// AES-GCM — all take an upload and give it back whole; a server offering none of ours is
/// refused once, not retried, with a message that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cipher_we_offer_carries_an_upload_and_none_in_common_is_named() {
    let test = "each_cipher_we_offer";
    for cipher in [
        "aes128-cbc",
        "aes256-ctr",
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
    ] {
        let Some(sshd) = Sshd::start_with_ciphers(test, cipher) else {
            return;
        };
        let t = sftp_target(&sshd, true);
        let data = noise(3 << 20, 11);
        let key = ObjectKey::new("cipher.bin").expect("key");
        t.put_stream(&key, body(data.clone()), false)
            .await
            .unwrap_or_else(|e| panic!("{cipher}: {e}"));
        let back = t
            .get_range(&key, 0..data.len() as u64)
            .await
            .unwrap_or_else(|e| panic!("{cipher}: {e}"));
        assert!(back[..] == data[..], "{cipher}: other bytes came back");
    }
    // OpenSSH still has 3DES; we do not offer it.
    let Some(sshd) = Sshd::start_with_ciphers(test, "3des-cbc") else {
        return;
    };
    let e = sftp_target(&sshd, true)
        .list(None)
        .await
        .expect_err("no cipher in common");
    let text = e.to_string();
    assert!(!e.is_retryable(), "{text}");
    assert!(
        text.contains("no cipher in common") && text.contains("aes128-ctr"),
        "{text}"
    );
}
