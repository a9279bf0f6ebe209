//! Images written to and read from real servers on loopback: SFTP (`sshd`), FTP and FTPS
//! (`vsftpd`) and SMB (Samba `smbd`): a chain of five points validated, restored and its
//! middle point mounted from there (that point's files; released, also after a kill) and a
//! file deleted later extracted from it.

use std::path::Path;
use std::process::Command;

use holdfast_testkit::devices::*;
use holdfast_testkit::servers::{Smbd, Sshd, Vsftpd, PASSWORD, USER};

#[test]
fn encrypted_split_chain_on_sftp_validates_and_restores_from_there() {
    if !require_devices("chain_on_sftp") {
        return;
    }
    let Some(sshd) = Sshd::start("chain_on_sftp") else {
        return;
    };
    let t = tempdir();
    let known = t.path().join("known_hosts");
    chain_on_target(
        &|name: &str| {
            format!(
                "sftp://{USER}@127.0.0.1:{}{}/{name}",
                sshd.port,
                sshd.data.display()
            )
        },
        &|| files_in(&sshd.data),
        &|password: &str| {
            format!(
                "# test target\nuser = {USER}\npassword = {password}\nknown_hosts = {}\n",
                known.display()
            )
        },
    );
}

/// An image larger than the SFTP folder's filesystem: the run fails with the server's own
/// reason (not just that the upload stopped, said twice) and leaves nothing in the folder.
#[test]
fn an_image_too_big_for_its_sftp_folder_fails_saying_why_and_leaves_nothing() {
    const TEST: &str = "image_too_big_for_sftp";
    if !require_devices(TEST) {
        return;
    }
    let Some(sshd) = Sshd::start(TEST) else {
        return;
    };
    let t = tempdir();
    let fs_file = t.path().join("small.img");
    sparse_file(&fs_file, 16 << 20);
    let small = Loop::new(&fs_file);
    mkfs(small.path(), "ext4");
    let folder = sshd.data.join("small");
    let _mounted = Mounted::new(small.path(), &folder, "rw");
    sh(Command::new("chown").arg(format!("{USER}:")).arg(&folder));
    let source = t.path().join("source.bin");
    // Far more than the folder holds, so the writer is still sending when the upload fails
    // (stored as it is: no compression).
    std::fs::write(&source, vec![0x5a; 160 << 20]).expect("source");
    let creds = t.path().join("creds");
    let known = t.path().join("known_hosts");
    std::fs::write(
        &creds,
        format!(
            "user = {USER}\npassword = {PASSWORD}\nknown_hosts = {}\n",
            known.display()
        ),
    )
    .expect("credentials");
    let output = format!(
        "sftp://{USER}@127.0.0.1:{}{}/big.hfi",
        sshd.port,
        folder.display()
    );
    let r = image(&[
        "create",
        "--source",
        source.to_str().expect("utf-8"),
        "--output",
        &output,
        "--forensic",
        "--compression-level",
        "0",
        "--credentials-file",
        creds.to_str().expect("utf-8"),
    ]);
    assert_ne!(r.code, 0, "a 160 MiB image fit in 16 MiB: {}", r.json);
    assert!(
        r.stderr.contains("full disk") && !r.stderr.contains("the upload stopped"),
        "the error says the server's reason: {}",
        r.stderr
    );
    let left: Vec<String> = std::fs::read_dir(&folder)
        .expect("folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    assert!(left.is_empty(), "left in the folder: {left:?}");
}

#[test]
fn encrypted_split_chain_on_ftps_validates_and_restores_from_there() {
    chain_on_ftp("chain_on_ftps", "ftps");
}

#[test]
fn encrypted_split_chain_on_ftp_validates_and_restores_from_there() {
    chain_on_ftp("chain_on_ftp", "ftp");
}

fn chain_on_ftp(test: &str, scheme: &str) {
    if !require_devices(test) {
        return;
    }
    let Some(ftpd) = Vsftpd::start(test) else {
        return;
    };
    chain_on_target(
        &|name: &str| {
            format!(
                "{scheme}://{USER}@127.0.0.1:{}{}/{name}",
                ftpd.port,
                ftpd.data.display()
            )
        },
        &|| files_in(&ftpd.data),
        &|password: &str| {
            format!(
                "user = {USER}\npassword = {password}\nca_file = {}\n",
                ftpd.ca.display()
            )
        },
    );
}

#[test]
fn encrypted_split_chain_on_smb_validates_and_restores_from_there() {
    if !require_devices("chain_on_smb") {
        return;
    }
    let Some(smbd) = Smbd::start("chain_on_smb") else {
        return;
    };
    let folder = smbd.data.join("Büro images");
    std::fs::create_dir_all(&folder).expect("folder");
    let owned = std::process::Command::new("chown")
        .arg(format!("{USER}:"))
        .arg(&folder)
        .status();
    assert!(owned.is_ok_and(|s| s.success()));
    chain_on_target(
        &|name: &str| {
            format!(
                "smb://WORKGROUP;{USER}@127.0.0.1:{}/backup/B%C3%BCro%20images/{name}",
                smbd.port
            )
        },
        &|| files_in(&folder),
        &|password: &str| format!("password = {password}\n"),
    );
}

/// The names of the files in `dir`.
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("the server's folder")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn encrypted_split_chain_on_s3_validates_and_restores_from_there() {
    use holdfast_targets::location::{Credentials, Location};
    use holdfast_testkit::servers::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};
    if !require_devices("chain_on_s3") {
        return;
    }
    let Some(s3) = S3Server::start("chain_on_s3") else {
        return;
    };
    let folder = format!(
        "s3://images/site%20a/b%C3%BCro?endpoint={}&region=eu-west-1",
        s3.endpoint
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let creds = Credentials {
        user: Some(S3_ACCESS_KEY.into()),
        password: Some(zeroize::Zeroizing::new(S3_SECRET_KEY.into())),
        ..Default::default()
    };
    let target = Location::parse(&folder)
        .expect("url")
        .open(creds)
        .expect("target");
    let Location::S3(config) = Location::parse(&folder).expect("url") else {
        panic!("not s3")
    };
    let bucket = holdfast_targets::s3::S3Target::new(
        &config,
        Credentials {
            user: Some(S3_ACCESS_KEY.into()),
            password: Some(zeroize::Zeroizing::new(S3_SECRET_KEY.into())),
            ..Default::default()
        },
    )
    .expect("target");
    rt.block_on(bucket.create_bucket(false)).expect("bucket");
    chain_on_target(
        &|name: &str| {
            let (path, query) = folder.split_once('?').expect("query");
            format!("{path}/{name}?{query}")
        },
        &|| {
            rt.block_on(target.list(None))
                .expect("list")
                .into_iter()
                .map(|m| m.name)
                .collect()
        },
        &|password: &str| format!("user = {S3_ACCESS_KEY}\npassword = {password}\n"),
    );
}

/// Full and incremental, encrypted and split, on the target; validated there and restored
/// from there by byte ranges; an existing name refused; a wrong target password a clear error.
fn chain_on_target(
    url: &dyn Fn(&str) -> String,
    names_there: &dyn Fn() -> Vec<String>,
    creds_text: &dyn Fn(&str) -> String,
) {
    let t = tempdir();
    let work = t.path();
    let vol = work.join("vol.img");
    sparse_file(&vol, 64 << 20);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let mut states = vec![edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 0, 20);
        std::fs::write(d.join("noise.bin"), noise(12 << 20, 2)).expect("noise");
    })];
    let creds = work.join("creds");
    std::fs::write(&creds, creds_text(PASSWORD)).expect("creds");
    let pw = work.join("pw");
    std::fs::write(&pw, "image password\n").expect("pw");
    let (creds, pw) = (
        creds.to_str().expect("p").to_owned(),
        pw.to_str().expect("p").to_owned(),
    );
    let full = url("full.hfi");
    let s = image_ok(&[
        "create",
        "--source",
        lo.path(),
        "--output",
        &full,
        "--encrypt",
        "aes256",
        "--password-file",
        &pw,
        "--split",
        "5M",
        "--credentials-file",
        &creds,
    ]);
    assert!(s["parts"].as_u64().expect("parts") > 1, "{s}");
    assert!(names_there().iter().any(|n| n == "full.hfi.002"));
    // Four incrementals: a chain of five points. A file deleted after the middle one.
    let mut points = vec![full.clone()];
    for round in 1..=4u64 {
        states.push(edit_files(lo.path(), "ext4", work, |d| {
            write_files(d, round, 5);
            if round == 3 {
                std::fs::remove_file(d.join("r0/f4.bin")).expect("rm");
            }
        }));
        let next = url(&format!("inc{round}.hfi"));
        image_ok(&[
            "create",
            "--source",
            lo.path(),
            "--output",
            &next,
            "--incremental",
            "--base",
            points.last().expect("base"),
            "--password-file",
            &pw,
            "--credentials-file",
            &creds,
        ]);
        points.push(next);
    }
    let inc = points[4].clone();
    let v = image_ok(&[
        "validate",
        "--image",
        &inc,
        "--chain",
        "--password-file",
        &pw,
        "--credentials-file",
        &creds,
    ]);
    assert_eq!(v["chain"].as_array().map(Vec::len), Some(5), "{v}");
    let info = image_ok(&["info", "--image", &full, "--credentials-file", &creds]);
    assert_eq!(info["encryption"], "aes256");
    for (i, img) in [(0, &full), (4, &inc)] {
        let target = work.join("restore.img");
        sparse_file(&target, 64 << 20);
        let rl = Loop::new(&target);
        image_ok(&[
            "restore",
            "--image",
            img,
            "--target",
            rl.path(),
            "--password-file",
            &pw,
            "--credentials-file",
            &creds,
        ]);
        fsck_clean(rl.path(), "ext4");
        assert_eq!(
            read_files(rl.path(), "ext4", work),
            states[i],
            "restored from {img}"
        );
    }
    // The middle point mounted from the target, read by byte ranges: that point's files;
    // released by `image dismount`, and again after the serving process is killed.
    let dir = work.join("mnt");
    std::fs::create_dir_all(&dir).expect("mount point");
    let dir_arg = dir.to_str().expect("path");
    let middle = &points[2];
    let args = [
        "--image",
        middle.as_str(),
        "--mountpoint",
        dir_arg,
        "--password-file",
        &pw,
        "--credentials-file",
        &creds,
    ];
    let (child, answer) = crate::mount::mount(&args);
    assert_eq!(checksums(&dir), states[2], "mounted from {middle}");
    crate::mount::dismount_released(&dir, child, &answer);
    let (mut child, answer) = crate::mount::mount(&args);
    child.kill().expect("kill");
    let _ = child.wait();
    let r = image(&["dismount", "--mountpoint", dir_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    crate::mount::released(&dir, &answer);
    // A file deleted after the middle point comes back from it byte for byte.
    let back = work.join("back");
    image_ok(&[
        "extract",
        "--image",
        middle,
        "/r0/f4.bin",
        "--to",
        back.to_str().expect("path"),
        "--password-file",
        &pw,
        "--credentials-file",
        &creds,
    ]);
    assert!(!states[4].contains_key("r0/f4.bin"));
    assert_eq!(
        blake3::hash(&std::fs::read(back.join("f4.bin")).expect("extracted"))
            .to_hex()
            .to_string(),
        states[2]["r0/f4.bin"]
    );

    // An existing name is refused; nothing is left behind but the chain's images.
    let r = image(&[
        "create",
        "--source",
        lo.path(),
        "--output",
        &full,
        "--credentials-file",
        &creds,
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    let names = names_there();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("full.hfi") || (n.starts_with("inc") && n.ends_with(".hfi"))),
        "{names:?}"
    );

    // An overwrite interrupted midway leaves the existing image as it was.
    let before = image_ok(&["info", "--image", &full, "--credentials-file", &creds])
        ["content_digest"]
        .clone();
    let src = work.join("slow.img");
    let mut slow = noise(48 << 20, 3);
    for (i, b) in slow.iter_mut().enumerate() {
        if (i / 4096) % 2 == 0 {
            *b = (i % 7) as u8;
        }
    }
    std::fs::write(&src, slow).expect("source");
    let mut child = agent()
        .args([
            "image",
            "create",
            "--source",
            src.to_str().expect("p"),
            "--output",
            &full,
            "--overwrite",
        ])
        .args([
            "--compression-level",
            "19",
            "--threads",
            "1",
            "--forensic",
            "--credentials-file",
            &creds,
        ])
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    assert_eq!(child.wait().expect("wait").code(), Some(6));
    let after = image_ok(&["info", "--image", &full, "--credentials-file", &creds])
        ["content_digest"]
        .clone();
    assert_eq!(
        before, after,
        "the interrupted overwrite must not touch the existing image"
    );
    image_ok(&[
        "validate",
        "--image",
        &full,
        "--password-file",
        &pw,
        "--credentials-file",
        &creds,
    ]);

    // A wrong target password is a clear error that never shows the password.
    std::fs::write(&creds, creds_text("wrong-pass")).expect("creds");
    let r = image(&["info", "--image", &full, "--credentials-file", &creds]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("authentication failed") && !r.stderr.contains("wrong-pass"),
        "{}",
        r.stderr
    );
}

/// An SFTP server's host key: shown from the handshake alone, held to when given, and a
/// changed key refused before any credential is sent (a wrong password is never reached).
#[test]
fn sftp_host_key_is_shown_then_held_to() {
    const TEST: &str = "sftp_host_key";
    let Some(mut sshd) = Sshd::start(TEST) else {
        return;
    };
    let url = format!(
        "sftp://{USER}@127.0.0.1:{}{}",
        sshd.port,
        sshd.data.display()
    );
    let key = sshd.host_key_fingerprint();
    let run = |what: &str, host_key: &str, password: &str| {
        agent()
            .args(["target", what, "--url", &url, "--json"])
            .env("HOLDFAST_TARGET_PASSWORD", password)
            .env("HOLDFAST_TARGET_HOST_KEY", host_key)
            .env("HOLDFAST_KNOWN_HOSTS", "/nonexistent/known_hosts")
            .output()
            .expect("agent")
    };
    let shown = run("host-key", "", "");
    assert!(shown.status.success(), "{shown:?}");
    let probe: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(
        probe["host_key"],
        serde_json::json!({"fingerprint": key, "confirmed": false}),
        "the key is the one ssh-keygen -lf shows: {probe}"
    );
    assert_eq!(probe["ok"], false, "{probe}");

    let tested = run("test", &key, PASSWORD);
    assert!(tested.status.success(), "{tested:?}");
    let probe: serde_json::Value = serde_json::from_slice(&tested.stdout).expect("json");
    assert_eq!(probe["ok"], true, "{probe}");
    assert_eq!(probe["host_key"]["confirmed"], true, "{probe}");

    // The server is "reinstalled": its new key is refused, before the (wrong) password
    // could be tried.
    assert!(sshd.restart_with_new_host_key(TEST), "sshd restarts");
    let refused = run("test", &key, "not-the-password");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("not the one an admin confirmed")
            && !err.contains("authentication"),
        "{refused:?}"
    );
    assert_ne!(sshd.host_key_fingerprint(), key);
}

/// Images locked on an S3 bucket with Object Lock from the command line: every part locked,
/// `image delete` refused with exit code 7 until the lock ends and done after; a lock asked of
/// storage that cannot keep it refused; `target test` tells whether the bucket locks.
#[test]
fn images_locked_on_s3_are_deleted_only_after_the_lock() {
    use holdfast_targets::location::{Credentials, Location};
    use holdfast_testkit::servers::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};
    const TEST: &str = "images_locked_on_s3";
    if !require_devices(TEST) {
        return;
    }
    let Some(s3) = S3Server::start(TEST) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (bucket, lock) in [("vault", true), ("open", false)] {
        let url = format!("s3://{bucket}?endpoint={}", s3.endpoint);
        let Location::S3(config) = Location::parse(&url).expect("url") else {
            panic!("not s3")
        };
        let creds = Credentials {
            user: Some(S3_ACCESS_KEY.into()),
            password: Some(zeroize::Zeroizing::new(S3_SECRET_KEY.into())),
            ..Default::default()
        };
        let b = holdfast_targets::s3::S3Target::new(&config, creds).expect("target");
        rt.block_on(b.create_bucket(lock)).expect("bucket");
    }
    let t = tempdir();
    let work = t.path();
    let creds = work.join("creds");
    std::fs::write(
        &creds,
        format!("user = {S3_ACCESS_KEY}\npassword = {S3_SECRET_KEY}\n"),
    )
    .expect("creds");
    let creds = creds.to_str().expect("p");
    let src = work.join("src.img");
    std::fs::write(&src, noise(12 << 20, 5)).expect("source");
    let src = src.to_str().expect("p");
    let url = format!("s3://vault/pcs/a.hfi?endpoint={}", s3.endpoint);

    let local = work.join("local.hfi");
    let r = image(&[
        "create",
        "--source",
        src,
        "--output",
        local.to_str().expect("p"),
        "--lock-for",
        "5s",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("only S3 targets can lock images"),
        "{}",
        r.stderr
    );
    assert!(!local.exists());

    let made = image_ok(&[
        "create",
        "--source",
        src,
        "--output",
        &url,
        "--split",
        "5M",
        "--lock-for",
        "5s",
        "--lock-mode",
        "compliance",
        "--credentials-file",
        creds,
    ]);
    assert_eq!(made["parts"], 3, "{made}");
    let r = image(&["delete", "--image", &url, "--credentials-file", creds]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(
        r.stderr.contains("locked (Object Lock) until"),
        "{}",
        r.stderr
    );
    image_ok(&["validate", "--image", &url, "--credentials-file", creds]);

    let probe = |folder: &str| {
        let out = agent()
            .args([
                "target",
                "test",
                "--json",
                "--url",
                folder,
                "--credentials-file",
                creds,
            ])
            .output()
            .expect("target test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let vault = probe(&format!("s3://vault/pcs?endpoint={}", s3.endpoint));
    assert_eq!(vault["object_lock"]["enabled"], true, "{vault}");
    let open = probe(&format!("s3://open?endpoint={}", s3.endpoint));
    assert_eq!(open["object_lock"]["enabled"], false, "{open}");

    // Held to the lower of the target's limit (--bandwidth) and the machine's
    // (HOLDFAST_AGENT_BANDWIDTH): 12 MiB at 2 MiB/s cannot take less than 5 s.
    let slow = format!("s3://open/slow.hfi?endpoint={}", s3.endpoint);
    let started = std::time::Instant::now();
    let out = agent()
        .env("HOLDFAST_AGENT_BANDWIDTH", "2M")
        .args([
            "image", "create", "--json", "--source", src, "--output", &slow,
        ])
        .args([
            "--bandwidth",
            "8M@*/00:00-24:00",
            "--credentials-file",
            creds,
        ])
        .output()
        .expect("create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(5),
        "12 MiB in {took:?}"
    );
    let bad = agent()
        .args(["image", "info", "--image", &slow, "--bandwidth", "fast"])
        .output()
        .expect("info");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rate 'fast'"));

    std::thread::sleep(std::time::Duration::from_secs(7).saturating_sub(took));
    let gone = image_ok(&["delete", "--image", &url, "--credentials-file", creds]);
    assert_eq!(gone["parts"], 3, "{gone}");
}
