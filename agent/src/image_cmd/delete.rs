//! `image delete`.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::DeleteArgs;

/// Run.
pub fn run(a: DeleteArgs) -> Result<ExitCode> {
    let parts = crate::storage::delete_image(&a.image, a.common.credentials_file.as_deref())?;
    if a.common.json {
        crate::outcome::print(&crate::outcome::Deleted {
            ok: true,
            image: a.image.display().to_string(),
            parts,
        });
    } else {
        println!("deleted '{}' ({parts} part(s))", a.image.display());
    }
    Ok(ExitCode::SUCCESS)
}
