//! Live images of a running machine, end to end: the server and a real SFTP server on this
//! machine's loopback; the agent in the VM of `scripts/vm/` (device-mapper, LVM, dm-crypt),
//! reaching them at 10.0.2.2 through qemu's user networking. In the VM, ext4 and XFS, each on
//! a thick LV, a thin LV and a LUKS mapping on an LV, are mounted read-write under a writer
//! that fsyncs numbered files with their checksum; jobs with default settings image each as
//! a full and an incremental. Each image restores (here) to a filesystem that checks clean,
//! holding every file the writer had completed, whole. A job of three volumes holds the two
//! thick ones at one instant (the writer's files on both agree to within the one being
//! written) and the thin one on its own. The agent is killed mid-run: its snapshot is gone
//! once it starts again, and no image appears under the run's name.
//!
//! The host never connects to 10.0.2.x itself: that subnet gets an `unreachable` route.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fleet::{agent_bin, jar_cookie, Api};
use crate::proc::{curl, first_start_secrets, free_port, start_with};
use holdfast_testkit::devices::{require_devices, require_tool, sh, sparse_file, tempdir, Mounted};
use holdfast_testkit::servers::{Sshd, PASSWORD, USER};
use holdfast_testkit::vm;

/// The volumes: name in the VM, the device jobs image, and the filesystem.
const VOLUMES: [(&str, &str, &str); 6] = [
    ("thick", "/dev/hfvg/thick", "ext4"),
    ("thin", "/dev/hfvg/thin", "ext4"),
    ("vault", "/dev/mapper/hfvault", "ext4"),
    ("xthick", "/dev/hfvg/xthick", "xfs"),
    ("xthin", "/dev/hfvg/xthin", "xfs"),
    ("xvault", "/dev/mapper/hfxvault", "xfs"),
];

/// The VM's side: volumes, the writer, the agent (enrolled and running), then what the host
/// asks for through files in `$OUT`: `kill-when-snapshot` (kill every agent process once a
/// snapshot of ours exists, start the agent again, and list what is left), and `finish`.
const GUEST: &str = r#"
set -eux
. "$OUT/guest-lvm.sh"
modprobe virtio_net
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
truncate -s 1800M /tmp/pv.img
PV=$(losetup -f --show /tmp/pv.img)
pvcreate -q "$PV"
vgcreate -q hfvg "$PV"
lvcreate -q -y -L 64M -n thick hfvg
lvcreate -q -y -L 160M -T hfvg/pool
lvcreate -q -y -V 64M -T hfvg/pool -n thin
lvcreate -q -y -V 320M -T hfvg/pool -n xthin
lvcreate -q -y -L 64M -n vault hfvg
lvcreate -q -y -L 320M -n xthick hfvg
lvcreate -q -y -L 340M -n xvault hfvg
lvcreate -q -y -L 160M -n slow hfvg
for lv in vault xvault; do
    printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - /dev/hfvg/$lv
    printf pw | cryptsetup open --disable-keyring --key-file - /dev/hfvg/$lv hf$lv
done
for d in /dev/hfvg/thick /dev/hfvg/thin /dev/mapper/hfvault /dev/hfvg/slow; do mkfs.ext4 -q "$d"; done
for d in /dev/hfvg/xthick /dev/hfvg/xthin /dev/mapper/hfxvault; do mkfs.xfs -q "$d"; done
VOLUMES="thick thin vault xthick xthin xvault"
for m in $VOLUMES slow; do
    mkdir -p /tmp/m/$m
    src=/dev/hfvg/$m
    case $m in *vault) src=/dev/mapper/hf$m ;; esac
    mount $src /tmp/m/$m
    head -c 2000000 /dev/urandom > /tmp/m/$m/base.bin
done
# Enough for the run that is killed to be caught while it reads its snapshot.
head -c 120000000 /dev/urandom > /tmp/m/slow/big.bin
sync

# The writer: numbered files, each ending with the checksum of what comes before it,
# fsynced under a temporary name and then renamed: a file with its final name is whole.
(
    set +x
    n=0
    while [ ! -e /tmp/stop ]; do
        for m in $VOLUMES; do
            d=/tmp/m/$m/load
            mkdir -p $d
            head -c 6000 /dev/urandom > $d/.tmp
            sha256sum < $d/.tmp | cut -c1-64 | tr -d '\n' >> $d/.tmp
            sync $d/.tmp
            mv $d/.tmp $d/w$n
        done
        n=$((n + 1))
    done
    echo $n > "$OUT/written"
) &
WRITER=$!

# Copy-on-write space for device-mapper snapshots (volumes held together), off the volumes.
truncate -s 300M /tmp/store.img
mkfs.ext4 -q /tmp/store.img
mkdir -p /tmp/storefs
mount -o loop /tmp/store.img /tmp/storefs
mkdir /tmp/storefs/snaps
export HOLDFAST_SNAPSHOT_STORE=/tmp/storefs/snaps

"$AGENT" enroll --server "$SERVER" --token "$TOKEN" --fingerprint "$FINGERPRINT" --config /tmp/agent.json
start_agent() {
    "$AGENT" run --config /tmp/agent.json >> "$OUT/agent.log" 2>&1 &
}
start_agent
touch "$OUT/ready"

deadline=$(( $(date +%s) + 1500 ))
while [ ! -e "$OUT/finish" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "the host never said finish"; exit 1; }
    if [ -e "$OUT/list-devices" ]; then
        rm "$OUT/list-devices"
        { dmsetup ls; dmsetup table hfvg-thick hfvg-xthick; ls /tmp/storefs/snaps; } > "$OUT/devices.tmp"
        mv "$OUT/devices.tmp" "$OUT/devices.txt"
    fi
    if [ -e "$OUT/kill-when-snapshot" ]; then
        rm "$OUT/kill-when-snapshot"
        until lvs --noheadings -o lv_name hfvg | grep -q holdfast-snap; do sleep 0.1; done
        # As a crash of the service would: every agent process at once.
        pkill -9 -f "$AGENT"
        sleep 1
        { lvs --noheadings -o lv_name hfvg; dmsetup ls; } > "$OUT/left-killed.txt"
        start_agent
        sleep 15
        { lvs --noheadings -o lv_name hfvg; dmsetup ls; } > "$OUT/left-restarted.txt"
        touch "$OUT/restarted"
    fi
    sleep 0.5
done
touch /tmp/stop
wait $WRITER
for m in $VOLUMES; do sha256sum /tmp/m/$m/base.bin | cut -c1-64 > "$OUT/$m.sum"; done
pkill -f "$AGENT" || true
"#;

/// Wait up to `secs` for `check`, failing early (with the VM's output) when the VM ended.
fn wait_vm(
    what: &str,
    secs: u64,
    vm: &std::thread::JoinHandle<Result<(), String>>,
    out: &Path,
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        if vm.is_finished() {
            let log = std::fs::read_to_string(out.join("script.log")).unwrap_or_default();
            panic!("the VM ended while waiting for {what}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = std::fs::read_to_string(out.join("script.log")).unwrap_or_default();
    let agent = std::fs::read_to_string(out.join("agent.log")).unwrap_or_default();
    panic!("timed out waiting for {what}; the VM's script:\n{log}\nits agent:\n{agent}");
}

/// The writer's files in `dir`: all of `w0`…`wN` with none missing, each whole; N + 1.
fn writer_files_whole(dir: &Path) -> usize {
    let mut numbers: Vec<usize> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix('w')?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    numbers.sort_unstable();
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(i, *n, "w{i} is missing in {}", dir.display());
        let data = std::fs::read(dir.join(format!("w{n}"))).expect("read");
        let (body, sum) = data.split_at(data.len().saturating_sub(64));
        let want = sha256_hex(body);
        assert_eq!(
            std::str::from_utf8(sum).unwrap_or(""),
            want,
            "w{n} in {} is not whole",
            dir.display()
        );
    }
    numbers.len()
}

/// SHA-256 in hex, by `sha256sum` (the writer's own tool).
fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// Restore `image` into a new file, bring its filesystem to what a first mount does (replay
/// its journal or log), check it clean, and return how many writer files it holds and the
/// checksum of `base.bin`.
fn restore_and_read(image: &Path, fs: &str, work: &Path, name: &str) -> (usize, String) {
    let info =
        holdfast_testkit::devices::image_ok(&["info", "--image", image.to_str().expect("path")]);
    let size = info["source_size"].as_u64().expect("size");
    let copy = work.join(format!("{name}.img"));
    sparse_file(&copy, size);
    let copy_s = copy.to_str().expect("path");
    holdfast_testkit::devices::image_ok(&[
        "restore",
        "--image",
        image.to_str().expect("path"),
        "--target",
        copy_s,
    ]);
    let mnt = work.join(format!("{name}-mnt"));
    let read = |m: &Mounted| {
        let count = writer_files_whole(&m.dir.join("load"));
        let sum = sha256_hex(&std::fs::read(m.dir.join("base.bin")).expect("base.bin"));
        (count, sum)
    };
    if fs == "xfs" {
        let got = read(&Mounted::new(copy_s, &mnt, "loop,nouuid"));
        sh(Command::new("xfs_repair").args(["-n", copy_s]));
        got
    } else {
        holdfast_testkit::devices::replay_and_fsck_ext4(copy_s);
        read(&Mounted::new(copy_s, &mnt, "ro,loop"))
    }
}

#[test]
fn running_volumes_are_imaged_consistently_through_the_server_and_an_agent_in_a_vm() {
    let test = "live images in a VM";
    let Some(agent) = agent_bin() else {
        return;
    };
    if !require_devices(test) || !require_tool("mkfs.xfs", test) {
        return;
    }
    let Some(runner) = vm::runner(test) else {
        return;
    };
    let Some(sshd) = Sshd::start(test) else {
        return;
    };
    // The VM's subnet is never reached from here, whatever the host's routes say.
    let _ = Command::new("ip")
        .args(["route", "add", "unreachable", "10.0.2.0/24"])
        .output();

    let t = tempdir();
    let d = t.path();
    let port = free_port();
    let (server, printed) = start_with(
        d,
        port,
        true,
        &["--name", "localhost,10.0.2.2", "--heartbeat-seconds", "1"],
    );
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(server);
    let first = first_start_secrets(d, &printed);
    let fingerprint = first.fingerprint.clone();
    let api = Api {
        base: format!("https://localhost:{port}"),
        ca: d.join("tls/ca.pem").display().to_string(),
        cookies: d.join("cookies").display().to_string(),
    };
    let up = Instant::now();
    while curl(&["--cacert", &api.ca, &format!("{}/healthz", api.base)])
        .is_none_or(|(o, _)| o != "ok\n")
    {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    api.first_login(&first);
    assert!(jar_cookie(Path::new(&api.cookies), "holdfast_csrf").is_some());
    let token = api.call("POST", "/api/v1/enrollment-tokens", Some("{}"));

    // The VM, in the background until the test says finish.
    let out = d.join("vm");
    std::fs::create_dir(&out).expect("vm folder");
    let script = format!(
        "#!/bin/sh\nexport AGENT='{}' OUT='{}' SERVER='https://10.0.2.2:{port}' TOKEN='{}' FINGERPRINT='{fingerprint}'\n{GUEST}",
        agent.display(),
        out.display(),
        token["secret"].as_str().expect("token"),
    );
    let bin_dir: PathBuf = agent.parent().expect("folder").to_owned();
    let vm = {
        let (runner, out, bin_dir) = (runner.clone(), out.clone(), bin_dir.clone());
        std::thread::spawn(move || vm::run(&runner, &script, &out, &[&bin_dir], true))
    };
    // However the test ends, the VM is told to finish (and given time to).
    struct Finish(PathBuf);
    impl Drop for Finish {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("finish"), "");
            let until = Instant::now() + Duration::from_secs(60);
            while !self.0.join("status").exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let _finish = Finish(out.clone());
    wait_vm("the VM's volumes and agent", 600, &vm, &out, || {
        out.join("ready").exists()
    });
    let agent_id = || api.call("GET", "/api/v1/agents", None)["items"][0].clone();
    wait_vm("the agent online", 120, &vm, &out, || {
        agent_id()["status"] == "online"
    });
    let agent_id = agent_id()["id"].as_i64().expect("agent id");

    let target = api.call(
        "POST",
        "/api/v1/targets",
        Some(
            &json!({
                "name": "sftp on the host",
                "url": format!("sftp://10.0.2.2:{}{}", sshd.port, sshd.data.display()),
                "username": USER,
                "password": PASSWORD,
                "host_key": sshd.host_key_fingerprint(),
            })
            .to_string(),
        ),
    );
    let target_id = target["id"].as_i64().unwrap_or_else(|| panic!("{target}"));
    let job = |name: &str, source: &str| {
        let j = api.call(
            "POST",
            "/api/v1/jobs",
            Some(
                &json!({"name": name, "spec": {
                    "agents": [agent_id], "source": source, "target_id": target_id,
                    "method": "incremental_chain",
                }})
                .to_string(),
            ),
        );
        j["id"].as_i64().unwrap_or_else(|| panic!("{j}"))
    };
    let run = |job: i64| {
        let r = api.call("POST", &format!("/api/v1/jobs/{job}/run"), None);
        r["runs"][0]["id"].as_i64().unwrap_or_else(|| panic!("{r}"))
    };
    let report = |id: i64| api.call("GET", &format!("/api/v1/reports/{id}"), None);
    let finish = |id: i64| {
        let mut r = Value::Null;
        wait_vm("a run to end", 600, &vm, &out, || {
            r = report(id);
            !matches!(r["status"].as_str(), Some("running" | "queued"))
        });
        r
    };

    // A full, then an incremental, of each volume, with default settings.
    let mut images: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, source, fs) in VOLUMES {
        let id = job(name, source);
        for method in ["full", "incremental"] {
            let r = finish(run(id));
            assert_eq!(r["status"], "successful", "{name}: {r}");
            let img = &r["images"][0];
            assert_eq!(img["method"], method, "{name}: {r}");
            assert_eq!(img["filesystem"], fs, "{name}: {r}");
            assert_eq!(img["coverage"], "used-sector", "{name}: {r}");
            assert!(
                img["consistency"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("lvm-snapshot: read from")),
                "{name}: {r}"
            );
            images
                .entry(name)
                .or_default()
                .push(img["name"].as_str().expect("image name").to_owned());
        }
    }

    // A job of several volumes: the two thick ones held at one instant (device-mapper
    // snapshots, both suspended before either resumed), the thin one on its own.
    let machine = api.call(
        "POST",
        "/api/v1/jobs",
        Some(
            &json!({"name": "machine", "spec": {
                "agents": [agent_id], "target_id": target_id, "method": "incremental_chain",
                "sources": ["/dev/hfvg/thick", "/dev/hfvg/xthick", "/dev/hfvg/thin"],
            }})
            .to_string(),
        ),
    );
    let machine = machine["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{machine}"));
    let r = finish(run(machine));
    assert_eq!(r["status"], "successful", "{r}");
    let together = r["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["title"] == "Held together"))
        .unwrap_or_else(|| panic!("no 'Held together' step: {r}"));
    let detail = together["detail"].as_str().unwrap_or_default();
    eprintln!("held together: {detail}");
    assert!(
        detail.starts_with(
            "/dev/hfvg/thick, /dev/hfvg/xthick held at one instant by device-mapper snapshots (writes to them waited "
        ) && detail.contains("/dev/hfvg/thin held on its own"),
        "{detail}"
    );
    let machine_image = |source: &str| {
        r["images"]
            .as_array()
            .and_then(|i| i.iter().find(|i| i["source"] == source))
            .unwrap_or_else(|| panic!("no image of {source}: {r}"))
            .clone()
    };
    for (source, with) in [
        ("/dev/hfvg/thick", "/dev/hfvg/xthick"),
        ("/dev/hfvg/xthick", "/dev/hfvg/thick"),
    ] {
        let c = machine_image(source)["consistency"].to_string();
        assert!(
            c.contains("dm-snapshot: read from a snapshot")
                && c.contains(&format!("taken at one instant together with {with}")),
            "{source}: {c}"
        );
    }
    let thin_image = machine_image("/dev/hfvg/thin");
    let thin_name = thin_image["name"].as_str().expect("name").to_owned();
    let thin = thin_image["consistency"].to_string();
    assert!(
        thin.contains("lvm-snapshot: read from a thin snapshot"),
        "{thin}"
    );
    // Both snapshots removed, both volumes back on their own tables.
    std::fs::write(out.join("list-devices"), "").expect("ask");
    wait_vm("the VM's device list", 60, &vm, &out, || {
        out.join("devices.txt").exists()
    });
    let devices = std::fs::read_to_string(out.join("devices.txt")).expect("devices");
    assert!(!devices.contains("holdfast-snap"), "{devices}");
    assert!(!devices.contains("snapshot-origin"), "{devices}");
    assert!(!devices.contains(".cow"), "{devices}");
    let machine_images: Vec<(String, &str)> = ["/dev/hfvg/thick", "/dev/hfvg/xthick"]
        .iter()
        .map(|s| {
            let name = machine_image(s)["name"].as_str().expect("name").to_owned();
            (name, *s)
        })
        .collect();

    // Killed mid-run: the snapshot is gone once the agent is back, and the run left no
    // image under its name.
    let slow = job("killed", "/dev/hfvg/slow");
    std::fs::write(out.join("kill-when-snapshot"), "").expect("ask");
    let killed = run(slow);
    wait_vm("the agent killed and started again", 300, &vm, &out, || {
        out.join("restarted").exists()
    });
    let left = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    assert!(
        left("left-killed.txt").contains("holdfast-snap"),
        "{}",
        left("left-killed.txt")
    );
    assert!(
        !left("left-restarted.txt").contains("holdfast-snap"),
        "the agent removes what the killed run left: {}",
        left("left-restarted.txt")
    );
    let r = finish(killed);
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r.to_string().contains("Agent stopped"), "{r}");
    // What the killed run had uploaded is under a temporary name only: nothing that looks
    // like an image.
    let all_named: Vec<&String> = images
        .values()
        .flatten()
        .chain(machine_images.iter().map(|(n, _)| n))
        .chain(std::iter::once(&thin_name))
        .collect();
    let strays: Vec<String> = std::fs::read_dir(&sshd.data)
        .expect("target")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| !all_named.contains(&f))
        .collect();
    assert!(
        strays
            .iter()
            .all(|f| f.starts_with('.') && f.ends_with(".hfpartial")),
        "{strays:?}"
    );

    std::fs::write(out.join("finish"), "").expect("finish");
    let ended = vm.join().expect("the VM thread");
    if let Err(e) = ended {
        panic!("{e}");
    }

    // Each image restores to a clean filesystem with every file the writer had completed.
    for (name, _, fs) in VOLUMES {
        let want = std::fs::read_to_string(out.join(format!("{name}.sum"))).expect("sum");
        let mut before = 0;
        for (i, image) in images[name].iter().enumerate() {
            let (count, sum) =
                restore_and_read(&sshd.data.join(image), fs, d, &format!("{name}-{i}"));
            assert_eq!(sum, want.trim(), "{name}: base.bin");
            assert!(count >= before, "{name}: {count} files after {before}");
            before = count;
        }
        assert!(before > 0, "{name}: the writer's files are in the images");
    }

    // Held at one instant: the writer completes a file on thick before the same file on
    // xthick, so at one instant xthick has as many files as thick, or one fewer. (Held
    // one after the other, xthick would have every file written while thick was imaged.)
    let counts: Vec<usize> = machine_images
        .iter()
        .map(|(image, source)| {
            let fs = if source.ends_with("xthick") {
                "xfs"
            } else {
                "ext4"
            };
            restore_and_read(&sshd.data.join(image), fs, d, &format!("machine-{fs}")).0
        })
        .collect();
    assert!(
        counts[1] <= counts[0] && counts[0] <= counts[1] + 1,
        "thick has {} writer files and xthick {}: not one instant",
        counts[0],
        counts[1]
    );
}
