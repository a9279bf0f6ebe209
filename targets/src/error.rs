//! Target errors: what went wrong, where, and whether retrying can help.

use std::io;

/// A target operation failed. `target` is the display name (never credentials).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The object or folder does not exist.
    #[error("{target}: '{key}' does not exist")]
    NotFound {
        /// Target.
        target: String,
        /// Key.
        key: String,
    },
    /// The object exists and overwriting was not asked for.
    #[error("{target}: '{key}' already exists (overwrite not requested)")]
    Exists {
        /// Target.
        target: String,
        /// Key.
        key: String,
    },
    /// Login refused.
    #[error("{target}: authentication failed for user '{user}'")]
    Auth {
        /// Target.
        target: String,
        /// User name.
        user: String,
    },
    /// The server's host key is not the one recorded.
    #[error("{target}: the server's host key changed (recorded {expected}, offered {offered}); refusing to connect — if the server was reinstalled, remove its line from '{known_hosts}'")]
    HostKeyMismatch {
        /// Target.
        target: String,
        /// Recorded fingerprint.
        expected: String,
        /// Offered fingerprint.
        offered: String,
        /// The pin file.
        known_hosts: String,
    },
    /// The server's host key is not the one an admin confirmed.
    #[error("{target}: the server offers the host key {offered}, not the one an admin confirmed ({confirmed}); refusing to connect — if the server was reinstalled, test the target again and confirm its new key")]
    HostKeyChanged {
        /// Target.
        target: String,
        /// Confirmed fingerprint.
        confirmed: String,
        /// Offered fingerprint.
        offered: String,
    },
    /// The object is under an Object Lock retention and cannot be deleted or replaced yet.
    #[error(
        "{target}: '{key}' is locked (Object Lock) until {until}; it can be deleted after that"
    )]
    Locked {
        /// Target.
        target: String,
        /// Key.
        key: String,
        /// When the lock ends (RFC 3339, UTC).
        until: String,
    },
    /// The target is full.
    #[error("{target}: no space left while writing '{key}'")]
    Full {
        /// Target.
        target: String,
        /// Key.
        key: String,
    },
    /// A failure that retrying may fix (connection dropped, timeout).
    #[error("{target}: {op} '{key}': {detail}")]
    Transient {
        /// Target.
        target: String,
        /// Operation.
        op: &'static str,
        /// Key.
        key: String,
        /// What happened.
        detail: String,
    },
    /// A failure that retrying will not fix.
    #[error("{target}: {op} '{key}': {detail}")]
    Permanent {
        /// Target.
        target: String,
        /// Operation.
        op: &'static str,
        /// Key.
        key: String,
        /// What happened.
        detail: String,
    },
    /// The URL or key is not valid.
    #[error("{0}")]
    Invalid(String),
}

impl TargetError {
    /// True when retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TargetError::Transient { .. })
    }

    /// True for [`TargetError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, TargetError::NotFound { .. })
    }

    /// Classify a local I/O error.
    pub fn from_io(target: &str, op: &'static str, key: &str, e: &io::Error) -> Self {
        let (t, k) = (target.to_owned(), key.to_owned());
        match e.kind() {
            io::ErrorKind::NotFound => TargetError::NotFound { target: t, key: k },
            io::ErrorKind::AlreadyExists => TargetError::Exists { target: t, key: k },
            io::ErrorKind::StorageFull => TargetError::Full { target: t, key: k },
            io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => TargetError::Transient {
                target: t,
                op,
                key: k,
                detail: e.to_string(),
            },
            _ => TargetError::Permanent {
                target: t,
                op,
                key: k,
                detail: e.to_string(),
            },
        }
    }
}
