//! SSH to a machine an agent is installed on (libssh2, through `ssh2`): its host key, and —
//! once the admin has confirmed that key — a login, commands and a file copy. Blocking:
//! callers run it on a blocking thread.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ssh2::{HashType, Session};
use zeroize::Zeroizing;

/// How long connecting and each exchange may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long one command may run (a package installation).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("the SSH handshake with {0} failed: {1}")]
    Handshake(String, String),
    #[error("the host key of {host} is {got}, not {expected} as confirmed: the machine's key changed, or another machine answers; nothing was sent")]
    HostKey {
        host: String,
        expected: String,
        got: String,
    },
    #[error("{host} refused the login of '{user}' with this {how}")]
    Login {
        host: String,
        user: String,
        how: &'static str,
    },
    #[error("SSH to {0}: {1}")]
    Session(String, String),
}

/// How to log in.
pub enum Auth {
    Password(Zeroizing<String>),
    Key {
        private_key: Zeroizing<String>,
        passphrase: Option<Zeroizing<String>>,
    },
}

/// What a command printed, and its exit status.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

fn connect(host: &str, port: u16) -> Result<Session, SshError> {
    let place = format!("{host}:{port}");
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| SshError::Connect(place.clone(), e.to_string()))?
        .collect();
    let mut last = String::from("no address");
    let tcp = addrs
        .iter()
        .find_map(|a| match TcpStream::connect_timeout(a, TIMEOUT) {
            Ok(t) => Some(t),
            Err(e) => {
                last = e.to_string();
                None
            }
        });
    let tcp = tcp.ok_or_else(|| SshError::Connect(place.clone(), last))?;
    let mut session =
        Session::new().map_err(|e| SshError::Handshake(place.clone(), e.to_string()))?;
    session.set_timeout(u32::try_from(TIMEOUT.as_millis()).unwrap_or(u32::MAX));
    session.set_tcp_stream(tcp);
    session
        .handshake()
        .map_err(|e| SshError::Handshake(place, e.to_string()))?;
    Ok(session)
}

fn fingerprint(session: &Session, host: &str) -> Result<String, SshError> {
    let hash = session
        .host_key_hash(HashType::Sha256)
        .ok_or_else(|| SshError::Handshake(host.into(), "no host key".into()))?;
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    ))
}

/// The host key of `host:port` as OpenSSH prints it (`SHA256:…`), for an admin to confirm.
pub fn host_key(host: &str, port: u16) -> Result<String, SshError> {
    let session = connect(host, port)?;
    fingerprint(&session, host)
}

/// A logged-in session.
pub struct Remote {
    session: Session,
    host: String,
}

impl Remote {
    /// Connect to `host:port`, check that its key is `expected` before anything is sent,
    /// and log in as `user`.
    pub fn open(
        host: &str,
        port: u16,
        expected: &str,
        user: &str,
        auth: &Auth,
    ) -> Result<Self, SshError> {
        let session = connect(host, port)?;
        let got = fingerprint(&session, host)?;
        if got != expected {
            return Err(SshError::HostKey {
                host: host.into(),
                expected: expected.into(),
                got,
            });
        }
        let (result, how) = match auth {
            Auth::Password(p) => (session.userauth_password(user, p), "password"),
            Auth::Key {
                private_key,
                passphrase,
            } => (
                session.userauth_pubkey_memory(
                    user,
                    None,
                    private_key,
                    passphrase.as_ref().map(|p| p.as_str()),
                ),
                "key",
            ),
        };
        if result.is_err() || !session.authenticated() {
            return Err(SshError::Login {
                host: host.into(),
                user: user.into(),
                how,
            });
        }
        Ok(Self {
            session,
            host: host.into(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> SshError {
        SshError::Session(self.host.clone(), e.to_string())
    }

    /// Run `command` (through the login shell), with `stdin` given to it.
    pub fn run(&self, command: &str, stdin: Option<&[u8]>) -> Result<Output, SshError> {
        self.session
            .set_timeout(u32::try_from(COMMAND_TIMEOUT.as_millis()).unwrap_or(u32::MAX));
        let mut channel = self.session.channel_session().map_err(|e| self.err(e))?;
        channel.exec(command).map_err(|e| self.err(e))?;
        if let Some(input) = stdin {
            channel.write_all(input).map_err(|e| self.err(e))?;
        }
        channel.send_eof().map_err(|e| self.err(e))?;
        let mut stdout = String::new();
        channel
            .read_to_string(&mut stdout)
            .map_err(|e| self.err(e))?;
        let mut stderr = String::new();
        channel
            .stderr()
            .read_to_string(&mut stderr)
            .map_err(|e| self.err(e))?;
        channel.wait_close().map_err(|e| self.err(e))?;
        let status = channel.exit_status().map_err(|e| self.err(e))?;
        self.session
            .set_timeout(u32::try_from(TIMEOUT.as_millis()).unwrap_or(u32::MAX));
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Copy `data` to `path` on the machine (mode 0600), by SCP.
    pub fn upload(&self, path: &str, data: &[u8]) -> Result<(), SshError> {
        let size = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let mut channel = self
            .session
            .scp_send(Path::new(path), 0o600, size, None)
            .map_err(|e| self.err(e))?;
        channel.write_all(data).map_err(|e| self.err(e))?;
        channel.send_eof().map_err(|e| self.err(e))?;
        channel.wait_eof().map_err(|e| self.err(e))?;
        channel.close().map_err(|e| self.err(e))?;
        channel.wait_close().map_err(|e| self.err(e))?;
        Ok(())
    }
}
