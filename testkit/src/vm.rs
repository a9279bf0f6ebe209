//! The test VM (`scripts/vm/`): Debian's kernel, with the device-mapper, LVM and dm-crypt
//! this machine's kernel lacks, booted with the host's files seen read-only.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's `scripts/vm/run.sh`, when the VM is set up; otherwise `None` with a
/// message (a skip), or a panic under `CI`.
pub fn runner(test: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = root.join("scripts/vm/run.sh");
    let vm = std::env::var("HOLDFAST_VM").unwrap_or_else(|_| "/var/tmp/holdfast-vm".into());
    let ready = Path::new(&vm).join("vng/bin/vng").exists()
        && std::fs::read_dir(Path::new(&vm).join("kernel/root/boot"))
            .is_ok_and(|mut d| d.next().is_some());
    if ready {
        return Some(run);
    }
    let why = format!("{test}: the test VM is not set up (run scripts/vm/setup.sh)");
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}; CI is set, so this is a failure"
    );
    eprintln!("skipping {why}");
    None
}

/// `scripts/vm/guest-lvm.sh`: loads the device-mapper modules and sets LVM up without udev.
const GUEST_LVM: &str = include_str!("../../scripts/vm/guest-lvm.sh");

/// Run `script` (a `/bin/sh` script) as root in a VM booted by `runner`, with `out` shared
/// read-write and each of `rodirs` read-only; with `network`, the VM reaches this machine's
/// loopback at 10.0.2.2 (its own address is set up by the script). `$OUT/guest-lvm.sh` is
/// there for the script to source. An error holds the script's output and the end of the
/// console.
pub fn run(
    runner: &Path,
    script: &str,
    out: &Path,
    rodirs: &[&Path],
    network: bool,
) -> Result<(), String> {
    let guest = out.join("guest.sh");
    std::fs::write(&guest, script).map_err(|e| format!("cannot write the script: {e}"))?;
    // What guest scripts source to use device-mapper and LVM (the VM sees no /tmp of ours).
    std::fs::write(out.join("guest-lvm.sh"), GUEST_LVM)
        .map_err(|e| format!("cannot write the LVM setup: {e}"))?;
    let mut cmd = Command::new(runner);
    cmd.arg(&guest).arg(out).args(rodirs);
    if network {
        cmd.env("HOLDFAST_VM_NETWORK", "user");
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run the VM: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let log = std::fs::read_to_string(out.join("script.log")).unwrap_or_default();
    let console = std::fs::read_to_string(out.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = console.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    Err(format!(
        "the VM script failed:\n{log}\nconsole (last lines):\n{tail}"
    ))
}

/// Run `guest` (a shell script) in the VM with `AGENT` (the agent under test, whose folder
/// is shared read-only) and `OUT` (a fresh folder for its results) exported. The folder once
/// it succeeded; `None` when the VM is not set up (a skip); a panic with the script's log
/// when it failed.
pub fn run_agent_script(test: &str, guest: &str) -> Option<tempfile::TempDir> {
    let runner = runner(test)?;
    let out = crate::devices::tempdir();
    let agent = crate::devices::agent_binary();
    let script = format!(
        "#!/bin/sh\nexport AGENT='{}' OUT='{}'\n{}",
        agent.display(),
        out.path().display(),
        guest.trim_start_matches("#!/bin/sh\n")
    );
    let bin_dir = agent.parent().expect("agent folder");
    if let Err(e) = run(&runner, &script, out.path(), &[bin_dir], false) {
        panic!("{e}");
    }
    Some(out)
}

/// The JSON document a guest script wrote to `name` in `dir`.
pub fn read_json(dir: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
}
