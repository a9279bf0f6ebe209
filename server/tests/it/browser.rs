//! A headless Chromium (Debian's `chromium` and `chromium-driver`) driven over the W3C
//! WebDriver protocol: a small blocking client on a loopback socket, enough to click,
//! type, read pages, run a script and take screenshots.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER: &str = "/usr/bin/chromedriver";
/// The key WebDriver names element references with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the driver (and its browser) stop on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Where downloads land.
    pub downloads: PathBuf,
    /// Where screenshots are saved.
    pub shots: PathBuf,
}

/// An element on the current page.
#[derive(Clone)]
pub struct El(String);

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // The driver keeps connections open: read the head, then exactly the body.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| format!("no content-length in {head}"))?;
    while raw.len() < head_end + length {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed in the response body".into());
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned();
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if v["value"]["error"].is_string() {
        return Err(format!(
            "{}: {}",
            v["value"]["error"],
            v["value"]["message"].as_str().unwrap_or("")
        ));
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Start one (window `width` × 1000), or `None` (skip; fail under CI) when Chromium or
    /// its driver is missing.
    pub fn start(test: &str, dir: &Path, width: u32) -> Option<Self> {
        for (path, package) in [(CHROMIUM, "chromium"), (DRIVER, "chromium-driver")] {
            if !Path::new(path).exists() {
                holdfast_testkit::servers::unavailable(
                    test,
                    &format!("{path} (Debian package {package}) is not installed"),
                );
                return None;
            }
        }
        let port = crate::proc::free_port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/status", None)
            .map(|v| v["ready"] != true)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let downloads = dir.join("downloads");
        std::fs::create_dir_all(&downloads).ok()?;
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        std::fs::create_dir_all(&shots).ok()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The test server's certificate is from its own CA.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--no-first-run", "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", format!("--window-size={width},1000"),
                         format!("--user-data-dir={}", dir.join("chromium-profile").display())],
                "prefs": {"download.default_directory": downloads, "download.prompt_for_download": false},
            },
        }}});
        let mut b = Self {
            driver,
            port,
            session: String::new(),
            downloads,
            shots,
        };
        let v = b.call("POST", "/session", Some(&caps));
        b.session = v["sessionId"].as_str().expect("session id").to_owned();
        Some(b)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        http(self.port, method, path, body)
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"))
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn go(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element matching CSS `selector`, waiting up to 15 s for it.
    pub fn find(&self, selector: &str) -> El {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = http(
                self.port,
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&json!({"using": "css selector", "value": selector})),
            );
            match r {
                Ok(v) => return El(v[ELEMENT].as_str().expect("element").to_owned()),
                Err(e) if Instant::now() > deadline => {
                    self.shot("failed-find");
                    panic!("no element '{selector}' on {}: {e}", self.url())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// True when an element matches `selector` now.
    pub fn has(&self, selector: &str) -> bool {
        self.script(
            "return document.querySelector(arguments[0]) !== null",
            &[json!(selector)],
        ) == true
    }

    pub fn click(&self, selector: &str) {
        // A page that reloads between finding and clicking leaves a stale reference: again.
        for _ in 0..5 {
            let el = self.find(selector);
            match http(
                self.port,
                "POST",
                &format!("/session/{}/element/{}/click", self.session, el.0),
                Some(&json!({})),
            ) {
                Ok(_) => return,
                Err(e) if e.contains("stale") => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("click {selector}: {e}"),
            }
        }
        panic!("click {selector}: the element keeps going stale");
    }

    /// Replace the text of field `selector` with `text` (typed as keys).
    pub fn fill(&self, selector: &str, text: &str) {
        let el = self.find(selector);
        self.session_call(
            "POST",
            &format!("/element/{}/clear", el.0),
            Some(&json!({})),
        );
        self.session_call(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(&json!({ "text": text })),
        );
    }

    /// Choose the file at `path` in the file field `selector`.
    pub fn upload(&self, selector: &str, path: &Path) {
        let el = self.find(selector);
        self.session_call(
            "POST",
            &format!("/element/{}/value", el.0),
            Some(&json!({ "text": path.display().to_string() })),
        );
    }

    /// The text of the downloaded file whose name starts with `prefix` and ends with
    /// `suffix`, once complete.
    pub fn download(&self, prefix: &str, suffix: &str) -> String {
        std::fs::read_to_string(self.downloaded(prefix, suffix)).expect("a text download")
    }

    /// The downloaded file whose name starts with `prefix` and ends with `suffix`, once
    /// complete (Chromium creates the name empty and writes to a `.crdownload` file
    /// first), waiting up to 60 s for it.
    pub fn downloaded(&self, prefix: &str, suffix: &str) -> PathBuf {
        let mut found = None;
        self.wait("the download", 60, |b| {
            let names: Vec<std::path::PathBuf> = std::fs::read_dir(&b.downloads)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            let busy = names
                .iter()
                .any(|p| p.extension().is_some_and(|x| x == "crdownload"));
            found = names
                .iter()
                .find(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with(prefix) && n.ends_with(suffix)
                })
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
                .cloned();
            !busy && found.is_some()
        });
        found.expect("a download")
    }

    /// Set field `selector` to `value` as a script would (for date and time fields, whose
    /// typed form depends on the locale), announcing the change.
    pub fn set(&self, selector: &str, value: &str) {
        self.find(selector);
        self.script(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1];
             e.dispatchEvent(new Event('input', {bubbles: true}));
             e.dispatchEvent(new Event('change', {bubbles: true}));",
            &[json!(selector), json!(value)],
        );
    }

    /// Choose `value` in the select `selector`.
    pub fn choose(&self, selector: &str, value: &str) {
        self.click(&format!("{selector} option[value=\"{value}\"]"));
    }

    /// The visible text of `selector` (read in one step: a page that reloads meanwhile
    /// cannot leave a stale reference).
    pub fn text(&self, selector: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.script(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
                &[json!(selector)],
            );
            if let Some(t) = v.as_str() {
                return t.to_owned();
            }
            if Instant::now() > deadline {
                self.shot("failed-text");
                panic!("no element '{selector}' on {}", self.url());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `script` (a function body; `arguments` are `args`) in the page.
    pub fn script(&self, script: &str, args: &[Value]) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Run an async script: it ends by calling `arguments[arguments.length - 1](result)`.
    pub fn script_async(&self, script: &str, args: &[Value]) -> Value {
        self.session_call(
            "POST",
            "/execute/async",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Wait up to `secs` for `check`; on time-out, save a screenshot and fail.
    pub fn wait(&self, what: &str, secs: u64, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        self.shot("timeout");
        panic!("timed out waiting for {what} on {}", self.url());
    }

    /// Save a screenshot of the window as `name.png`.
    pub fn shot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let png = self.session_call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .expect("png");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("screenshot");
        path
    }

    /// Resize the window (to check narrow layouts).
    pub fn size(&self, width: u32, height: u32) {
        self.session_call(
            "POST",
            "/window/rect",
            Some(&json!({"width": width, "height": height})),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
