//! `image delete`.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use crate::cli::DeleteArgs;
use crate::output::print_json;

/// Run.
pub fn run(a: DeleteArgs) -> Result<ExitCode> {
    let parts = crate::storage::delete_image(&a.image, a.common.credentials_file.as_deref())?;
    if a.common.json {
        print_json(&json!({ "ok": true, "image": a.image.display().to_string(), "parts": parts }));
    } else {
        println!("deleted '{}' ({parts} part(s))", a.image.display());
    }
    Ok(ExitCode::SUCCESS)
}
