//! What each command of a command file does here: the agent command lines it becomes
//! (`image create`, `clone`, …), or why it is refused. Values are expanded first; a
//! parameter whose condition does not hold is left out. Passwords travel in the child's
//! environment, never on its command line or in the log.

use std::collections::BTreeMap;

use super::expand::Context;
use super::parse::Command;
use crate::secret::{NEW_PASSWORD_ENV, PASSWORD_ENV};

/// One agent run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The agent's arguments.
    pub argv: Vec<String>,
    /// Environment for it (passwords).
    pub env: Vec<(&'static str, String)>,
    /// Left running once it has said it is ready (`image mount`).
    pub background: bool,
}

/// What a command becomes: its runs, and what the log should say about parameters that
/// mean nothing here or are approximated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

/// Commands of O&O DiskImage for Windows that Holdfast recognises and does not run.
const WINDOWS_COMMANDS: [&str; 22] = [
    "assign drive letter",
    "checkdisk",
    "clear disk",
    "clear drive",
    "initialize disk",
    "create mirrored volume",
    "create raid5 volume",
    "create simple volume",
    "create spanned volume",
    "create striped volume",
    "create partition",
    "delete partition",
    "delete volume",
    "disconnect network drive",
    "fill disk sectors",
    "format",
    "grow partition",
    "activate setup",
    "assume devices",
    "change computer name",
    "change computer sid",
    "replace hal",
];

/// File-based backup commands (Holdfast images volumes; file backup is not built yet).
const BACKUP_COMMANDS: [&str; 4] = [
    "create backup",
    "create incremental backup",
    "restore backup",
    "validate backup",
];

/// Parameters that select things the Windows way, and what to write instead.
fn windows_parameter(name: &str) -> Option<&'static str> {
    Some(match name {
        "driveletter" | "drivenumber" | "drivenummer" | "serialnumber" | "begin"
        | "system_volume" | "data_volumes" => {
            "a Windows drive selector: name the device with <devicename> (e.g. /dev/sdb1)"
        }
        "target_driveletter" | "target_drivenumber" | "target_drive_number"
        | "target_serialnumber" | "target_begin" => {
            "a Windows drive selector: name the target with <target_devicename> (e.g. /dev/sdc)"
        }
        "image_driveletter" | "image_drivenumber" | "image_serialnumber" | "image_begin" => {
            "a Windows drive selector: name a partition of a disk image with <image_object_id> (its number, as Linux numbers it)"
        }
        "driveletter_to_set" => "a Windows drive letter: mount at a folder with <mountpoint>",
        "vss" => "the Windows shadow copy service: <snapshot>yes takes an LVM or device-mapper snapshot, or freezes",
        "chs_alignment" | "set_bootable_partition_bootable" | "write_data_directly"
        | "automatically_checkdisk" | "automatically_convert_multi_disk_volumes"
        | "append_on_target_drive" | "automatically_create_target_drive_like_source_drive" => {
            "a Windows partitioning option with no meaning here: the whole source is written over the whole target"
        }
        _ => return None,
    })
}

/// The expanded parameters of one command, taken one by one; what is left at the end is
/// checked.
struct Params {
    values: BTreeMap<String, Vec<(String, usize)>>,
    command: String,
}

impl Params {
    fn new(cmd: &Command, ctx: &Context) -> Result<Self, String> {
        let mut values: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
        for p in &cmd.params {
            if let Some(c) = &p.condition {
                if !ctx.holds(c).map_err(|e| format!("line {}: {e}", p.line))? {
                    continue;
                }
            }
            let v = ctx
                .expand(&p.value)
                .map_err(|e| format!("line {}: <{}>: {e}", p.line, p.name))?;
            values
                .entry(p.name.clone())
                .or_default()
                .push((unquote(&v), p.line));
        }
        // Said first: a Windows selector usually stands where a device path is missing.
        if let Some((name, why, line)) = values
            .iter()
            .find_map(|(n, v)| windows_parameter(n).map(|why| (n, why, v[0].1)))
        {
            return Err(format!("line {line}: <{name}> is {why}"));
        }
        Ok(Self {
            values,
            command: cmd.name.clone(),
        })
    }

    /// The value of `name`, once at most.
    fn take(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(mut v) if v.len() == 1 => Ok(v.pop().map(|(s, _)| s)),
            Some(v) => Err(format!(
                "line {}: <{name}> is given {} times; '{}' takes one",
                v[1].1,
                v.len(),
                self.command
            )),
        }
    }

    fn require(&mut self, name: &str) -> Result<String, String> {
        self.take(name)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("'{}' needs <{name}>", self.command))
    }

    /// A yes/no/true/false parameter (absent: false).
    fn flag(&mut self, name: &str) -> Result<bool, String> {
        match self.take(name)? {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "yes" | "true" => Ok(true),
                "no" | "false" => Ok(false),
                _ => Err(format!("<{name}> is '{v}': yes, no, true or false")),
            },
        }
    }

    /// Parameters accepted and without effect here, each with why.
    fn without_effect(&mut self, names: &[(&str, &str)], notes: &mut Vec<String>) {
        for (name, why) in names {
            if let Some(v) = self.values.remove(*name) {
                notes.push(format!("line {}: <{name}> has no effect: {why}", v[0].1));
            }
        }
    }

    /// Everything not taken is unknown (Windows-only ones were refused in [`Params::new`]).
    fn finish(self) -> Result<(), String> {
        match self.values.into_iter().next() {
            None => Ok(()),
            Some((name, v)) => Err(format!(
                "line {}: '{}' has no parameter <{name}>",
                v[0].1, self.command
            )),
        }
    }
}

/// One pair of quotes around a value is not part of it.
fn unquote(v: &str) -> String {
    let t = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = t.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    t.to_owned()
}

/// `device_type` / `new_device_type`: only `filesystem` exists.
fn device_type(p: &mut Params, name: &str) -> Result<(), String> {
    match p.take(name)? {
        Some(v) if !v.eq_ignore_ascii_case("filesystem") => {
            Err(format!("<{name}> is '{v}': only 'filesystem' exists"))
        }
        _ => Ok(()),
    }
}

/// `compression_type` as a zstd level: none 0, LZNT1 (speed) 3, BZIP2 (size) 9.
fn compression(p: &mut Params, notes: &mut Vec<String>) -> Result<Option<String>, String> {
    let Some(v) = p.take("compression_type")? else {
        return Ok(None);
    };
    let l = v.to_ascii_lowercase();
    let level = if l == "none" || l == "no compression" {
        "0"
    } else if l.starts_with("lznt1") {
        "3"
    } else if l.starts_with("bzip2") {
        "9"
    } else {
        return Err(format!(
            "<compression_type> is '{v}': none, LZNT1 standard or BZIP2 (zstd levels 0, 3 and 9)"
        ));
    };
    notes.push(format!("compression '{v}': zstd level {level}"));
    Ok(Some(level.into()))
}

/// `encryption_type`: none or AES 128/192/256.
fn cipher(p: &mut Params) -> Result<Option<String>, String> {
    let Some(v) = p.take("encryption_type")? else {
        return Ok(None);
    };
    let bits: String = v.chars().filter(char::is_ascii_digit).collect();
    match (v.to_ascii_lowercase().starts_with("aes"), bits.as_str()) {
        (_, _) if v.eq_ignore_ascii_case("none") => Ok(None),
        (true, "128" | "192" | "256") => Ok(Some(format!("aes{bits}"))),
        _ => Err(format!(
            "<encryption_type> is '{v}': none, AES 128, AES 192 or AES 256"
        )),
    }
}

/// `max_image_size`: -1 or 0 for none; below 5 MiB it counts megabytes (as the manual's
/// examples use it: 650), else bytes.
fn split(p: &mut Params) -> Result<Option<String>, String> {
    let Some(v) = p.take("max_image_size")? else {
        return Ok(None);
    };
    let n: i64 = v.parse().map_err(|_| {
        format!(
            "<max_image_size> is '{v}': a number of bytes (or megabytes below 5 MiB), -1 for none"
        )
    })?;
    Ok(match n {
        ..=0 => None,
        1..5_242_880 => Some(format!("{n}M")),
        _ => Some(n.to_string()),
    })
}

/// `force_dismount` / `snapshot`: how a mounted source is held.
fn hold(p: &mut Params, argv: &mut Vec<String>) -> Result<(), String> {
    let dismount = p.flag("force_dismount")?;
    let snapshot = p.flag("snapshot")?;
    match (dismount, snapshot) {
        (true, true) => Err("<force_dismount> and <snapshot> exclude each other".into()),
        // Held read-only rather than unmounted: what a mounted filesystem's users bear.
        (true, false) => {
            argv.extend(["--consistency".into(), "lock".into()]);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn password_env(
    p: &mut Params,
    name: &str,
    var: &'static str,
    env: &mut Vec<(&'static str, String)>,
) -> Result<bool, String> {
    Ok(match p.take(name)? {
        Some(v) if !v.is_empty() => {
            env.push((var, v));
            true
        }
        _ => false,
    })
}

fn single(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| (*s).to_owned()).collect()
}

const NO_FILE_FILTERS: &str = "a volume image holds every used block; files cannot be left out";

/// What `cmd` does here; `Ok(None)` when its condition does not hold.
pub fn translate(cmd: &Command, ctx: &Context) -> Result<Option<Plan>, String> {
    let at = |e: String| {
        if e.starts_with("line ") {
            e
        } else {
            format!("line {}: {e}", cmd.line)
        }
    };
    if let Some(c) = &cmd.condition {
        if !ctx.holds(c).map_err(at)? {
            return Ok(None);
        }
    }
    let name = cmd.name.as_str();
    if WINDOWS_COMMANDS.contains(&name) {
        return Err(at(format!(
            "'{name}' is a disk-management or system command of O&O DiskImage for Windows; \
             Holdfast does not run it (use the system's own tools: sfdisk, mkfs, …)"
        )));
    }
    if BACKUP_COMMANDS.contains(&name) {
        return Err(at(format!(
            "'{name}' is a file-based backup command; Holdfast makes images of volumes and disks (create image)"
        )));
    }
    let mut p = Params::new(cmd, ctx).map_err(at)?;
    let mut plan = Plan::default();
    let mut env = Vec::new();
    let mut argv: Vec<String>;
    match name {
        "initialized storage devices" => {
            for f in ["all_devices", "disk_devices", "floppy_devices"] {
                p.flag(f).map_err(at)?;
            }
            p.finish().map_err(at)?;
            plan.notes.push("devices are always known here: nothing to do".into());
            return Ok(Some(plan));
        }
        "create image" | "create incremental" => {
            let incremental = name == "create incremental";
            device_type(&mut p, "device_type").map_err(at)?;
            argv = single(&["image", "create"]);
            let (output, source) = if incremental {
                device_type(&mut p, "new_device_type").map_err(at)?;
                let base = p.require("image_name").map_err(at)?;
                let output = p.require("new_image_name").map_err(at)?;
                let source = match p.take("devicename").map_err(at)? {
                    Some(d) => d,
                    None => base_source(&base).map_err(at)?,
                };
                argv.extend(["--incremental".into(), "--base".into(), base]);
                password_env(&mut p, "password", PASSWORD_ENV, &mut env).map_err(at)?;
                if p.take("new_password").map_err(at)?.is_some_and(|n| {
                    env.first().is_none_or(|(_, old)| *old != n)
                }) {
                    return Err(at("an incremental keeps its chain's password: <new_password> must equal <password>".into()));
                }
                if p.take("new_comments").map_err(at)?.is_some() {
                    plan.notes.push("<new_comments>: use <comments>".into());
                }
                (output, source)
            } else {
                let image_type = p.require("image_type").map_err(at)?.to_ascii_lowercase();
                match image_type.trim_end_matches(" image") {
                    "used sector" => {}
                    "forensic sector" | "direct forensic sector" => argv.push("--forensic".into()),
                    _ => {
                        return Err(at(format!(
                            "<image_type> is '{image_type}': used sector, forensic sector or direct forensic sector"
                        )))
                    }
                }
                let output = p.require("image_name").map_err(at)?;
                let source = p.require("devicename").map_err(at)?;
                if let Some(c) = cipher(&mut p).map_err(at)? {
                    if !password_env(&mut p, "password", PASSWORD_ENV, &mut env).map_err(at)? {
                        return Err(at("an encrypted image needs <password>".into()));
                    }
                    argv.extend(["--encrypt".into(), c]);
                }
                match p.take("checksum_type").map_err(at)? {
                    Some(v) if !v.eq_ignore_ascii_case("none") => {
                        return Err(at(format!("<checksum_type> is '{v}': only none (every block carries its checksum anyway)")))
                    }
                    _ => {}
                }
                (output, source)
            };
            argv.extend(["--source".into(), source, "--output".into(), output.clone()]);
            if let Some(level) = compression(&mut p, &mut plan.notes).map_err(at)? {
                argv.extend(["--compression-level".into(), level]);
            }
            if incremental {
                // Its cipher and password are the chain's.
                if cipher(&mut p).map_err(at)?.is_some() {
                    plan.notes.push("<encryption_type>: an incremental is encrypted as its base".into());
                }
            }
            if let Some(c) = p.take("comments").map_err(at)? {
                argv.extend(["--comment".into(), c]);
            }
            if let Some(s) = split(&mut p).map_err(at)? {
                argv.extend(["--split".into(), s]);
            }
            hold(&mut p, &mut argv).map_err(at)?;
            if p.flag("automatically_validate_image").map_err(at)? {
                argv.push("--verify".into());
            }
            if p.flag("automatically_overwrite_image").map_err(at)? {
                argv.push("--overwrite".into());
            }
            let mut virtual_disks = Vec::new();
            match p.take("target_image_type").map_err(at)?.map(|v| v.to_ascii_lowercase()) {
                None => {}
                Some(v) if v == "o&o image" || v == "holdfast image" => {}
                Some(v) if v == "vhd image" => virtual_disks.push("vhd"),
                Some(v) => return Err(at(format!("<target_image_type> is '{v}': o&o image or vhd image"))),
            }
            if p.flag("automatically_convert_to_vhd").map_err(at)? && !virtual_disks.contains(&"vhd") {
                virtual_disks.push("vhd");
            }
            if p.flag("automatically_convert_to_vhdx").map_err(at)? {
                virtual_disks.push("vhdx");
            }
            if p.flag("ignored_read_errors").map_err(at)? {
                plan.notes.push(
                    "<ignored_read_errors>: image create stops at an unreadable sector and leaves no image (clone device can go on past them)"
                        .into(),
                );
            }
            p.without_effect(
                &[
                    ("ignored_file", NO_FILE_FILTERS),
                    ("ignored_file_pattern", NO_FILE_FILTERS),
                    ("uncompressed_file", "every block is compressed unless it does not shrink"),
                    ("hash_unchanged_data", "every incremental can be the base of the next"),
                    ("change_initial_condition", "every incremental can be the base of the next"),
                    ("ignore_invalid_free_size_appointment", "a full target fails the run and leaves no image"),
                    ("ignore_snapshot_cache_overflow", "an overflowing snapshot stops the run and leaves no image"),
                    ("ignore_data_modification", "a damaged base stops the run"),
                ],
                &mut plan.notes,
            );
            p.finish().map_err(at)?;
            let pw_env = env.clone();
            plan.steps.push(Step { argv, env, background: false });
            for format in virtual_disks {
                let disk = format!("{}.{format}", output.strip_suffix(".hfi").unwrap_or(&output));
                plan.steps.push(Step {
                    argv: single(&["image", "convert", "--image", &output, "--output", &disk, "--format", format]),
                    env: pw_env.clone(),
                    background: false,
                });
            }
            return Ok(Some(plan));
        }
        "restore image" => {
            device_type(&mut p, "device_type").map_err(at)?;
            argv = single(&["image", "restore"]);
            argv.extend(["--image".into(), p.require("image_name").map_err(at)?]);
            argv.extend(["--target".into(), p.require("target_devicename").map_err(at)?]);
            password_env(&mut p, "password", PASSWORD_ENV, &mut env).map_err(at)?;
            if let Some(n) = p.take("image_object_id").map_err(at)? {
                argv.extend(["--partition".into(), n]);
            }
            if p.flag("fill_empty_blocks").map_err(at)? {
                argv.push("--zero-unused".into());
            }
            p.flag("overwrite_target_data").map_err(at)?;
            p.flag("clear_target_drive").map_err(at)?;
            p.without_effect(
                &[
                    ("ignored_read_errors", "a restore reads an image, whose every frame is checked"),
                    ("ignore_data_modification", "a damaged image is refused before anything is written"),
                ],
                &mut plan.notes,
            );
        }
        "validate image" => {
            device_type(&mut p, "device_type").map_err(at)?;
            argv = single(&["image", "validate"]);
            argv.extend(["--image".into(), p.require("image_name").map_err(at)?]);
            password_env(&mut p, "password", PASSWORD_ENV, &mut env).map_err(at)?;
            p.flag("all_splits").map_err(at)?;
            p.without_effect(
                &[
                    ("image_object_id", "the whole image is validated"),
                    ("ignore_data_modification", "damage is always reported"),
                ],
                &mut plan.notes,
            );
        }
        "convert image" => {
            device_type(&mut p, "device_type").map_err(at)?;
            device_type(&mut p, "new_device_type").map_err(at)?;
            argv = single(&["image", "convert"]);
            argv.extend(["--image".into(), p.require("image_name").map_err(at)?]);
            argv.extend(["--output".into(), p.require("new_image_name").map_err(at)?]);
            password_env(&mut p, "password", PASSWORD_ENV, &mut env).map_err(at)?;
            if let Some(c) = cipher(&mut p).map_err(at)? {
                if !password_env(&mut p, "new_password", NEW_PASSWORD_ENV, &mut env).map_err(at)? {
                    return Err(at("an encrypted image needs <new_password>".into()));
                }
                argv.extend(["--encrypt".into(), c]);
            } else if password_env(&mut p, "new_password", NEW_PASSWORD_ENV, &mut env).map_err(at)? {
                plan.notes.push("<new_password> without <encryption_type>: the new image is encrypted as the old one".into());
            }
            if let Some(level) = compression(&mut p, &mut plan.notes).map_err(at)? {
                argv.extend(["--compression-level".into(), level]);
            }
            if let Some(s) = split(&mut p).map_err(at)? {
                argv.extend(["--split".into(), s]);
            }
            let format = match p.take("target_image_type").map_err(at)?.map(|v| v.to_ascii_lowercase()) {
                None => "holdfast".to_owned(),
                Some(v) => match v.trim_end_matches(" image") {
                    "o&o" | "holdfast" => "holdfast".into(),
                    f @ ("vhd" | "vhdx" | "qcow2" | "raw") => f.into(),
                    _ => return Err(at(format!("<target_image_type> is '{v}': o&o image, vhd image, vhdx image, qcow2 image or raw image"))),
                },
            };
            argv.extend(["--format".into(), format]);
            if let Some(n) = p.take("image_object_id").map_err(at)? {
                argv.extend(["--partition".into(), n]);
            }
            p.flag("all_sources").map_err(at)?;
            if p.flag("automatically_overwrite_image").map_err(at)? {
                argv.push("--overwrite".into());
            }
            if p.flag("automatically_validate_image").map_err(at)? {
                plan.notes.push("<automatically_validate_image>: every block is checked as it is converted".into());
            }
            if let Some(c) = p.take("comments").map_err(at)? {
                plan.notes.push(format!("<comments> '{c}': the new image keeps the old one's comment"));
            }
            p.without_effect(
                &[
                    ("uncompressed_file", "every block is compressed unless it does not shrink"),
                    ("ignore_data_modification", "damage stops the conversion"),
                ],
                &mut plan.notes,
            );
        }
        "mount image" => {
            device_type(&mut p, "device_type").map_err(at)?;
            argv = single(&["image", "mount"]);
            argv.extend(["--image".into(), p.require("image_name").map_err(at)?]);
            argv.extend([
                "--mountpoint".into(),
                p.require("mountpoint")
                    .map_err(|e| format!("{e} (the folder to show it at: Linux has no drive letters)"))
                    .map_err(at)?,
            ]);
            password_env(&mut p, "password", PASSWORD_ENV, &mut env).map_err(at)?;
            if let Some(n) = p.take("image_object_id").map_err(at)? {
                argv.extend(["--partition".into(), n]);
            } else if p.flag("all_sources").map_err(at)? {
                argv.push("--raw".into());
            }
            p.finish().map_err(at)?;
            plan.steps.push(Step { argv, env, background: true });
            return Ok(Some(plan));
        }
        "dismount image" => {
            argv = single(&["image", "dismount"]);
            let at_folder = p.take("mountpoint").map_err(at)?;
            let device = p.take("devicename").map_err(at)?;
            let folder = at_folder.or(device).ok_or_else(|| {
                at("'dismount image' needs <mountpoint>: the folder the image is shown at".into())
            })?;
            argv.extend(["--mountpoint".into(), folder]);
        }
        "clone device" => {
            argv = single(&["clone"]);
            let clone_type = p.require("clone_type").map_err(at)?.to_ascii_lowercase();
            match clone_type.trim_end_matches(" image") {
                "used sector" => {}
                "forensic sector" | "direct forensic sector" => argv.push("--forensic".into()),
                _ => {
                    return Err(at(format!(
                        "<clone_type> is '{clone_type}': used sector image, forensic sector image or direct forensic sector image"
                    )))
                }
            }
            argv.extend(["--source".into(), p.require("devicename").map_err(at)?]);
            argv.extend(["--target".into(), p.require("target_devicename").map_err(at)?]);
            if !(p.flag("overwrite_target_data").map_err(at)? | p.flag("clear_target_drive").map_err(at)?) {
                return Err(at(
                    "'clone device' overwrites everything on the target: say so with <overwrite_target_data>yes</overwrite_target_data>".into(),
                ));
            }
            argv.push("--yes".into());
            if p.flag("ignored_read_errors").map_err(at)? {
                argv.push("--ignore-read-errors".into());
            }
            if p.flag("fill_empty_blocks").map_err(at)? {
                argv.push("--zero-unused".into());
            }
            if p.flag("grow").map_err(at)? {
                argv.push("--grow".into());
            }
            hold(&mut p, &mut argv).map_err(at)?;
            p.without_effect(
                &[
                    ("ignored_file", NO_FILE_FILTERS),
                    ("ignored_file_pattern", NO_FILE_FILTERS),
                    ("ignore_snapshot_cache_overflow", "an overflowing snapshot stops the clone"),
                ],
                &mut plan.notes,
            );
        }
        other => {
            return Err(at(format!(
                "unknown command '{other}' (create image, create incremental, restore image, validate image, convert image, mount image, dismount image, clone device)"
            )))
        }
    }
    p.finish().map_err(at)?;
    plan.steps.push(Step {
        argv,
        env,
        background: false,
    });
    Ok(Some(plan))
}

/// The device a base image was made of.
fn base_source(base: &str) -> Result<String, String> {
    let image = crate::image_cmd::open_image(std::path::Path::new(base), None)
        .map_err(|e| format!("cannot read the base image '{base}': {e:#}"))?;
    let path = image.meta.source.path.clone();
    if path.is_empty() {
        return Err(format!(
            "the base image '{base}' does not name its source: give <devicename>"
        ));
    }
    Ok(path)
}
