//! `holdfast-agent`: the Holdfast agent — the standalone command line for every image
//! operation (usable on a rescue system with no server), enrolment, and the daemon that
//! keeps a channel to the server (`link/`).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod clone;
mod consistency;
mod crypt;
mod device;
mod dmsnap;
mod drive;
mod exit;
mod freeze;
mod grow;
mod hold_together;
mod image_cmd;
mod image_files;
mod inventory;
mod link;
mod luks;
mod lvm;
mod outcome;
mod output;
mod readahead;
mod sample;
mod script;
mod secret;
mod snapshot_commands;
mod storage;
mod thin_changes;
mod write_log;
mod zip_stream;

/// Set by Ctrl-C / SIGTERM: long operations stop between frames and remove partial output.
pub static CANCEL: holdfast_image::progress::Cancel = holdfast_image::progress::Cancel::new();

/// Environment variable the daemon sets on the commands it runs for jobs: its process id.
pub const PARENT_ENV: &str = "HOLDFAST_STOP_WITH_PARENT";

/// A job's command stops (and removes its partial image) when the daemon that started it
/// dies, instead of finishing an image nobody will report.
fn stop_with_parent() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err()
        || nix::unistd::getppid().as_raw() != parent
    {
        // Could not ask, or the daemon is gone already.
        CANCEL.cancel();
    }
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = ctrlc::set_handler(|| CANCEL.cancel()) {
        eprintln!("holdfast-agent: warning: cannot handle Ctrl-C: {e}");
    }
    stop_with_parent();
    let json = cli.json();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            let code = exit::code_for(&err);
            if json {
                outcome::print(&outcome::Failure {
                    ok: false,
                    error: format!("{err:#}"),
                    exit_code: code,
                });
            }
            eprintln!("holdfast-agent: error: {err:#}");
            ExitCode::from(code)
        }
    }
}
