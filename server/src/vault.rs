//! The credentials vault: secrets (target passwords and keys, image passwords, jobs' LUKS
//! passphrases, the SMTP password) are sealed with AES-256-GCM under the server's master key before they reach
//! the store, and opened only to travel to an agent inside a job or to log in to SMTP.
//!
//! The master key is 32 random bytes, base64 in `DATA/master.key` (created on first start,
//! mode 0600) unless given in `HOLDFAST_MASTER_KEY`. Each sealed value is bound to what
//! it belongs to (`target:7`, …): a value copied to another row does not open.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::Digest as _;
use zeroize::Zeroizing;

/// File name of the master key in the data directory.
pub const KEY_FILE: &str = "master.key";
/// Prefix of a sealed value: the format can change without guessing.
const VERSION: &str = "v1:";

/// Why the vault cannot open or seal.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot read or create the master key '{path}': {cause}")]
    Io {
        path: String,
        /// In the message, not also a `source` (a chain's report would say it twice).
        cause: std::io::Error,
    },
    #[error("the master key {0} is not 32 bytes in base64")]
    BadKey(String),
    #[error("the master key file '{0}' can be read by other users; make it mode 0600")]
    Exposed(String),
    #[error("a stored secret cannot be opened (other master key, or damaged)")]
    Sealed,
}

/// Where the master key came from (shown to admins, never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// Created by this server in the data directory.
    Created,
    /// Read from the data directory.
    File,
    /// Given in `HOLDFAST_MASTER_KEY`.
    Environment,
}

/// The master key.
pub struct Vault {
    cipher: Aes256Gcm,
    source: KeySource,
    id: String,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("source", &self.source)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// The key from `given` (base64), else from the data directory, created when missing.
    pub fn open(data_dir: &Path, given: Option<&str>) -> Result<Self, VaultError> {
        if let Some(text) = given {
            return Self::from_base64(text, KeySource::Environment, "in HOLDFAST_MASTER_KEY");
        }
        let path = data_dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let io = |cause| VaultError::Io {
            path: shown.clone(),
            cause,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(VaultError::Exposed(shown));
                }
                Self::from_base64(text.trim(), KeySource::File, &shown)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; 32]);
                getrandom::getrandom(&mut key[..])
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let text = Zeroizing::new(STANDARD.encode(&key[..]));
                // create_new: two servers starting on one folder never overwrite a key.
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(text.as_bytes())
                    .and_then(|()| f.write_all(b"\n"))
                    .and_then(|()| f.sync_all())
                    .map_err(io)?;
                Self::from_base64(&text, KeySource::Created, &shown)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_base64(text: &str, source: KeySource, what: &str) -> Result<Self, VaultError> {
        let key = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| VaultError::BadKey(what.to_owned()))?,
        );
        if key.len() != 32 {
            return Err(VaultError::BadKey(what.to_owned()));
        }
        let cipher =
            Aes256Gcm::new_from_slice(&key).map_err(|_| VaultError::BadKey(what.to_owned()))?;
        // A short public id tells admins which key a server uses without revealing it.
        let digest = sha2::Sha256::digest([b"holdfast master key id:".as_slice(), &key].concat());
        let id = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { cipher, source, id })
    }

    /// Where the key came from.
    pub fn source(&self) -> KeySource {
        self.source
    }

    /// A public id of the key (a hash prefix).
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Seal `plain` for the row named `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> Result<String, VaultError> {
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|_| VaultError::Sealed)?;
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Sealed)?;
        Ok(format!(
            "{VERSION}{}",
            STANDARD.encode([&nonce[..], &sealed].concat())
        ))
    }

    /// Open a value sealed for `context`.
    pub fn unseal(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let raw = sealed
            .strip_prefix(VERSION)
            .and_then(|b| STANDARD.decode(b).ok())
            .filter(|r| r.len() > 12)
            .ok_or(VaultError::Sealed)?;
        let (nonce, body) = raw.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Vault::open(dir.path(), None).expect("create");
        assert_eq!(v.source(), KeySource::Created);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = v.seal("target:1", b"s3cret").expect("seal");
        assert!(!sealed.contains("s3cret"));
        let again = Vault::open(dir.path(), None).expect("reopen");
        assert_eq!(again.source(), KeySource::File);
        assert_eq!(again.key_id(), v.key_id());
        assert_eq!(
            &again.unseal("target:1", &sealed).expect("open")[..],
            b"s3cret"
        );
    }

    #[test]
    fn sealed_values_are_bound_to_their_row_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Vault::open(dir.path(), None).expect("create");
        let sealed = v.seal("target:1", b"pw").expect("seal");
        assert!(matches!(
            v.unseal("target:2", &sealed),
            Err(VaultError::Sealed)
        ));
        let mut damaged = sealed.clone();
        damaged.replace_range(10..11, if &sealed[10..11] == "A" { "B" } else { "A" });
        assert!(matches!(
            v.unseal("target:1", &damaged),
            Err(VaultError::Sealed)
        ));
        let other = Vault::open(dir.path(), Some(&STANDARD.encode([7u8; 32]))).expect("given");
        assert_eq!(other.source(), KeySource::Environment);
        assert!(matches!(
            other.unseal("target:1", &sealed),
            Err(VaultError::Sealed)
        ));
    }

    #[test]
    fn bad_or_exposed_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Vault::open(dir.path(), Some("short")),
            Err(VaultError::BadKey(_))
        ));
        Vault::open(dir.path(), None).expect("create");
        let path = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            Vault::open(dir.path(), None),
            Err(VaultError::Exposed(_))
        ));
    }
}
