//! `script run` / `script check`: O&O DiskImage command files (XML) — the commands that
//! mean something on Linux, each run as the agent command it becomes; the rest recognised
//! and refused with the line they are on. See docs/command-files.md.

mod commands;
mod expand;
pub mod parse;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::cli::ScriptArgs;
use crate::secret::{NEW_PASSWORD_ENV, PASSWORD_ENV};
use commands::{translate, Step};
use expand::Context;
use parse::{parse, MAX_FILE_BYTES};

/// Read and parse `path` (bounded in size before it is read).
fn load(path: &Path) -> Result<parse::Script> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the command file '{}'", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read '{}' as UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "'{}' is larger than {} KiB: not a command file",
            path.display(),
            MAX_FILE_BYTES >> 10
        );
    }
    parse(&text).map_err(|e| anyhow::anyhow!("'{}' {e}", path.display()))
}

/// A yes/no setting of the file.
fn setting(script: &parse::Script, ctx: &Context, name: &str, default: bool) -> Result<bool> {
    let Some(p) = script.settings.iter().rev().find(|p| p.name == name) else {
        return Ok(default);
    };
    match ctx
        .expand(&p.value)
        .map_err(|e| anyhow::anyhow!("line {}: {e}", p.line))?
        .to_ascii_lowercase()
        .as_str()
    {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        v => bail!("line {}: <{name}> is '{v}': yes, no, true or false", p.line),
    }
}

/// Where the run is logged, besides standard output and error.
struct Log(Option<std::fs::File>);

impl Log {
    fn line(&mut self, text: &str) {
        println!("{text}");
        self.file_only(text);
    }

    fn file_only(&mut self, text: &str) {
        if let Some(f) = &mut self.0 {
            let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
            for l in text.lines() {
                let _ = writeln!(f, "{now} {l}");
            }
        }
    }
}

/// Run (or with `check`, only translate and print) a command file.
pub fn run(a: ScriptArgs, check: bool) -> Result<ExitCode> {
    let script = load(&a.file)?;
    let ctx = Context::here();
    let stop_at_error = setting(&script, &ctx, "stop_at_error", true)?;
    setting(&script, &ctx, "interaction", false)?;
    for p in &script.settings {
        if !["stop_at_error", "interaction", "logfile"].contains(&p.name.as_str()) {
            bail!("line {}: <{}> is not a setting of a command file (stop_at_error, logfile, interaction)", p.line, p.name);
        }
    }
    let logfile = match script.settings.iter().rev().find(|p| p.name == "logfile") {
        Some(p) if !check => {
            let path = ctx
                .expand(&p.value)
                .map_err(|e| anyhow::anyhow!("line {}: {e}", p.line))?;
            use std::os::unix::fs::OpenOptionsExt;
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| {
                        format!("line {}: cannot open the log file '{path}'", p.line)
                    })?,
            )
        }
        _ => None,
    };
    let mut log = Log(logfile);
    log.file_only(&format!("command file '{}'", a.file.display()));
    let mut failed: Option<u8> = None;
    for cmd in &script.commands {
        let plan = match translate(cmd, &ctx) {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                log.line(&format!(
                    "line {}: {}: skipped, its condition does not hold",
                    cmd.line, cmd.name
                ));
                continue;
            }
            Err(e) => {
                log.line(&format!("error: {e}"));
                failed.get_or_insert(1);
                if stop_at_error {
                    break;
                }
                continue;
            }
        };
        log.line(&format!("line {}: {}", cmd.line, cmd.name));
        for note in &plan.notes {
            log.line(&format!("  note: {note}"));
        }
        let mut ok = true;
        for step in &plan.steps {
            log.line(&format!("  holdfast-agent {}", shown(&step.argv)));
            if check {
                continue;
            }
            match execute(step, &mut log) {
                Ok(()) => {}
                Err((code, why)) => {
                    log.line(&format!("error: line {}: {}: {why}", cmd.line, cmd.name));
                    failed.get_or_insert(code);
                    ok = false;
                    break;
                }
            }
        }
        if !ok && stop_at_error {
            break;
        }
    }
    match failed {
        None => {
            log.file_only("done: every command succeeded");
            Ok(ExitCode::SUCCESS)
        }
        Some(code) => {
            log.file_only(&format!("done: failed (exit {code})"));
            Ok(ExitCode::from(code))
        }
    }
}

/// Arguments as a shell would take them back.
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line a background command prints: ready, or why not.
#[derive(serde::Deserialize)]
struct Ready {
    ok: bool,
    error: Option<String>,
    exit_code: Option<u8>,
}

/// Run one step as a child agent; its exit code and why when it fails.
fn execute(step: &Step, log: &mut Log) -> std::result::Result<(), (u8, String)> {
    let exe = std::env::current_exe()
        .map_err(|e| (1, format!("cannot find the agent's own binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&step.argv)
        .env_remove(PASSWORD_ENV)
        .env_remove(NEW_PASSWORD_ENV)
        .envs(step.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null());
    if step.background {
        // Left serving: its first line (JSON) says whether it is ready; what it says on
        // standard error goes to the log file.
        let errors = log.0.as_ref().and_then(|f| f.try_clone().ok());
        cmd.arg("--json")
            .stdout(Stdio::piped())
            .stderr(errors.map_or_else(Stdio::null, Stdio::from));
        let mut child = cmd.spawn().map_err(|e| (1, format!("cannot start: {e}")))?;
        // The first JSON document it prints (pretty, over several lines).
        let ready: Ready = child
            .stdout
            .take()
            .and_then(|out| {
                serde_json::Deserializer::from_reader(out)
                    .into_iter::<Ready>()
                    .next()
                    .and_then(|r| r.ok())
            })
            .unwrap_or(Ready {
                ok: false,
                error: None,
                exit_code: None,
            });
        log.line(&if ready.ok {
            "  ready".to_owned()
        } else {
            format!(
                "  not ready: {}",
                ready.error.as_deref().unwrap_or("no answer")
            )
        });
        if ready.ok {
            return Ok(());
        }
        let code = match ready.exit_code {
            Some(c) => c,
            None => child
                .wait()
                .ok()
                .and_then(|s| s.code())
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        };
        return Err((
            code,
            ready
                .error
                .unwrap_or_else(|| "it stopped without a word".into()),
        ));
    }
    let out = cmd
        .output()
        .map_err(|e| (1, format!("cannot start: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.trim().is_empty() {
        log.line(stdout.trim_end());
    }
    if !stderr.trim().is_empty() {
        eprintln!("{}", stderr.trim_end());
        log.file_only(stderr.trim_end());
    }
    match out.status.code() {
        Some(0) => Ok(()),
        code => Err((
            code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
            format!("exit {}: {}", code.unwrap_or(-1), last_line(&stderr)),
        )),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_owned()
}
