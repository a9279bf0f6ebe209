//! FTP/FTPS faults: each gives a clear error naming the target.

use futures_util::StreamExt as _;
use holdfast_targets::location::Credentials;
use holdfast_targets::{ObjectKey, Target, TargetError};
use zeroize::Zeroizing;

use crate::conformance::{body, files_in, ftp_target, noise, slow_body};
use holdfast_testkit::servers::{Vsftpd, PASSWORD, USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_and_wrong_password_are_refused() {
    let Some(ftpd) = Vsftpd::start("untrusted_certificate") else {
        return;
    };
    let target = |secure: bool, password: &str, ca: bool| {
        let creds = Credentials {
            user: Some(USER.into()),
            password: Some(Zeroizing::new(password.to_owned())),
            ca_file: ca.then(|| ftpd.ca.clone()),
            ..Default::default()
        };
        holdfast_targets::ftp::FtpTarget::new("127.0.0.1", ftpd.port, None, "/tmp", secure, creds)
            .expect("target")
    };
    // The server's certificate is signed by a CA the client was not told to trust.
    let e = target(true, PASSWORD, false)
        .list(None)
        .await
        .expect_err("untrusted certificate");
    let text = e.to_string();
    assert!(text.contains("TLS") && text.contains("ftps://"), "{text}");
    // A wrong password, over plain FTP and over FTPS.
    for secure in [false, true] {
        let e = target(secure, "wrong-password", true)
            .list(None)
            .await
            .expect_err("wrong password");
        assert!(matches!(e, TargetError::Auth { .. }), "{e}");
        assert!(!e.to_string().contains("wrong-password"));
    }
}

/// The server's session dies in the middle of a streamed read: the stream ends with an error
/// naming the target, never as a clean but short read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_mid_stream_ends_the_stream_with_an_error() {
    let Some(ftpd) = Vsftpd::start("session_killed_mid_stream") else {
        return;
    };
    let target = crate::conformance::ftp_target(&ftpd, false);
    let data = crate::conformance::noise(96 << 20, 9);
    let k = ObjectKey::new("big.bin").expect("key");
    target
        .put_stream(&k, crate::conformance::body(data.clone()), false)
        .await
        .expect("put");
    let mut stream = target
        .read_stream(&k, 0..data.len() as u64)
        .await
        .expect("stream");
    let first = stream.next().await.expect("a piece").expect("bytes");
    assert!(first[..] == data[..first.len()]);
    ftpd.kill_sessions();
    let (rest, err) = crate::conformance::drain(stream).await;
    assert!(
        first.len() + rest.len() < data.len(),
        "the read cannot have completed"
    );
    let err = err.expect("the stream must end with an error, not short");
    assert!(
        err.to_string().contains(&target.caps().display),
        "the error names the target: {err}"
    );
}

/// The server's session dies in the middle of an upload: the upload fails with an error
/// naming the target, nothing is under the final name (at most a hidden temporary file),
/// and the next upload of that name removes what earlier ones left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_killed_mid_upload_leaves_nothing_complete_looking() {
    let Some(ftpd) = Vsftpd::start("session_killed_mid_upload") else {
        return;
    };
    let t = std::sync::Arc::new(ftp_target(&ftpd, false));
    let k = ObjectKey::new("big.hfi").expect("key");
    // A slow body: the session dies while it is still being sent.
    let (slow, feeder) = slow_body();
    let upload = {
        let (t, k) = (t.clone(), k.clone());
        tokio::spawn(async move { t.put_stream(&k, slow, false).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ftpd.kill_sessions();
    let res = upload.await.expect("join");
    feeder.abort();
    let e = res.expect_err("upload must fail");
    assert!(e.to_string().contains(&t.caps().display), "{e}");
    assert!(!ftpd.data.join("big.hfi").exists());
    let left = files_in(&ftpd.data);
    assert!(
        left.iter().all(|n| holdfast_targets::is_temp_name(n)),
        "{left:?}"
    );
    // A leftover of an upload whose connection died before it could clean up.
    std::fs::write(
        ftpd.data.join(holdfast_targets::temp_name("big.hfi")),
        b"left",
    )
    .expect("plant a leftover");
    t.put_stream(&k, body(noise(1 << 20, 9)), false)
        .await
        .expect("upload after the sessions died");
    assert_eq!(files_in(&ftpd.data), ["big.hfi"], "leftovers are gone");
}
