//! FTP/FTPS faults: each gives a clear error naming the target.

use holdfast_targets::location::Credentials;
use holdfast_targets::{Target, TargetError};
use zeroize::Zeroizing;

use crate::fixtures::{Vsftpd, PASSWORD, USER};

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
