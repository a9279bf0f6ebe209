//! The store survives the server being killed: four clients write through the API while
//! the server is killed with SIGKILL five times and started again on the same data; every
//! write it acknowledged with a 2xx is there afterwards, once. On SQLite and PostgreSQL.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::fleet::{jar_cookie, wait_for, wait_secs, Api};
use crate::postgres::Postgres;
use crate::proc::{curl, first_start_secrets, free_port, start_with};

/// Kills of the server during the writes.
const KILLS: usize = 5;
/// Acknowledged writes between two kills.
const WRITES_PER_KILL: usize = 120;
/// Clients writing at once.
const WRITERS: usize = 4;

#[test]
fn acknowledged_writes_survive_kills_on_sqlite() {
    if !curl_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    survives_kills(dir.path(), &[]);
}

#[test]
fn acknowledged_writes_survive_kills_on_postgres() {
    if !curl_present() {
        return;
    }
    let Some(pg) = Postgres::start("crash_on_postgres") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    survives_kills(dir.path(), &["--database-url", &pg.url]);
}

/// Two servers on one SQLite store would both start every scheduled run: the second is
/// refused, saying why, and the folder is free again once the first is gone (even killed).
#[test]
fn a_second_server_on_one_sqlite_folder_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut first, _) = start_with(dir.path(), free_port(), true, &[]);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast-server"))
        .args(["--data-dir", dir.path().to_str().expect("path")])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // A second server that starts would serve forever: give it 20 s to give up.
    let stopped = (0..200).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        second.try_wait().expect("wait")
    });
    if stopped.is_none() {
        let _ = second.kill();
    }
    let second = second.wait_with_output().expect("output");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        stopped.is_some_and(|s| !s.success()),
        "the second server did not refuse: {said}"
    );
    assert!(
        said.contains("another holdfast-server is already running on the data folder")
            && said.contains("PostgreSQL"),
        "{said}"
    );
    first.kill().expect("kill");
    first.wait().expect("wait");
    let (mut again, printed) = start_with(dir.path(), free_port(), false, &[]);
    assert!(
        printed.iter().any(|l| l.contains("certificate:")),
        "{printed:?}"
    );
    again.kill().expect("kill");
    let _ = again.wait();
}

fn curl_present() -> bool {
    let present = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        present || std::env::var_os("CI").is_none(),
        "curl is missing (scripts/test.sh installs it)"
    );
    present
}

/// Create site `name`; true when the server acknowledged it (201). Reads the cookie jar,
/// never writes it, so that writers can share it.
fn create_site(api: &Api, csrf: &str, name: &str) -> bool {
    let body = format!("{{\"name\":\"{name}\"}}");
    let header = format!("x-csrf-token: {csrf}");
    curl(&[
        "--cacert",
        &api.ca,
        "-b",
        &api.cookies,
        "-H",
        &header,
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/api/v1/sites", api.base),
    ])
    .is_some_and(|(code, _)| code == "201")
}

fn survives_kills(dir: &Path, flags: &[&str]) {
    let port = free_port();
    let (mut server, printed) = start_with(dir, port, true, flags);
    let log = dir.join("server.log");
    let api = Api {
        base: format!("https://localhost:{port}"),
        ca: dir.join("tls/ca.pem").display().to_string(),
        cookies: dir.join("cookies").display().to_string(),
    };
    let healthy = || {
        curl(&["--cacert", &api.ca, &format!("{}/healthz", api.base)])
            .is_some_and(|(o, _)| o == "ok\n")
    };
    wait_for("the server", &log, healthy);
    api.first_login(&first_start_secrets(dir, &printed));
    let csrf = jar_cookie(Path::new(&api.cookies), "holdfast_csrf").expect("csrf cookie");

    let acked = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (acked, stop, csrf) = (acked.clone(), stop.clone(), csrf.clone());
            let api = Api {
                base: api.base.clone(),
                ca: api.ca.clone(),
                cookies: api.cookies.clone(),
            };
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("w{w}-{n}");
                    n += 1;
                    if create_site(&api, &csrf, &name) {
                        if let Ok(mut a) = acked.lock() {
                            a.insert(name);
                        }
                    } else {
                        // The server is down: try again shortly, with a new name.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    let count = || acked.lock().map(|a| a.len()).unwrap_or(0);
    for kill in 1..=KILLS {
        wait_secs("writes to be acknowledged", &log, 120, || {
            count() >= kill * WRITES_PER_KILL
        });
        let _ = server.kill(); // SIGKILL: no shutdown, no flush
        let _ = server.wait();
        (server, _) = start_with(dir, port, false, flags);
        wait_for("the server again", &log, healthy);
    }
    wait_secs("writes after the last kill", &log, 120, || {
        count() >= (KILLS + 1) * WRITES_PER_KILL
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }

    // Every acknowledged site is there, each once.
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = api.call(
            "GET",
            &format!("/api/v1/sites?after={after}&limit=500"),
            None,
        );
        let items = page["items"].as_array().cloned().unwrap_or_default();
        stored.extend(
            items
                .iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned)),
        );
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a site is stored twice");
    let acked = acked.lock().expect("acked");
    let lost: Vec<_> = acked.difference(&unique).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after {KILLS} kills: {lost:?}",
        lost.len(),
        acked.len()
    );
    let _ = server.kill();
    let _ = server.wait();
}
