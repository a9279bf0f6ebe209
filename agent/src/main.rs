//! `holdfast-agent`: the Holdfast agent — the standalone command line for every image
//! operation (usable on a rescue system with no server), enrolment, and the daemon that
//! keeps a channel to the server (`link/`).

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod device;
mod exit;
mod image_cmd;
mod inventory;
mod link;
mod output;
mod readahead;
mod secret;
mod storage;

/// Set by Ctrl-C / SIGTERM: long operations stop between frames and remove partial output.
pub static CANCEL: holdfast_image::progress::Cancel = holdfast_image::progress::Cancel::new();

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(e) = ctrlc::set_handler(|| CANCEL.cancel()) {
        eprintln!("holdfast-agent: warning: cannot handle Ctrl-C: {e}");
    }
    let json = cli.json();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            let code = exit::code_for(&err);
            if json {
                output::print_json(&serde_json::json!({
                    "ok": false,
                    "error": format!("{err:#}"),
                    "exit_code": code,
                }));
            }
            eprintln!("holdfast-agent: error: {err:#}");
            ExitCode::from(code)
        }
    }
}
