//! Bad input: each case gets a clear error and damages nothing.

use std::path::{Path, PathBuf};

use holdfast_testkit::devices::*;

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    vol: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let t = tempdir();
        let dir = t.path().to_owned();
        let vol = dir.join("vol.img");
        sparse_file(&vol, 48 << 20);
        let lo = Loop::new(&vol);
        mkfs(lo.path(), "ext4");
        {
            let m = Mounted::new(lo.path(), &dir.join("mnt"), "rw");
            write_files(&m.dir, 0, 16);
            std::fs::write(m.dir.join("noise.bin"), noise(12 << 20, 1)).expect("noise");
        }
        Self { _t: t, dir, vol }
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).to_str().expect("path").to_owned()
    }
    fn vol(&self) -> &str {
        self.vol.to_str().expect("path")
    }
}

fn hash(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).expect("read"))
        .to_hex()
        .to_string()
}

/// The names in folder `dir` but `lost+found`.
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect()
}

/// The permission bits of `path`.
fn mode_of(path: &str) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).expect("meta").permissions())
        & 0o777
}

/// The fixture's files whose names contain `part`.
fn files_named(f: &Fixture, part: &str) -> Vec<String> {
    std::fs::read_dir(f.p(""))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect()
}

/// A restore target full of a pattern, to prove a refused restore wrote nothing.
fn patterned_target(f: &Fixture) -> (PathBuf, String) {
    let t = f.dir.join("target.img");
    std::fs::write(&t, vec![0xA5u8; 48 << 20]).expect("target");
    let h = hash(&t);
    (t, h)
}

#[test]
fn wrong_password_is_refused_before_anything_is_written() {
    if !require_devices("wrong_password") {
        return;
    }
    let f = Fixture::new();
    std::fs::write(f.p("pw"), "right\n").expect("pw");
    std::fs::write(f.p("bad"), "wrong\n").expect("pw");
    image_ok(&[
        "create",
        "--source",
        f.vol(),
        "--output",
        &f.p("e.hfi"),
        "--encrypt",
        "aes192",
        "--password-file",
        &f.p("pw"),
    ]);
    let (target, before) = patterned_target(&f);
    let r = image(&[
        "restore",
        "--image",
        &f.p("e.hfi"),
        "--target",
        target.to_str().expect("p"),
        "--password-file",
        &f.p("bad"),
    ]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("wrong password"), "{}", r.stderr);
    assert_eq!(hash(&target), before);
    let r = image(&[
        "restore",
        "--image",
        &f.p("e.hfi"),
        "--target",
        target.to_str().expect("p"),
    ]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("is encrypted"), "{}", r.stderr);
    // The password also comes from the environment.
    let out = agent()
        .args(["image", "validate", "--image", &f.p("e.hfi"), "--json"])
        .env("HOLDFAST_PASSWORD", "right")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"full\""));
}

/// One damaged byte in the first copy of an image's index: validation fails naming that copy,
/// and a restore reads the second copy, is whole, and says what it read around.
#[test]
fn a_damaged_copy_of_the_index_fails_validation_and_the_restore_says_so() {
    if !require_devices("index_copy") {
        return;
    }
    let f = Fixture::new();
    let img = f.p("full.hfi");
    let good = f.p("good.hfi");
    image_ok(&["create", "--source", f.vol(), "--output", &img]);
    std::fs::copy(&img, &good).expect("copy");
    let mut bytes = std::fs::read(&img).expect("img");
    let trailer = bytes.len() - 168;
    let field = |at: usize| {
        u64::from_le_bytes(bytes[trailer + at..trailer + at + 8].try_into().expect("8")) as usize
    };
    let (index_at, index_len) = (field(24), field(32));
    assert_eq!(index_at + 2 * index_len, trailer, "two copies of the index");
    bytes[index_at + index_len / 2] ^= 0x08;
    std::fs::write(&img, bytes).expect("write");

    let r = image(&["validate", "--image", &img]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let records = r.json["report"]["records"].to_string();
    assert!(records.contains("the index's first copy"), "{}", r.json);
    assert!(r.stderr.contains("the index's first copy"), "{}", r.stderr);

    let (restored, reference) = (f.p("restored.img"), f.p("reference.img"));
    let r = image(&["restore", "--image", &img, "--target", &restored]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.json["warnings"]
            .to_string()
            .contains("second copy is intact and was used"),
        "{}",
        r.json
    );
    image_ok(&["restore", "--image", &good, "--target", &reference]);
    assert_eq!(hash(Path::new(&restored)), hash(Path::new(&reference)));
}

/// Both copies of the index lost, or the image cut off: `image restore` refuses it, and
/// `image salvage` writes what is intact into a new file and names what it could not recover.
#[test]
fn salvage_writes_what_is_intact_and_names_what_is_lost() {
    if !require_devices("salvage") {
        return;
    }
    let f = Fixture::new();
    let (img, good) = (f.p("full.hfi"), f.p("good.hfi"));
    image_ok(&["create", "--source", f.vol(), "--output", &img]);
    std::fs::copy(&img, &good).expect("copy");
    let intact = std::fs::read(&img).expect("img");
    let trailer = intact.len() - 168;
    let field = |at: usize| {
        u64::from_le_bytes(
            intact[trailer + at..trailer + at + 8]
                .try_into()
                .expect("8"),
        ) as usize
    };
    let (index_at, index_len) = (field(24), field(32));
    let mut bytes = intact.clone();
    bytes[index_at + 40] ^= 0x02;
    bytes[index_at + index_len + 40] ^= 0x02;
    std::fs::write(&img, &bytes).expect("write");
    let r = image(&["restore", "--image", &img, "--target", &f.p("refused.img")]);
    assert_eq!(r.code, 3, "{}", r.stderr);

    let (salvaged, reference) = (f.p("salvaged.img"), f.p("reference.img"));
    let r = image(&["salvage", "--image", &img, "--target", &salvaged]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json["ok"], true, "{}", r.json);
    image_ok(&["restore", "--image", &good, "--target", &reference]);
    assert_eq!(hash(Path::new(&salvaged)), hash(Path::new(&reference)));
    // It writes new files only.
    let r = image(&["salvage", "--image", &img, "--target", &salvaged]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("salvage writes a new file"),
        "{}",
        r.stderr
    );

    // Cut off in the middle of its frames: the rest is named as lost, the file still written.
    std::fs::write(&img, &intact[..index_at / 2]).expect("cut");
    let cut = f.p("cut.img");
    let r = image(&["salvage", "--image", &img, "--target", &cut]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let skipped = &r.json["report"]["skipped"];
    assert_eq!(skipped.as_array().map(Vec::len), Some(1), "{}", r.json);
    assert!(
        skipped[0]["detail"].to_string().contains("ends"),
        "{}",
        r.json
    );
    assert!(r.stderr.contains("could not be salvaged"), "{}", r.stderr);
    assert!(Path::new(&cut).exists());
    assert!(files_named(&f, "holdfast-partial").is_empty());
}

#[test]
fn flipped_byte_is_named_by_validate_and_refused_by_restore() {
    if !require_devices("flipped_byte") {
        return;
    }
    let f = Fixture::new();
    let img = f.p("full.hfi");
    image_ok(&[
        "create",
        "--source",
        f.vol(),
        "--output",
        &img,
        "--compression-level",
        "1",
    ]);
    // Only its owner reads an image: it holds the volume's contents.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&img).expect("image").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut bytes = std::fs::read(&img).expect("img");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&img, bytes).expect("write");
    let r = image(&["validate", "--image", &img]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let damage = &r.json["report"]["damage"];
    assert_eq!(damage.as_array().map(Vec::len), Some(1), "{}", r.json);
    assert!(
        damage[0]["first_block"].is_u64()
            && damage[0]["end"].as_u64() > damage[0]["start"].as_u64()
    );
    let (target, before) = patterned_target(&f);
    let r = image(&[
        "restore",
        "--image",
        &img,
        "--target",
        target.to_str().expect("p"),
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("damaged in blocks"), "{}", r.stderr);
    assert_eq!(hash(&target), before, "a refused restore must not write");
    // Over an existing file smaller than the volume: not extended either.
    let small = f.dir.join("small.img");
    std::fs::write(&small, vec![0x5Au8; 1 << 20]).expect("small target");
    let small_before = hash(&small);
    let r = image(&[
        "restore",
        "--image",
        &img,
        "--target",
        small.to_str().expect("p"),
    ]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        std::fs::metadata(&small).expect("small").len(),
        1 << 20,
        "extended"
    );
    assert_eq!(
        hash(&small),
        small_before,
        "a refused restore must not write"
    );
    // Into a new file (written under a temporary name, no checksum pass before): the damage
    // stops it midway and nothing is left, neither the file nor its temporary name.
    let fresh = f.p("fresh.img");
    let r = image(&["restore", "--image", &img, "--target", &fresh]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("damaged in blocks"), "{}", r.stderr);
    let left = files_named(&f, "fresh");
    assert!(left.is_empty(), "left behind: {left:?}");
    // Converting it to a virtual disk or raw file stops at the damage and leaves nothing.
    for format in ["qcow2", "vhd", "vhdx", "raw"] {
        let out = f.p(&format!("converted.{format}"));
        let r = image(&[
            "convert", "--image", &img, "--output", &out, "--format", format,
        ]);
        assert_eq!(r.code, 3, "{format}: {}", r.stderr);
        assert!(r.stderr.contains("damaged in blocks"), "{}", r.stderr);
        let left = files_named(&f, "converted");
        assert!(left.is_empty(), "{format}: left behind: {left:?}");
    }
    // An intact image restores into a new file under its name, with no temporary left.
    let good = f.p("good.hfi");
    image_ok(&["create", "--source", f.vol(), "--output", &good]);
    image_ok(&["restore", "--image", &good, "--target", &fresh]);
    assert_eq!(hash(Path::new(&fresh)), hash(Path::new(f.vol())));
    assert_eq!(
        mode_of(&fresh),
        0o600,
        "a restored file is private as its image"
    );
    assert!(!Path::new(&f.p(".fresh.img.holdfast-partial")).exists());
    // A virtual disk of it is as private.
    let qcow = f.p("good.qcow2");
    image_ok(&[
        "convert", "--image", &good, "--output", &qcow, "--format", "qcow2",
    ]);
    assert_eq!(
        mode_of(&qcow),
        0o600,
        "a virtual disk is private as its image"
    );
    // The smaller existing file takes the whole volume once the image is sound.
    image_ok(&[
        "restore",
        "--image",
        &good,
        "--target",
        small.to_str().expect("p"),
    ]);
    assert_eq!(hash(&small), hash(Path::new(f.vol())));
}

#[test]
fn truncated_image_and_missing_part_are_named() {
    if !require_devices("truncated_image") {
        return;
    }
    let f = Fixture::new();
    let img = f.p("full.hfi");
    image_ok(&[
        "create",
        "--source",
        f.vol(),
        "--output",
        &img,
        "--compression-level",
        "0",
        "--split",
        "5M",
    ]);
    assert!(Path::new(&format!("{img}.002")).exists());
    // Truncate the last part.
    let mut last = 2;
    while Path::new(&format!("{img}.{:03}", last + 1)).exists() {
        last += 1;
    }
    let last_path = format!("{img}.{last:03}");
    let data = std::fs::read(&last_path).expect("last part");
    std::fs::write(&last_path, &data[..data.len() - 100]).expect("truncate");
    let r = image(&["info", "--image", &img]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("incomplete or truncated"), "{}", r.stderr);
    std::fs::write(&last_path, &data).expect("restore part");
    image_ok(&["validate", "--image", &img]);
    // A missing middle part is named.
    std::fs::rename(format!("{img}.002"), f.p("moved")).expect("move");
    let r = image(&["validate", "--image", &img]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("missing split part 2") && r.stderr.contains("full.hfi.002"),
        "{}",
        r.stderr
    );
    // A single unsplit image cut short.
    let one = f.p("one.hfi");
    image_ok(&["create", "--source", f.vol(), "--output", &one]);
    let data = std::fs::read(&one).expect("img");
    std::fs::write(&one, &data[..data.len() / 3]).expect("cut");
    let r = image(&["restore", "--image", &one, "--target", &f.p("t.img")]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        !Path::new(&f.p("t.img")).exists(),
        "no target is created for a refused restore"
    );
}

#[test]
fn incremental_of_another_source_is_refused() {
    if !require_devices("incremental_of_another_source") {
        return;
    }
    let a = Fixture::new();
    let b = Fixture::new();
    let base = a.p("a.hfi");
    image_ok(&["create", "--source", a.vol(), "--output", &base]);
    let r = image(&[
        "create",
        "--source",
        b.vol(),
        "--output",
        &a.p("b-inc.hfi"),
        "--incremental",
        "--base",
        &base,
    ]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("belongs to another source"),
        "{}",
        r.stderr
    );
    assert!(!Path::new(&a.p("b-inc.hfi")).exists());
    assert!(std::fs::read_dir(&a.dir)
        .expect("dir")
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".partial")));
}

#[test]
fn restore_target_too_small_or_mounted_is_refused() {
    if !require_devices("restore_target_too_small_or_mounted") {
        return;
    }
    let f = Fixture::new();
    let img = f.p("full.hfi");
    image_ok(&["create", "--source", f.vol(), "--output", &img]);
    let small = f.dir.join("small.img");
    sparse_file(&small, 16 << 20);
    let lo = Loop::new(&small);
    let r = image(&["restore", "--image", &img, "--target", lo.path()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("too small"), "{}", r.stderr);
    drop(lo);
    let big = f.dir.join("big.img");
    sparse_file(&big, 64 << 20);
    let lo = Loop::new(&big);
    mkfs(lo.path(), "ext4");
    let _m = Mounted::new(lo.path(), &f.dir.join("bigmnt"), "ro");
    let r = image(&["restore", "--image", &img, "--target", lo.path()]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("is mounted"), "{}", r.stderr);
}

#[test]
fn existing_output_is_refused_unless_overwrite() {
    if !require_devices("existing_output") {
        return;
    }
    let f = Fixture::new();
    let img = f.p("full.hfi");
    image_ok(&[
        "create",
        "--source",
        f.vol(),
        "--output",
        &img,
        "--comment",
        "first",
    ]);
    let before = hash(Path::new(&img));
    let r = image(&["create", "--source", f.vol(), "--output", &img]);
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert_eq!(hash(Path::new(&img)), before);
    image_ok(&[
        "create",
        "--source",
        f.vol(),
        "--output",
        &img,
        "--overwrite",
        "--comment",
        "second",
        "--verify",
    ]);
    let info = image_ok(&["info", "--image", &img]);
    assert_eq!(info["metadata"]["comment"], "second");
}

#[test]
fn convert_changes_encryption_and_writes_raw() {
    if !require_devices("convert") {
        return;
    }
    let f = Fixture::new();
    std::fs::write(f.p("pw"), "one\n").expect("pw");
    std::fs::write(f.p("pw2"), "two\n").expect("pw");
    let img = f.p("full.hfi");
    image_ok(&["create", "--source", f.vol(), "--output", &img]);
    let enc = f.p("enc.hfi");
    let c = agent()
        .args([
            "image",
            "convert",
            "--image",
            &img,
            "--output",
            &enc,
            "--encrypt",
            "aes128",
            "--split",
            "5M",
            "--json",
        ])
        .env("HOLDFAST_NEW_PASSWORD", "one")
        .output()
        .expect("convert");
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let a = image_ok(&["info", "--image", &img]);
    let b = image_ok(&["info", "--image", &enc]);
    assert_eq!(a["content_digest"], b["content_digest"]);
    assert_eq!(a["image_id"], b["image_id"]);
    assert_eq!(b["encryption"], "aes128");
    let re = f.p("re.hfi");
    image_ok(&[
        "convert",
        "--image",
        &enc,
        "--output",
        &re,
        "--password-file",
        &f.p("pw"),
        "--new-password-file",
        &f.p("pw2"),
    ]);
    assert_eq!(
        image(&["validate", "--image", &re, "--password-file", &f.p("pw")]).code,
        4
    );
    image_ok(&["validate", "--image", &re, "--password-file", &f.p("pw2")]);
    let raw = f.p("raw.img");
    image_ok(&[
        "convert",
        "--image",
        &re,
        "--output",
        &raw,
        "--password-file",
        &f.p("pw2"),
        "--format",
        "raw",
    ]);
    let lo = Loop::new(Path::new(&raw));
    fsck_clean(lo.path(), "ext4");
}

#[test]
fn interrupted_create_leaves_nothing_behind() {
    if !require_devices("interrupted_create") {
        return;
    }
    let t = tempdir();
    let src = t.path().join("src.img");
    let mut data = noise(64 << 20, 4);
    // Compressible, so zstd at a high level is slow enough to interrupt.
    for (i, b) in data.iter_mut().enumerate() {
        if (i / 4096) % 2 == 0 {
            *b = (i % 7) as u8;
        }
    }
    std::fs::write(&src, data).expect("source");
    let out = t.path().join("x.hfi");
    let mut child = agent()
        .args([
            "image",
            "create",
            "--source",
            src.to_str().expect("p"),
            "--output",
            out.to_str().expect("p"),
        ])
        .args([
            "--compression-level",
            "19",
            "--split",
            "5M",
            "--forensic",
            "--threads",
            "1",
        ])
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let _ = std::process::Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(6), "an interrupted create exits 6");
    let left: Vec<_> = std::fs::read_dir(t.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("x.hfi"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn full_output_filesystem_fails_cleanly() {
    if !require_devices("full_output_filesystem") {
        return;
    }
    let t = tempdir();
    let src = t.path().join("src.img");
    std::fs::write(&src, noise(40 << 20, 8)).expect("source");
    // A 16 MiB filesystem cannot hold a 40 MiB incompressible image.
    let small = t.path().join("small.img");
    sparse_file(&small, 16 << 20);
    let lo = Loop::new(&small);
    mkfs(lo.path(), "ext4");
    let m = Mounted::new(lo.path(), &t.path().join("out"), "rw");
    std::fs::write(m.dir.join("keep.txt"), "existing data").expect("keep");
    let out = m.dir.join("x.hfi");
    let r = image(&[
        "create",
        "--source",
        src.to_str().expect("p"),
        "--output",
        out.to_str().expect("p"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("No space left on device") && r.stderr.contains("x.hfi"),
        "{}",
        r.stderr
    );
    assert_eq!(
        names_in(&m.dir),
        vec!["keep.txt".to_owned()],
        "only the existing file may remain"
    );
    assert_eq!(
        std::fs::read_to_string(m.dir.join("keep.txt")).expect("keep"),
        "existing data"
    );
    // A virtual disk of the 40 MiB source does not fit either: said, and nothing left.
    let img = t.path().join("src.hfi");
    image_ok(&[
        "create",
        "--source",
        src.to_str().expect("p"),
        "--output",
        img.to_str().expect("p"),
    ]);
    for format in ["vhdx", "qcow2", "vhd", "raw"] {
        let out = m.dir.join(format!("x.{format}"));
        let r = image(&[
            "convert",
            "--image",
            img.to_str().expect("p"),
            "--output",
            out.to_str().expect("p"),
            "--format",
            format,
        ]);
        assert_eq!(r.code, 1, "{format}: {}", r.stderr);
        assert!(
            r.stderr.contains("No space left on device"),
            "{format}: {}",
            r.stderr
        );
        assert_eq!(
            names_in(&m.dir),
            vec!["keep.txt".to_owned()],
            "{format}: left behind"
        );
    }
}
