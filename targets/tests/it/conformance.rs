//! The contract of `Target`, checked the same way on every backend.

use std::io::Cursor;

use futures_util::StreamExt as _;
use holdfast_targets::local::LocalTarget;
use holdfast_targets::location::Credentials;
use holdfast_targets::s3::{S3Config, S3Target};
use holdfast_targets::sftp::SftpTarget;
use holdfast_targets::smb::SmbTarget;
use holdfast_targets::wrap::{Limited, Retry};
use holdfast_targets::{is_temp_name, Body, ByteStream, ObjectKey, Target, TargetError};
use zeroize::Zeroizing;

use holdfast_testkit::servers::{Sshd, PASSWORD, USER};

pub use holdfast_testkit::devices::noise;

pub fn body(data: Vec<u8>) -> Body {
    Box::new(Cursor::new(data))
}

/// A body that arrives slowly (1 MiB every 10 ms, up to 200 MiB), so a server can be
/// killed while it is still being sent; abort the feeder once the upload has ended.
pub fn slow_body() -> (Body, tokio::task::JoinHandle<()>) {
    let (mut w, r) = tokio::io::duplex(1 << 20);
    let feeder = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for i in 0..200u64 {
            if w.write_all(&noise(1 << 20, i)).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    (Box::new(r), feeder)
}

/// The names in the folder `dir` on this machine (a server's data folder), sorted.
pub fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).expect("key")
}

/// A body that fails after `n` bytes, as a dying source would.
pub struct Failing {
    pub left: usize,
}

impl tokio::io::AsyncRead for Failing {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("source went away")));
        }
        let n = buf.remaining().min(self.left).min(65536);
        buf.put_slice(&vec![7u8; n]);
        self.left -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

async fn names(t: &dyn Target, dir: Option<&ObjectKey>) -> Vec<String> {
    let mut n: Vec<String> = t
        .list(dir)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    n.sort();
    n
}

/// All of a stream's items: the bytes, and the error it ended with, if any.
pub async fn drain(mut s: ByteStream) -> (Vec<u8>, Option<TargetError>) {
    let mut got = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(piece) => got.extend_from_slice(&piece),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// Streamed reads where the target offers them: exact bytes from odd offsets, a range past the
/// end refused, a stream dropped early leaves the target usable. Elsewhere they are refused.
async fn streamed_reads(t: &dyn Target, k: &ObjectKey, data: &[u8]) {
    let display = t.caps().display;
    let len = data.len() as u64;
    if !t.caps().stream_reads {
        let refused = t.read_stream(k, 0..len).await;
        assert!(
            matches!(refused, Err(TargetError::Invalid(_))),
            "{display}: streamed reads are not offered"
        );
        return;
    }
    for range in [0..len, 3..len, 1_000_003..9_777_777, len - 5..len, 7..7] {
        let stream = t.read_stream(k, range.clone()).await.expect("stream");
        let (got, err) = drain(stream).await;
        assert!(err.is_none(), "{range:?} on {display}: {err:?}");
        assert!(
            got[..] == data[range.start as usize..range.end as usize],
            "{range:?} on {display}"
        );
    }
    let past = drain(t.read_stream(k, len - 2..len + 2).await.expect("stream")).await;
    assert!(
        matches!(past, (ref got, Some(TargetError::Permanent { .. })) if got.is_empty()),
        "{past:?}"
    );
    // Dropped after its first piece: the transfer stops, and the target reads on.
    let mut early = t.read_stream(k, 0..len).await.expect("stream");
    let first = early.next().await.expect("a piece").expect("bytes");
    assert!(first[..] == data[..first.len()]);
    drop(early);
    let got = t
        .get_range(k, 11..4107)
        .await
        .expect("range after a dropped stream");
    assert!(got[..] == data[11..4107]);
    let (got, err) = drain(t.read_stream(k, 0..len).await.expect("stream")).await;
    assert!(err.is_none() && got[..] == data[..], "{display}: {err:?}");
}

/// Everything the trait promises.
pub async fn suite(t: &dyn Target) {
    let display = t.caps().display;
    // Nested folders with spaces and non-ASCII names.
    let dir = key("images/Büro 2026/ñ");
    t.mkdirs(&dir).await.expect("mkdirs");
    t.mkdirs(&dir).await.expect("mkdirs is idempotent");

    // Round trip of a large stream.
    let data = noise(24 << 20, 1);
    let k = key("images/Büro 2026/ñ/full image ü.hfi");
    let n = t
        .put_stream(&k, body(data.clone()), false)
        .await
        .expect("put");
    assert_eq!(n, data.len() as u64);
    assert_eq!(t.size(&k).await.expect("size"), data.len() as u64);

    // Ranged reads at odd offsets, and a range past the end.
    for (s, len) in [
        (0u64, 1usize),
        (3, 4093),
        (1_000_003, 777_777),
        (data.len() as u64 - 5, 5),
    ] {
        let got = t.get_range(&k, s..s + len as u64).await.expect("range");
        assert!(
            got[..] == data[s as usize..s as usize + len],
            "range {s}+{len} on {display}"
        );
    }
    let past = t
        .get_range(&k, data.len() as u64 - 2..data.len() as u64 + 2)
        .await;
    assert!(
        matches!(past, Err(TargetError::Permanent { .. })),
        "{past:?}"
    );

    streamed_reads(t, &k, &data).await;

    // An existing name is refused unless overwrite is asked, and stays intact.
    let again = t.put_stream(&k, body(b"other".to_vec()), false).await;
    assert!(
        matches!(again, Err(TargetError::Exists { .. })),
        "{again:?}"
    );
    assert_eq!(t.size(&k).await.expect("size"), data.len() as u64);
    assert_eq!(
        t.put_stream(&k, body(b"replaced".to_vec()), true)
            .await
            .expect("overwrite"),
        8
    );
    assert_eq!(&t.get_range(&k, 0..8).await.expect("read")[..], b"replaced");

    // A failing body leaves nothing under the key and no temporary file (failing after more
    // than a pipelined writer keeps in flight).
    let k2 = key("images/Büro 2026/ñ/broken.hfi");
    let broken = t
        .put_stream(&k2, Box::new(Failing { left: 9 << 20 }), false)
        .await;
    assert!(broken.is_err());
    assert!(matches!(
        t.size(&k2).await,
        Err(TargetError::NotFound { .. })
    ));

    // List: each entry once, folders marked, no temporary names.
    t.put_stream(
        &key("images/Büro 2026/ñ/second one.hfi"),
        body(vec![1; 10]),
        false,
    )
    .await
    .expect("put");
    assert_eq!(
        names(t, Some(&dir)).await,
        vec!["full image ü.hfi", "second one.hfi"]
    );
    let top = t.list(Some(&key("images"))).await.expect("list");
    assert!(
        top.iter().any(|m| m.name == "Büro 2026" && m.is_dir),
        "{top:?}"
    );
    assert!(t
        .list(Some(&dir))
        .await
        .expect("list")
        .iter()
        .all(|m| !is_temp_name(&m.name)));

    // Delete, then delete again: NotFound.
    t.delete(&k).await.expect("delete");
    assert!(t.delete(&k).await.is_err_and(|e| e.is_not_found()));
    assert_eq!(names(t, Some(&dir)).await, vec!["second one.hfi"]);

    // Errors name the target, never a password.
    let missing = t.size(&key("no/such/file")).await.expect_err("missing");
    assert!(
        missing.to_string().contains(&display) && !missing.to_string().contains(PASSWORD),
        "{missing}"
    );
}

#[tokio::test]
async fn local_folder_conforms() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    suite(&LocalTarget::new(dir.path())).await;
    nothing_temporary_left(dir.path());
}

/// No temporary file (an upload's, or an old image moved aside while replaced) is left
/// anywhere under `root`, not even hidden from listings.
fn nothing_temporary_left(root: &std::path::Path) {
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).expect("dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!is_temp_name(&name), "left behind: {name}");
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
}

pub fn sftp_creds(sshd: &Sshd, use_key: bool) -> Credentials {
    Credentials {
        user: Some(USER.into()),
        password: (!use_key).then(|| Zeroizing::new(PASSWORD.to_owned())),
        private_key: use_key.then(|| sshd.client_key.clone()),
        passphrase: None,
        known_hosts: Some(sshd.dir.path().join("known_hosts")),
        // Both pins: the key an admin confirmed (with key logins), the known-hosts file
        // (with passwords).
        host_key: use_key.then(|| sshd.host_key_fingerprint()),
        ca_file: None,
    }
}

pub fn sftp_target(sshd: &Sshd, use_key: bool) -> SftpTarget {
    SftpTarget::new(
        "127.0.0.1",
        sshd.port,
        None,
        &sshd.data.display().to_string(),
        sftp_creds(sshd, use_key),
    )
    .expect("target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_with_password_conforms() {
    let Some(sshd) = Sshd::start("sftp_with_password_conforms") else {
        return;
    };
    suite(&Retry::new(
        Limited::new(sftp_target(&sshd, false), 4),
        3,
        std::time::Duration::from_millis(50),
    ))
    .await;
    nothing_temporary_left(&sshd.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_with_private_key_conforms() {
    let Some(sshd) = Sshd::start("sftp_with_private_key_conforms") else {
        return;
    };
    suite(&sftp_target(&sshd, true)).await;
    nothing_temporary_left(&sshd.data);
}

pub fn ftp_target(
    ftpd: &holdfast_testkit::servers::Vsftpd,
    secure: bool,
) -> holdfast_targets::ftp::FtpTarget {
    let creds = Credentials {
        user: Some(USER.into()),
        password: Some(Zeroizing::new(PASSWORD.to_owned())),
        ca_file: Some(ftpd.ca.clone()),
        ..Default::default()
    };
    holdfast_targets::ftp::FtpTarget::new(
        "127.0.0.1",
        ftpd.port,
        None,
        &ftpd.data.display().to_string(),
        secure,
        creds,
    )
    .expect("target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_conforms() {
    let Some(ftpd) = holdfast_testkit::servers::Vsftpd::start("ftp_conforms") else {
        return;
    };
    suite(&ftp_target(&ftpd, false)).await;
    nothing_temporary_left(&ftpd.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_conforms() {
    let Some(ftpd) = holdfast_testkit::servers::Vsftpd::start("ftps_conforms") else {
        return;
    };
    suite(&ftp_target(&ftpd, true)).await;
    nothing_temporary_left(&ftpd.data);
}

pub fn smb_target(smbd: &holdfast_testkit::servers::Smbd, password: &str) -> SmbTarget {
    let creds = Credentials {
        user: Some(USER.into()),
        password: Some(Zeroizing::new(password.to_owned())),
        ..Default::default()
    };
    SmbTarget::new("127.0.0.1", smbd.port, None, None, "backup", "", creds).expect("target")
}

/// The same contract when every few MiB move to a new connection (as every 256 MiB do by
/// default): uploads continue their file on the next one, reads go on there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_conforms_across_connections() {
    let Some(smbd) = holdfast_testkit::servers::Smbd::start("smb_conforms_across_connections")
    else {
        return;
    };
    let t = smb_target(&smbd, PASSWORD).rotate_after(3 << 20);
    suite(&t).await;
    // The suite moves over 48 MiB (a 24 MiB stream up and back): many new connections.
    assert!(t.logins() >= 8, "only {} logins", t.logins());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smb_conforms() {
    let Some(smbd) = holdfast_testkit::servers::Smbd::start("smb_conforms") else {
        return;
    };
    let t = smb_target(&smbd, PASSWORD);
    suite(&t).await;
    nothing_temporary_left(&smbd.data);
    assert!(t
        .free_space()
        .await
        .expect("free space")
        .is_some_and(|f| f > 0));
}

pub fn s3_target(s3: &holdfast_testkit::servers::S3Server, bucket: &str, prefix: &str) -> S3Target {
    use holdfast_testkit::servers::{S3_ACCESS_KEY, S3_SECRET_KEY};
    let creds = Credentials {
        user: Some(S3_ACCESS_KEY.into()),
        password: Some(Zeroizing::new(S3_SECRET_KEY.to_owned())),
        ..Default::default()
    };
    let config = S3Config {
        endpoint: s3.endpoint.clone(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        prefix: prefix.into(),
        path_style: true,
    };
    S3Target::new(&config, creds).expect("target")
}

/// SeaweedFS on loopback: the same contract, in a folder of a bucket; multipart uploads
/// (the suite's 24 MiB stream is two parts) leave no unfinished upload behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conforms() {
    let Some(s3) = holdfast_testkit::servers::S3Server::start("s3_conforms") else {
        return;
    };
    let t = s3_target(&s3, "backups", "site a");
    t.create_bucket(false).await.expect("bucket");
    suite(&t).await;
    // The same bucket from its root sees the folder.
    let root = s3_target(&s3, "backups", "");
    let top = root.list(None).await.expect("list the root");
    assert!(
        top.iter().any(|m| m.name == "site a" && m.is_dir),
        "{top:?}"
    );
    // A body failing in its third part: the multipart upload is aborted, its parts freed.
    let k = key("images/broken big.hfi");
    let broken = t
        .put_stream(&k, Box::new(Failing { left: 40 << 20 }), false)
        .await
        .expect_err("a failing body fails the upload");
    assert!(broken.to_string().contains("source went away"), "{broken}");
    assert!(t.size(&k).await.is_err_and(|e| e.is_not_found()));
    assert!(t.unfinished_uploads().await.expect("uploads").is_empty());
    assert!(t.free_space().await.expect("free space").is_none());
}
