//! Passwords: from a file or an environment variable, never from argv.

use std::path::Path;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// Environment variable holding the image password.
pub const PASSWORD_ENV: &str = "HOLDFAST_PASSWORD";
/// Environment variable holding the new password for `convert`.
pub const NEW_PASSWORD_ENV: &str = "HOLDFAST_NEW_PASSWORD";

/// The first line of `file`, else the variable `env`, else none.
pub fn password(file: Option<&Path>, env: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
    if let Some(f) = file {
        let text = Zeroizing::new(
            std::fs::read(f)
                .with_context(|| format!("cannot read password file '{}'", f.display()))?,
        );
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            bail!("password file '{}' is empty", f.display());
        }
        return Ok(Some(Zeroizing::new(line.to_vec())));
    }
    Ok(std::env::var_os(env).filter(|v| !v.is_empty()).map(|v| {
        use std::os::unix::ffi::OsStrExt;
        Zeroizing::new(v.as_bytes().to_vec())
    }))
}
