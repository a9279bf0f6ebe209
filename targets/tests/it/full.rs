//! A full target: the upload fails with an error naming the target, and nothing is left.

use std::path::{Path, PathBuf};
use std::process::Command;

use holdfast_targets::local::LocalTarget;
use holdfast_targets::{is_temp_name, ObjectKey, Target};

use crate::conformance::{body, files_in, ftp_target, noise, sftp_target};
use holdfast_testkit::servers::{unavailable, Sshd, Vsftpd, USER};

/// A 16 MiB ext4 mounted on `dir/small`, owned by the test user; unmounted on drop.
struct SmallFs {
    mnt: PathBuf,
    _img: tempfile::TempDir,
}

impl SmallFs {
    fn mount(test: &str, dir: &Path) -> Option<Self> {
        let img = tempfile::tempdir_in("/var/tmp").ok()?;
        let file = img.path().join("small.img");
        std::fs::File::create(&file).ok()?.set_len(16 << 20).ok()?;
        let mnt = dir.join("small");
        std::fs::create_dir_all(&mnt).ok()?;
        let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&file))
            || !ok(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(&mnt))
        {
            unavailable(
                test,
                "cannot make and loop-mount a small filesystem (needs root and e2fsprogs)",
            );
            return None;
        }
        ok(Command::new("chown").arg(format!("{USER}:")).arg(&mnt));
        Some(Self { mnt, _img: img })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // The server's session for a dropped connection may still hold a file open here
        // for a moment after the test ends: retry, and detach lazily if it stays busy.
        let umount = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.mnt)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        for _ in 0..50 {
            if umount(&[]) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        umount(&["--lazy"]);
    }
}

async fn fill(t: &dyn Target, small: &SmallFs) {
    let k = ObjectKey::new("small/too big.hfi").expect("key");
    let e = t
        .put_stream(&k, body(noise(40 << 20, 5)), false)
        .await
        .expect_err("the target is full");
    let text = e.to_string();
    assert!(
        text.contains(&t.caps().display),
        "the error names the target: {text}"
    );
    assert!(
        ["no space", "full disk", "Failure writing"]
            .iter()
            .any(|w| text.contains(w)),
        "the error says what happened: {text}"
    );
    let left: Vec<String> = files_in(&small.mnt)
        .into_iter()
        .filter(|n| n != "lost+found")
        .collect();
    assert!(
        left.is_empty(),
        "left behind on a full target: {left:?} ({text})"
    );
    assert!(left.iter().all(|n| !is_temp_name(n)));
    // No connection left mid-request serves the next operation.
    let elsewhere = ObjectKey::new("after the full one.bin").expect("key");
    let data = noise(20 << 20, 7);
    t.put_stream(&elsewhere, body(data.clone()), false)
        .await
        .expect("an upload outside the full filesystem");
    let back = t
        .get_range(&elsewhere, 0..data.len() as u64)
        .await
        .expect("read back");
    assert!(back == data, "the next upload arrives intact");
    t.delete(&elsewhere).await.expect("delete");
}

#[tokio::test]
async fn full_local_folder() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let Some(small) = SmallFs::mount("full_local_folder", dir.path()) else {
        return;
    };
    let t = LocalTarget::new(dir.path());
    fill(&t, &small).await;
    let e = t
        .put_stream(
            &ObjectKey::new("small/x").expect("key"),
            body(noise(40 << 20, 6)),
            false,
        )
        .await;
    assert!(e.is_err_and(|e| e.to_string().contains("no space left")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sftp_folder() {
    let Some(sshd) = Sshd::start("full_sftp_folder") else {
        return;
    };
    let Some(small) = SmallFs::mount("full_sftp_folder", &sshd.data) else {
        return;
    };
    fill(&sftp_target(&sshd, false), &small).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ftp_folder() {
    let Some(ftpd) = Vsftpd::start("full_ftp_folder") else {
        return;
    };
    let Some(small) = SmallFs::mount("full_ftp_folder", &ftpd.data) else {
        return;
    };
    fill(&ftp_target(&ftpd, false), &small).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_smb_share() {
    let Some(smbd) = holdfast_testkit::servers::Smbd::start("full_smb_share") else {
        return;
    };
    let Some(small) = SmallFs::mount("full_smb_share", &smbd.data) else {
        return;
    };
    fill(
        &crate::conformance::smb_target(&smbd, holdfast_testkit::servers::PASSWORD),
        &small,
    )
    .await;
}
