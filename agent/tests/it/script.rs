//! `holdfast-agent script run|check`: the manual's example command files, adapted to Linux
//! devices and paths, run for real; malformed and Windows-only files refused by line.

use std::path::Path;

use holdfast_testkit::devices::*;

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn script(verb: &str, file: &Path, env: &[(&str, &str)]) -> Ran {
    let out = agent()
        .arg("script")
        .arg(verb)
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .expect("run agent");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("command file");
    p
}

#[test]
fn the_manuals_examples_run_on_linux_devices() {
    if !require_devices("the_manuals_examples_run_on_linux_devices") {
        return;
    }
    let t = tempdir();
    let work = t.path();
    let vol = work.join("vol.img");
    sparse_file(&vol, 96 << 20);
    let src = Loop::new(&vol);
    mkfs(src.path(), "ext4");
    {
        let m = Mounted::new(src.path(), &work.join("mnt"), "rw");
        write_files(&m.dir, 0, 8);
        // Enough that does not compress for the image to be split.
        std::fs::write(m.dir.join("noise.bin"), noise(20 << 20, 1)).expect("noise");
    }
    let images = work.join("images");
    std::fs::create_dir_all(&images).expect("images");
    let env = [
        ("SOURCE", src.path()),
        ("IMAGES", images.to_str().expect("p")),
        ("LOG", work.to_str().expect("p")),
    ];

    // Example 1: an image of a volume, compressed, split into 8 MB files, validated.
    let ex1 = write(
        work,
        "example1.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<DiskImageJob version="12.0">
<logfile>$ENV:(LOG)/script.log</logfile>
<command name="initialized storage devices">
<disk_devices>YES</disk_devices>
</command>
<command name="create image">
<image_type>used sector</image_type>
<compression_type>LZNT1 standard</compression_type>
<device_type>filesystem</device_type>
<image_name>$ENV:(IMAGES)/image_base.hfi</image_name>
<ignored_read_errors>YES</ignored_read_errors>
<devicename>$ENV:(SOURCE)</devicename>
<comments>Image of the data volume</comments>
<max_image_size>8</max_image_size>
<automatically_validate_image>YES</automatically_validate_image>
<ignored_file_pattern>*.tmp</ignored_file_pattern>
</command>
</DiskImageJob>
"#,
    );
    let r = script("check", &ex1, &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("image create"), "{}", r.stdout);
    assert!(
        !images.join("image_base.hfi").exists(),
        "check ran something"
    );
    let r = script("run", &ex1, &env);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(images.join("image_base.hfi").exists());
    assert!(
        images.join("image_base.hfi.002").exists(),
        "not split: {}",
        r.stdout
    );
    let log = std::fs::read_to_string(work.join("script.log")).expect("log");
    assert!(log.contains("verified:"), "{log}");
    assert!(
        log.contains("<ignored_file_pattern> has no effect"),
        "{log}"
    );

    // Example 2: an incremental named by the date, then (adapted) restored, validated,
    // converted to a virtual disk and mounted, each step when STEP says so.
    let new_files = edit_files(src.path(), "ext4", work, |d| {
        std::fs::write(d.join("new.txt"), b"after the base").expect("new file");
    });
    let target_file = work.join("restored.img");
    sparse_file(&target_file, 96 << 20);
    let target = Loop::new(&target_file);
    let mnt = work.join("shown");
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let ex2 = write(
        work,
        "example2.xml",
        r#"<DiskImageJob version="12.0">
<logfile>$ENV:(LOG)/script.log</logfile>
<command name="create incremental">
<device_type>filesystem</device_type>
<image_name>$ENV:(IMAGES)/image_base.hfi</image_name>
<compression_type>LZNT1 standard</compression_type>
<new_device_type>filesystem</new_device_type>
<new_image_name>$ENV:(IMAGES)/image_${TEMPL:(Year)}${TEMPL:(Month)}${TEMPL:(Day)}_inc.hfi</new_image_name>
<hash_unchanged_data>YES</hash_unchanged_data>
<automatically_overwrite_image>NO</automatically_overwrite_image>
<max_image_size>-1</max_image_size>
<force_dismount>YES</force_dismount>
<automatically_validate_image>YES</automatically_validate_image>
</command>
<command name="restore image">
<CONDITION>$ENV:(STEP)==2</CONDITION>
<device_type>filesystem</device_type>
<image_name>$ENV:(IMAGES)/image_$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)_inc.hfi</image_name>
<target_devicename>$ENV:(TARGET)</target_devicename>
</command>
<command name="restore image">
<CONDITION>$ENV:(STEP)!=2</CONDITION>
<device_type>filesystem</device_type>
<image_name>/nonexistent.hfi</image_name>
<target_devicename>$ENV:(TARGET)</target_devicename>
</command>
<command name="validate image">
<device_type>filesystem</device_type>
<image_name>$ENV:(IMAGES)/image_$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)_inc.hfi</image_name>
<all_splits>yes</all_splits>
</command>
<command name="convert image">
<device_type>filesystem</device_type>
<new_device_type>filesystem</new_device_type>
<image_name>$ENV:(IMAGES)/image_$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)_inc.hfi</image_name>
<new_image_name>$ENV:(IMAGES)/vm.qcow2</new_image_name>
<target_image_type>qcow2 image</target_image_type>
</command>
<command name="mount image">
<device_type>filesystem</device_type>
<image_name>$ENV:(IMAGES)/image_$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)_inc.hfi</image_name>
<mountpoint>$ENV:(SHOWN)</mountpoint>
</command>
</DiskImageJob>
"#,
    );
    let env2 = [
        env[0],
        env[1],
        env[2],
        ("STEP", "2"),
        ("TARGET", target.path()),
        ("SHOWN", mnt.to_str().expect("p")),
    ];
    let r = script("run", &ex2, &env2);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("skipped, its condition does not hold"),
        "{}",
        r.stdout
    );
    assert!(images.join("vm.qcow2").exists());
    // Shown read-only at the folder until the next file dismounts it.
    assert_eq!(checksums(&mnt), new_files);
    let ex3 = write(
        work,
        "dismount.xml",
        "<DiskImage><command name=\"dismount image\"><mountpoint>$ENV:(SHOWN)</mountpoint></command></DiskImage>",
    );
    let r = script("run", &ex3, &env2);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(checksums(&mnt).is_empty(), "still mounted");
    drop(target);
    let target = Loop::new(&target_file);
    fsck_clean(target.path(), "ext4");
    assert_eq!(read_files(target.path(), "ext4", work), new_files);

    // Clone device: refused without <overwrite_target_data>, done with it.
    let clone_file = work.join("clone.img");
    sparse_file(&clone_file, 96 << 20);
    let clone_lo = Loop::new(&clone_file);
    let clone = |confirm: &str| {
        format!(
            "<DiskImage><command name=\"clone device\"><clone_type>used sector image</clone_type>\
             <ignored_read_errors>yes</ignored_read_errors><devicename>{}</devicename>\
             <target_devicename>{}</target_devicename>{confirm}</command></DiskImage>",
            src.path(),
            clone_lo.path()
        )
    };
    let r = script("run", &write(work, "clone1.xml", &clone("")), &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("overwrite_target_data"), "{}", r.stdout);
    let r = script(
        "run",
        &write(
            work,
            "clone2.xml",
            &clone("<overwrite_target_data>yes</overwrite_target_data>"),
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(read_files(clone_lo.path(), "ext4", work), new_files);
}

#[test]
fn windows_only_and_malformed_files_are_refused_with_their_line() {
    let t = tempdir();
    let work = t.path();
    let out = work.join("never.hfi");
    let after = format!(
        "<command name=\"create image\"><image_type>used sector</image_type>\
         <image_name>{}</image_name><devicename>/dev/null</devicename></command>",
        out.display()
    );
    // The manual's example 3 (disk management): refused at its line, nothing after it runs.
    let ex3 = write(
        work,
        "example3.xml",
        &format!(
            "<DiskImageJob version=\"12.0\">\n<command name=\"initialized storage devices\">\n\
             <disk_devices>YES</disk_devices>\n</command>\n<command name=\"clear drive\">\n\
             <drivenumber>0</drivenumber>\n<is_superfloppy>NO</is_superfloppy>\n</command>\n{after}\n</DiskImageJob>\n"
        ),
    );
    let r = script("run", &ex3, &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("line 5: 'clear drive' is a disk-management"),
        "{}",
        r.stdout
    );
    assert!(!out.exists());

    let cases: &[(&str, String, &str)] = &[
        (
            "truncated",
            "<DiskImage>\n<command name=\"create image\">\n<image_name>x</image_name>\n".into(),
            "line 4: the file ends before <command name=\"create image\"> (line 2) is closed",
        ),
        (
            "unknown command",
            "<DiskImage>\n\n<command name=\"defragment\"/>\n</DiskImage>".into(),
            "line 3: unknown command 'defragment'",
        ),
        (
            "entity expansion",
            "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>\n<DiskImage>&lol2;</DiskImage>".into(),
            "line 2: a document type declaration is not allowed",
        ),
        (
            "drive letter",
            "<DiskImage>\n<command name=\"create image\">\n<image_type>used sector</image_type>\n\
             <image_name>/b/x.hfi</image_name>\n<driveletter>C</driveletter>\n</command></DiskImage>"
                .into(),
            "line 5: <driveletter> is a Windows drive selector: name the device with <devicename>",
        ),
        (
            "file backup",
            "<BackupJob>\n<command name=\"create backup\"/></BackupJob>".into(),
            "line 2: 'create backup' is a file-based backup command",
        ),
        (
            "bad condition",
            "<Job>\n<command name=\"validate image\">\n<CONDITION>$ENV:(X)</CONDITION></command></Job>"
                .into(),
            "line 2: condition",
        ),
    ];
    for (what, text, expect) in cases {
        let f = write(work, "bad.xml", text);
        let r = script("check", &f, &[]);
        assert_ne!(r.code, 0, "{what}: accepted");
        let said = r.stdout.clone() + &r.stderr;
        assert!(said.contains(expect), "{what}: {said}");
    }
    // 100 MB is refused before it is read.
    let big = work.join("big.xml");
    let f = std::fs::File::create(&big).expect("big");
    f.set_len(100 << 20).expect("size");
    let r = script("check", &big, &[]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("larger than 1024 KiB"), "{}", r.stderr);

    // stop_at_error no: the run goes on past a failing command, and still fails.
    let go_on = write(
        work,
        "go-on.xml",
        &format!(
            "<DiskImage><stop_at_error>no</stop_at_error>\
             <command name=\"validate image\"><image_name>/nonexistent.hfi</image_name></command>\
             <command name=\"create image\"><image_type>used sector</image_type>\
             <image_name>{}</image_name><devicename>{}</devicename></command></DiskImage>",
            out.display(),
            write(work, "small.vol", &"x".repeat(1 << 20)).display()
        ),
    );
    let r = script("run", &go_on, &[]);
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        out.exists(),
        "the command after the failing one did not run: {}",
        r.stdout
    );
}
