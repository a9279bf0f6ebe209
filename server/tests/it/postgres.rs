//! A throwaway PostgreSQL cluster on a free loopback port, from Debian's package.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A running cluster; stopped and removed on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub url: String,
}

fn unavailable(test: &str, what: &str) -> Option<Postgres> {
    let msg = format!("{test}: {what}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: run scripts/test.sh, which installs it)");
    }
    eprintln!("skipping {msg}");
    None
}

fn as_postgres(cmd: &str) -> bool {
    Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Postgres {
    pub fn start(test: &str) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .max()
        });
        let Some(bin) = bin else {
            return unavailable(
                test,
                "PostgreSQL (Debian package postgresql) is not installed",
            );
        };
        let dir = tempfile::Builder::new()
            .prefix("holdfast-pg-")
            .tempdir_in("/var/tmp")
            .ok()?;
        let d = dir.path().display().to_string();
        let _ = Command::new("chown").args(["postgres:", &d]).status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let b = bin.display();
        if !as_postgres(&format!(
            "{b}/initdb -D {d}/data -U postgres --auth=trust -E UTF8 --no-sync"
        )) {
            return unavailable(test, "initdb failed (needs root and the postgres user)");
        }
        if !as_postgres(&format!(
            "{b}/pg_ctl -D {d}/data -o '-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off' -l {d}/pg.log -w start"
        )) {
            return unavailable(test, "PostgreSQL did not start");
        }
        Some(Self {
            dir,
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        })
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        as_postgres(&format!(
            "{}/pg_ctl -D {}/data -m immediate stop",
            self.bin.display(),
            self.dir.path().display()
        ));
    }
}
