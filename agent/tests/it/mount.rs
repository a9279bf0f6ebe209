//! `image mount` / `image dismount`: the middle point of an incremental chain shown as a
//! read-only drive through FUSE, a loop device and the kernel's ext4; its files those of that
//! point; the volume itself shown raw equals a restore of it; released by dismount, and also
//! after the serving process was killed; a damaged image an I/O error, never wrong bytes.
//! `image ls` and `image extract` on the same chain.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use holdfast_testkit::devices::*;

const VOL: u64 = 96 << 20;

/// Start `image mount ARGS --json` and wait for its answer (it serves until dismounted).
pub fn mount(args: &[&str]) -> (Child, serde_json::Value) {
    let mut child = agent()
        .args(["image", "mount"])
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start image mount");
    let mut text = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    // One pretty-printed document: it ends with a closing brace on a line of its own.
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).expect("read") == 0 {
            let status = child.wait().expect("wait");
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err);
            panic!("image mount {args:?} ended ({status}) before mounting: {text}{err}");
        }
        text.push_str(&line);
        if line.trim_end() == "}" {
            break;
        }
    }
    let answer: serde_json::Value = serde_json::from_str(&text).expect("mount answer");
    (child, answer)
}

/// Wait for `child` to end; its exit code.
pub fn ended(child: &mut Child) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code().unwrap_or(-1);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "image mount did not end"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo")
}

/// Nothing of a mount is left: no mount at `dir`, no FUSE folder of its process, no loop
/// device over it, no record (other tests may be mounting images meanwhile).
pub fn released(dir: &Path, answer: &serde_json::Value) {
    let pid = answer["pid"].as_u64().expect("pid");
    let files = format!("/run/holdfast/mounts/{pid}.files");
    let m = mounts();
    assert!(!m.contains(&format!(" {} ", dir.display())), "{m}");
    assert!(!m.contains(&files), "the FUSE mount is left: {m}");
    let loops = sh(std::process::Command::new("losetup").arg("-a"));
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(&files), "{loops}");
    for left in [format!("{pid}.json"), format!("{pid}.files")] {
        assert!(
            !Path::new("/run/holdfast/mounts").join(&left).exists(),
            "{left} is left"
        );
    }
}

/// `image dismount` at `dir`: it succeeds, the serving `child` ends well, nothing is left.
pub fn dismount_released(dir: &Path, mut child: Child, answer: &serde_json::Value) {
    let r = image(&["dismount", "--mountpoint", dir.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ended(&mut child), 0);
    released(dir, answer);
}

#[test]
fn a_chain_point_mounts_read_only_and_is_released_even_after_a_kill() {
    if !require_devices("a_chain_point_mounts_read_only_and_is_released_even_after_a_kill") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let vol = work.join("vol.img");
    sparse_file(&vol, VOL);
    let lo = Loop::new(&vol);
    mkfs(lo.path(), "ext4");
    let img = |n: &str| work.join(n).to_str().expect("path").to_owned();

    // Three points: files, a symlink and a hard link; then changes; then more changes.
    let first = edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 0, 20);
        std::os::unix::fs::symlink("r0/f1.bin", d.join("link")).expect("symlink");
        std::fs::hard_link(d.join("r0/f2.bin"), d.join("hard")).expect("hard link");
        let kept = d.join("r0/f5.bin");
        std::fs::set_permissions(&kept, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .expect("chmod");
        std::os::unix::fs::chown(&kept, Some(1234), Some(5678)).expect("chown");
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_577_934_245);
        std::fs::File::options()
            .write(true)
            .open(&kept)
            .and_then(|f| f.set_modified(when))
            .expect("mtime");
    });
    image_ok(&[
        "create",
        "--source",
        lo.path(),
        "--output",
        &img("full.hfi"),
    ]);
    let middle = edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 1, 8);
        std::fs::remove_file(d.join("r0/f3.bin")).expect("delete");
    });
    image_ok(&[
        "create",
        "--source",
        lo.path(),
        "--output",
        &img("inc1.hfi"),
        "--incremental",
        "--base",
        &img("full.hfi"),
    ]);
    edit_files(lo.path(), "ext4", work, |d| {
        write_files(d, 2, 8);
        std::fs::remove_file(d.join("r0/f4.bin")).expect("delete");
    });
    image_ok(&[
        "create",
        "--source",
        lo.path(),
        "--output",
        &img("inc2.hfi"),
        "--incremental",
        "--base",
        &img("inc1.hfi"),
    ]);
    assert_ne!(first, middle);

    // The middle point, mounted: exactly its files, the link and the hard link as they were.
    let dir = work.join("mnt");
    std::fs::create_dir_all(&dir).expect("mount point");
    let (child, answer) = mount(&[
        "--image",
        &img("inc1.hfi"),
        "--mountpoint",
        dir.to_str().expect("path"),
    ]);
    assert_eq!(answer["filesystem"], "ext4", "{answer}");
    assert_eq!(checksums(&dir), middle);
    assert_eq!(
        std::fs::read_link(dir.join("link")).expect("link"),
        Path::new("r0/f1.bin")
    );
    let (a, b) = (
        std::fs::metadata(dir.join("hard")).expect("hard"),
        std::fs::metadata(dir.join("r0/f2.bin")).expect("f2"),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    // Read-only: nothing can be written to the image.
    assert!(std::fs::write(dir.join("new.txt"), b"no").is_err());
    dismount_released(&dir, child, &answer);

    // Raw: the volume as a file, equal to a restore of the same point.
    let restored = work.join("restored.img");
    image_ok(&[
        "restore",
        "--image",
        &img("inc1.hfi"),
        "--target",
        restored.to_str().expect("path"),
    ]);
    let (mut child, answer) = mount(&[
        "--image",
        &img("inc1.hfi"),
        "--mountpoint",
        dir.to_str().expect("path"),
        "--raw",
    ]);
    assert_eq!(
        answer["files"],
        serde_json::json!(["volume.img"]),
        "{answer}"
    );
    let shown = std::fs::read(dir.join("volume.img")).expect("volume.img");
    assert_eq!(shown.len() as u64, VOL);
    assert!(
        shown == std::fs::read(&restored).expect("restored"),
        "volume.img differs from a restore"
    );
    drop(shown);

    // Killed while serving: dismount releases what it left.
    child.kill().expect("kill");
    let _ = child.wait();
    let r = image(&["dismount", "--mountpoint", dir.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    released(&dir, &answer);

    // Killed with its filesystem mounted: dismount releases the mount, the loop device and
    // the FUSE folder the dead process left.
    let (mut child, answer) = mount(&[
        "--image",
        &img("full.hfi"),
        "--mountpoint",
        dir.to_str().expect("path"),
    ]);
    child.kill().expect("kill");
    let _ = child.wait();
    let r = image(&["dismount", "--mountpoint", dir.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    released(&dir, &answer);

    browse(work, &img, &middle);

    // A damaged image: the reads that meet the damage fail (an I/O error, said by the
    // serving process), never wrong bytes.
    let mut bytes = std::fs::read(img("full.hfi")).expect("full");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(img("damaged.hfi"), bytes).expect("damaged copy");
    assert_eq!(image(&["validate", "--image", &img("damaged.hfi")]).code, 3);
    let (mut child, answer) = mount(&[
        "--image",
        &img("damaged.hfi"),
        "--mountpoint",
        dir.to_str().expect("path"),
        "--raw",
    ]);
    let read = std::fs::read(dir.join("volume.img"));
    assert_eq!(
        read.map_err(|e| e.raw_os_error()).err(),
        Some(Some(5)),
        "EIO"
    );
    let r = image(&["dismount", "--mountpoint", dir.to_str().expect("path")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ended(&mut child), 0);
    let mut said = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut said)
        .expect("stderr");
    assert!(
        said.contains("error: reading the image at offset"),
        "{said}"
    );
    released(&dir, &answer);

    // Nothing mounted there now: dismount says so.
    let r = image(&["dismount", "--mountpoint", dir.to_str().expect("path")]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no image is mounted"), "{}", r.stderr);
    drop(lo);
}

/// `image ls` and `image extract` on the chain `scenario` made.
fn browse(work: &Path, img: &dyn Fn(&str) -> String, middle: &BTreeMap<String, String>) {
    // The root of the middle point, listed: names, kinds, links.
    let listing = image_ok(&["ls", "--image", &img("inc1.hfi")]);
    let entries = listing["entries"].as_array().expect("entries");
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {listing}"))
    };
    assert_eq!(find("r0")["kind"], "dir");
    assert_eq!(find("r1")["kind"], "dir");
    assert_eq!(find("link")["kind"], "symlink");
    assert_eq!(find("link")["target"], "r0/f1.bin");
    assert_eq!(find("hard")["links"], 2);
    assert!(entries.iter().all(|e| e["name"] != "r2"), "r2 came later");
    let one = image_ok(&["ls", "--image", &img("full.hfi"), "/r0/f5.bin"]);
    let f5 = &one["entries"][0];
    assert_eq!(
        (&f5["mode"], &f5["uid"], &f5["gid"], &f5["modified"]),
        (
            &serde_json::json!("0640"),
            &serde_json::json!(1234),
            &serde_json::json!(5678),
            &serde_json::json!("2020-01-02T03:04:05Z")
        ),
        "{one}"
    );

    // A file deleted after the full image comes back from it, byte for byte.
    let out = work.join("out");
    image_ok(&[
        "extract",
        "--image",
        &img("full.hfi"),
        "r0/f3.bin",
        "--to",
        out.to_str().expect("path"),
    ]);
    assert_eq!(
        std::fs::read(out.join("f3.bin")).expect("f3"),
        noise_file(0, 3),
        "the deleted file"
    );
    // The whole middle point: its files, links and hard links, modes, owners and times.
    let tree = work.join("tree");
    let r = image_ok(&[
        "extract",
        "--image",
        &img("inc1.hfi"),
        "/",
        "--to",
        tree.to_str().expect("path"),
    ]);
    assert!(r["hard_links"].as_u64() >= Some(1), "{r}");
    let root = tree.join("root");
    assert_eq!(&checksums(&root), middle);
    let (a, b) = (
        std::fs::symlink_metadata(root.join("hard")).expect("hard"),
        std::fs::symlink_metadata(root.join("r0/f2.bin")).expect("f2"),
    );
    assert_eq!(a.ino(), b.ino(), "hard links stay hard links");
    assert_eq!(
        std::fs::read_link(root.join("link")).expect("link"),
        Path::new("r0/f1.bin")
    );
    let f5 = std::fs::metadata(root.join("r0/f5.bin")).expect("f5");
    assert_eq!(
        (f5.mode() & 0o7777, f5.uid(), f5.gid(), f5.mtime()),
        (0o640, 1234, 5678, 1_577_934_245)
    );
    // Extracting over what exists is refused, unless asked.
    let again = image(&[
        "extract",
        "--image",
        &img("full.hfi"),
        "r0/f3.bin",
        "--to",
        out.to_str().expect("path"),
    ]);
    assert_eq!(again.code, 5, "{}", again.stderr);
    assert!(again.stderr.contains("--overwrite"), "{}", again.stderr);
    image_ok(&[
        "extract",
        "--image",
        &img("full.hfi"),
        "r0/f3.bin",
        "--to",
        out.to_str().expect("path"),
        "--overwrite",
    ]);
    // Paths stay inside the image: no symbolic link followed, no way above its root.
    let through = image(&["ls", "--image", &img("inc1.hfi"), "link/x"]);
    assert_eq!(through.code, 5, "{}", through.stderr);
    assert!(
        through.stderr.contains("is a symbolic link"),
        "{}",
        through.stderr
    );
    let above = image(&["ls", "--image", &img("inc1.hfi"), "../../etc"]);
    assert_ne!(above.code, 0);
    assert!(
        above.stderr.contains("'/etc' is not in the image"),
        "{}",
        above.stderr
    );
}

/// The content `write_files` gives file `i` of round `round`.
fn noise_file(round: u64, i: usize) -> Vec<u8> {
    if i.is_multiple_of(3) {
        return format!("round {round} file {i}\n")
            .repeat(5000)
            .into_bytes();
    }
    noise(20_000 + i * 7_919, round * 1000 + i as u64)
}
