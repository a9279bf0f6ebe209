//! Target URLs and the credentials that go with them.

use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::TargetError;

/// Where a target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local folder (plain path or `file://`).
    Local {
        /// The folder.
        root: PathBuf,
    },
    /// An FTP server: `ftp://[user@]host[:port]/path`, or explicit FTPS with `ftps://`.
    Ftp {
        /// Explicit TLS (`AUTH TLS`).
        secure: bool,
        /// Host name or address.
        host: String,
        /// Port (21 by default).
        port: u16,
        /// User from the URL, if any.
        user: Option<String>,
        /// Folder on the server.
        path: String,
    },
    /// An SFTP server: `sftp://[user@]host[:port]/path`.
    Sftp {
        /// Host name or address.
        host: String,
        /// Port (22 by default).
        port: u16,
        /// User from the URL, if any (the credentials may give it instead).
        user: Option<String>,
        /// Folder on the server (absolute, or relative to the login folder with `/~/`).
        path: String,
    },
    /// An SMB 2/3 share: `smb://[domain;]user@server[:port]/share/path`.
    Smb {
        /// Server name or address.
        host: String,
        /// Port (445 by default).
        port: u16,
        /// Windows domain (or workgroup) from the URL, if any.
        domain: Option<String>,
        /// User from the URL, if any.
        user: Option<String>,
        /// Share name.
        share: String,
        /// Folder inside the share (`/`-separated, may be empty).
        path: String,
    },
    /// An S3 bucket: `s3://bucket/prefix?endpoint=URL&region=R&path_style=true|false`
    /// (AWS when no endpoint is given; path-style addressing by default with an endpoint).
    S3(crate::s3config::S3Config),
}

impl Location {
    /// Parse a target URL. A password inside the URL is refused: credentials travel apart.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        if !text.contains("://") {
            return Ok(Location::Local {
                root: PathBuf::from(text),
            });
        }
        let u = url::Url::parse(text)
            .map_err(|e| TargetError::Invalid(format!("target URL is not valid: {e}")))?;
        if u.password().is_some() {
            return Err(TargetError::Invalid(
                "target URLs must not carry a password: pass it with the credentials".into(),
            ));
        }
        let path = percent_decode(u.path());
        match u.scheme() {
            "file" => Ok(Location::Local { root: PathBuf::from(path) }),
            "sftp" => {
                let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                    TargetError::Invalid("an sftp:// URL needs a host: sftp://user@host:port/path".into())
                })?;
                Ok(Location::Sftp {
                    host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port: u.port().unwrap_or(22),
                    user: (!u.username().is_empty()).then(|| percent_decode(u.username())),
                    path: if path.is_empty() { "/".into() } else { path },
                })
            }
            "ftp" | "ftps" => {
                let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                    TargetError::Invalid("an ftp:// URL needs a host: ftp://user@host:port/path".into())
                })?;
                Ok(Location::Ftp {
                    secure: u.scheme() == "ftps",
                    host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port: u.port().unwrap_or(21),
                    user: (!u.username().is_empty()).then(|| percent_decode(u.username())),
                    path: if path.is_empty() { "/".into() } else { path },
                })
            }
            "smb" => {
                let host = u.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                    TargetError::Invalid("an smb:// URL needs a server: smb://user@server/share/path".into())
                })?;
                let mut parts = path.trim_start_matches('/').splitn(2, '/');
                let share = parts.next().unwrap_or_default().to_owned();
                if share.is_empty() {
                    return Err(TargetError::Invalid(
                        "an smb:// URL needs a share: smb://user@server/share/path".into(),
                    ));
                }
                let folder = parts.next().unwrap_or_default().trim_matches('/').to_owned();
                let userinfo = percent_decode(u.username());
                let (domain, user) = match userinfo.split_once(';') {
                    Some((d, u)) => (Some(d.to_owned()), u.to_owned()),
                    None => (None, userinfo),
                };
                Ok(Location::Smb {
                    host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    port: u.port().unwrap_or(445),
                    domain: domain.filter(|d| !d.is_empty()),
                    user: (!user.is_empty()).then_some(user),
                    share,
                    path: folder,
                })
            }
            "s3" => crate::s3config::S3Config::from_url(&u).map(Location::S3),
            other => Err(TargetError::Invalid(format!(
                "target scheme '{other}' is not supported by this build (supported: plain paths, file://, sftp://, ftp://, ftps://, smb://, s3://)"
            ))),
        }
    }

    /// The folder part of a location that names a file, and the file's name:
    /// `sftp://h/a/b.hfi` → (`sftp://h/a`, `b.hfi`).
    pub fn split_file(&self) -> Result<(Location, String), TargetError> {
        let shown = self.display();
        let split = |path: &str| -> Result<(String, String), TargetError> {
            let (folder, name) = path
                .rsplit_once('/')
                .ok_or_else(|| TargetError::Invalid(format!("'{shown}' names no file")))?;
            if name.is_empty() {
                return Err(TargetError::Invalid(format!(
                    "'{shown}' names a folder; give the image's file name"
                )));
            }
            let folder = if folder.is_empty() { "/" } else { folder };
            Ok((folder.to_owned(), name.to_owned()))
        };
        let mut folder = self.clone();
        let name = match &mut folder {
            Location::Local { root } => {
                let name = root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| TargetError::Invalid(format!("'{shown}' names no file")))?;
                let parent = root.parent().map(PathBuf::from).unwrap_or_default();
                *root = parent;
                name
            }
            Location::Sftp { path, .. } | Location::Ftp { path, .. } => {
                let (f, name) = split(path)?;
                *path = f;
                name
            }
            // The folder inside a share has no leading slash; the share's root is "".
            Location::Smb { path, .. } => {
                let (f, name) = split(&format!("/{path}"))?;
                *path = f.trim_start_matches('/').to_owned();
                name
            }
            Location::S3(config) => {
                let (f, name) = split(&format!("/{}", config.prefix))?;
                config.prefix = f.trim_start_matches('/').to_owned();
                name
            }
        };
        Ok((folder, name))
    }

    /// The host key an SFTP server offers (its fingerprint, `SHA256:…`), read from the
    /// handshake alone: nothing is sent that could log in. None for other kinds of target.
    pub fn offered_host_key(&self) -> Option<Result<String, TargetError>> {
        match self {
            #[cfg(feature = "sftp")]
            Location::Sftp { host, port, .. } => Some(crate::sftp::offered_host_key(host, *port)),
            _ => None,
        }
    }

    /// The backend for this folder, logging in with `creds` (a network backend left out of
    /// this build is an error that says so).
    pub fn open(
        &self,
        creds: Credentials,
    ) -> Result<std::sync::Arc<dyn crate::Target>, TargetError> {
        self.open_locked(creds, None)
    }

    /// [`Location::open`], every file written locked for `lock` — which only S3 buckets
    /// with Object Lock can do: elsewhere asking for it is an error (an SFTP, FTP or SMB
    /// server is made immutable by its own admin, see `docs/jobs.md`).
    pub fn open_locked(
        &self,
        creds: Credentials,
        lock: Option<crate::s3config::ObjectLock>,
    ) -> Result<std::sync::Arc<dyn crate::Target>, TargetError> {
        if lock.is_some() && !matches!(self, Location::S3(_)) {
            return Err(TargetError::Invalid(format!(
                "{}: only S3 targets can lock images (Object Lock); make other storage \
                 immutable on the server itself",
                self.display()
            )));
        }
        #[cfg(not(all(feature = "sftp", feature = "ftp", feature = "smb", feature = "s3")))]
        let missing = |what: &str| {
            TargetError::Invalid(format!(
                "this build of Holdfast has no {what} support (cargo feature of holdfast-targets)"
            ))
        };
        match self {
            Location::Local { root } => Ok(std::sync::Arc::new(crate::local::LocalTarget::new(
                root.clone(),
            ))),
            #[cfg(feature = "sftp")]
            Location::Sftp {
                host,
                port,
                user,
                path,
            } => Ok(std::sync::Arc::new(crate::sftp::SftpTarget::new(
                host,
                *port,
                user.as_deref(),
                path,
                creds,
            )?)),
            #[cfg(feature = "ftp")]
            Location::Ftp {
                secure,
                host,
                port,
                user,
                path,
            } => Ok(std::sync::Arc::new(crate::ftp::FtpTarget::new(
                host,
                *port,
                user.as_deref(),
                path,
                *secure,
                creds,
            )?)),
            #[cfg(feature = "smb")]
            Location::Smb {
                host,
                port,
                domain,
                user,
                share,
                path,
            } => Ok(std::sync::Arc::new(crate::smb::SmbTarget::new(
                host,
                *port,
                domain.as_deref(),
                user.as_deref(),
                share,
                path,
                creds,
            )?)),
            #[cfg(feature = "s3")]
            Location::S3(config) => {
                let target = crate::s3::S3Target::new(config, creds)?;
                Ok(std::sync::Arc::new(match lock {
                    Some(lock) => target.with_retention(lock),
                    None => target,
                }))
            }
            #[cfg(not(feature = "s3"))]
            Location::S3(_) => {
                drop(creds);
                Err(missing("S3"))
            }
            #[cfg(not(feature = "sftp"))]
            Location::Sftp { .. } => {
                drop(creds);
                Err(missing("SFTP"))
            }
            #[cfg(not(feature = "ftp"))]
            Location::Ftp { .. } => {
                drop(creds);
                Err(missing("FTP"))
            }
            #[cfg(not(feature = "smb"))]
            Location::Smb { .. } => {
                drop(creds);
                Err(missing("SMB"))
            }
        }
    }

    /// The URL for messages (never with credentials).
    pub fn display(&self) -> String {
        match self {
            Location::Local { root } => root.display().to_string(),
            Location::Sftp {
                host,
                port,
                user,
                path,
            } => {
                let user = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                format!("sftp://{user}{host}:{port}{path}")
            }
            Location::Ftp {
                secure,
                host,
                port,
                user,
                path,
            } => {
                let user = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
                let scheme = if *secure { "ftps" } else { "ftp" };
                format!("{scheme}://{user}{host}:{port}{path}")
            }
            Location::Smb {
                host,
                port,
                domain,
                user,
                share,
                path,
            } => {
                let domain = domain.as_ref().map(|d| format!("{d};")).unwrap_or_default();
                let user = user
                    .as_ref()
                    .map(|u| format!("{domain}{u}@"))
                    .unwrap_or_default();
                format!("smb://{user}{host}:{port}/{share}/{path}")
            }
            Location::S3(config) => config.url(),
        }
    }
}

/// `name` inside the folder `folder` (a target URL or a local path): appended to the URL's
/// path, before its options (`s3://b/dir?endpoint=…` + `x.hfi` → `s3://b/dir/x.hfi?endpoint=…`).
pub fn join(folder: &str, name: &str) -> String {
    let (path, options) = match folder.split_once('?') {
        Some((path, options)) if folder.contains("://") => (path, Some(options)),
        _ => (folder, None),
    };
    let joined = format!(
        "{}/{}",
        path.trim_end_matches('/'),
        name.trim_start_matches('/')
    );
    match options {
        Some(o) => format!("{joined}?{o}"),
        None => joined,
    }
}

/// The folder and the last name of `spec` (a target URL or a local path), the inverse of
/// [`join`]: URL options stay with the folder. None when `spec` has no `/`.
pub fn split_name(spec: &str) -> Option<(String, String)> {
    let (path, options) = match spec.split_once('?') {
        Some((path, options)) if spec.contains("://") => (path, Some(options)),
        _ => (spec, None),
    };
    let (folder, name) = path.rsplit_once('/')?;
    let folder = match options {
        Some(o) => format!("{folder}?{o}"),
        None => folder.to_owned(),
    };
    Some((folder, name.to_owned()))
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How to log in. Zeroised on drop; `Debug` shows only which parts are set.
#[derive(Clone, Default)]
pub struct Credentials {
    /// User name (overrides the URL's).
    pub user: Option<String>,
    /// Password.
    pub password: Option<Zeroizing<String>>,
    /// Private key file (SFTP).
    pub private_key: Option<PathBuf>,
    /// Passphrase of the private key.
    pub passphrase: Option<Zeroizing<String>>,
    /// File of pinned host keys (SFTP): first use records, a mismatch is refused. Not
    /// read when [`Credentials::host_key`] is given.
    pub known_hosts: Option<PathBuf>,
    /// The SFTP server's host key as an admin confirmed it (`SHA256:` and the base64 of
    /// the key's SHA-256): any other key is refused.
    pub host_key: Option<String>,
    /// PEM file of the CA(s) to trust for FTPS (default: the public web roots).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("private_key", &self.private_key)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<set>"))
            .field("known_hosts", &self.known_hosts)
            .field("host_key", &self.host_key)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            Location::parse("/srv/img").expect("plain"),
            Location::Local {
                root: "/srv/img".into()
            }
        );
        assert_eq!(
            Location::parse("file:///srv/a%20b").expect("file"),
            Location::Local {
                root: "/srv/a b".into()
            }
        );
        let s = Location::parse("sftp://bkp@127.0.0.1:2222/data/img").expect("sftp");
        assert_eq!(
            s,
            Location::Sftp {
                host: "127.0.0.1".into(),
                port: 2222,
                user: Some("bkp".into()),
                path: "/data/img".into()
            }
        );
        assert_eq!(s.display(), "sftp://bkp@127.0.0.1:2222/data/img");
        assert!(
            Location::parse("sftp://bkp:secret@host/x").is_err(),
            "no passwords in URLs"
        );
        assert!(Location::parse("gopher://x/").is_err());
        let m = Location::parse("smb://OFFICE;bkp@nas:4445/backup/Büro%20A/img").expect("smb");
        assert_eq!(
            m,
            Location::Smb {
                host: "nas".into(),
                port: 4445,
                domain: Some("OFFICE".into()),
                user: Some("bkp".into()),
                share: "backup".into(),
                path: "Büro A/img".into()
            }
        );
        assert_eq!(m.display(), "smb://OFFICE;bkp@nas:4445/backup/Büro A/img");
        assert!(Location::parse("smb://nas/").is_err(), "a share is needed");
        let b =
            Location::parse("s3://backups/site%20a/img?endpoint=http://127.0.0.1:8333&region=eu-1")
                .expect("s3");
        let Location::S3(c) = &b else { panic!("{b:?}") };
        assert_eq!(
            (
                c.bucket.as_str(),
                c.prefix.as_str(),
                c.endpoint.as_str(),
                c.region.as_str(),
                c.path_style
            ),
            (
                "backups",
                "site a/img",
                "http://127.0.0.1:8333",
                "eu-1",
                true
            )
        );
        assert_eq!(Location::parse(&b.display()).expect("again"), b);
        let (folder, name) = b.split_file().expect("split");
        assert_eq!(name, "img");
        assert!(matches!(folder, Location::S3(ref f) if f.prefix == "site a"));
        let aws = Location::parse("s3://backups").expect("aws");
        assert!(matches!(aws, Location::S3(ref a)
            if a.endpoint == "https://s3.us-east-1.amazonaws.com" && !a.path_style && a.prefix.is_empty()));
        for bad in [
            "s3:///x",
            "s3://Bad_Bucket/x",
            "s3://b/x?endpoint=ftp://h",
            "s3://bkt/x?colour=red",
            "s3://bkt/x?path_style=maybe",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_names_before_url_options() {
        assert_eq!(join("/srv/img/", "a.hfi"), "/srv/img/a.hfi");
        assert_eq!(join("/srv/what?", "a.hfi"), "/srv/what?/a.hfi");
        assert_eq!(join("sftp://h/x", "/a.hfi"), "sftp://h/x/a.hfi");
        assert_eq!(
            join("s3://b/dir/?endpoint=http://h:1&region=r", "job/a.hfi"),
            "s3://b/dir/job/a.hfi?endpoint=http://h:1&region=r"
        );
        assert_eq!(
            split_name("s3://b/dir/a.hfi?endpoint=http://h:1"),
            Some(("s3://b/dir?endpoint=http://h:1".into(), "a.hfi".into()))
        );
        assert_eq!(
            split_name("/srv/img/a.hfi"),
            Some(("/srv/img".into(), "a.hfi".into()))
        );
        assert_eq!(split_name("a.hfi"), None);
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials {
            password: Some(Zeroizing::new("hunter2".into())),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
