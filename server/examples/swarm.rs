//! Scale harness: many simulated agents in one process, speaking the real protocol (TLS
//! WebSockets, enrolment, hello, inventory, heartbeats, answering requests), against a
//! running server; then agent listings at a fixed rate, with their latency, while they stay
//! connected. Used by `scripts/bench/swarm.sh`; see docs/benchmarks.md.
//!
//! `swarm --server https://localhost:PORT --ca CA.pem --password ADMIN_PASSWORD --agents N
//!  --rate REQ_PER_S --seconds S [--server-pid PID]`
//!
//! `--server` (and `--server-pid`) may be given several times: instances of one server on
//! one PostgreSQL store. Agents and listing clients are spread over them in turn; RSS is
//! reported per instance, CPU summed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use holdfast_proto::request::{Acceptance, RunAccepted, RunList};
use holdfast_proto::{
    AgentMsg, Inventory, Reply, Request, ServerMsg, CHANNEL_PATH, ENROLL_PATH, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Opts {
    /// Each instance's host and port.
    servers: Vec<(String, u16)>,
    tls: Arc<rustls::ClientConfig>,
    password: String,
    agents: usize,
    rate: u64,
    seconds: u64,
    server_pids: Vec<u32>,
    /// Instead of listing: schedule one job for every agent and time its dispatch.
    dispatch: bool,
    /// With `dispatch`: the job names only this many agents (all by default).
    runs: Option<usize>,
    /// The number of this process's first agent (`sim-NNNNN`): a process holds at most as
    /// many sockets as its limit of open files, so a large fleet is split over processes.
    first: usize,
    /// Only connect the agents and keep them connected this many seconds (a helper
    /// process of a split fleet).
    hold: Option<u64>,
}

fn opts() -> Res<Opts> {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let all = |name: &str| -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == name)
            .map(|w| w[1].clone())
            .collect()
    };
    let mut servers = Vec::new();
    for server in all("--server") {
        let rest = server
            .strip_prefix("https://")
            .ok_or("the server URL starts with https://")?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or("the server URL needs a port")?;
        servers.push((host.to_owned(), port.parse()?));
    }
    if servers.is_empty() {
        return Err("--server https://HOST:PORT is needed".into());
    }
    let pem = std::fs::read(get("--ca").ok_or("--ca CA.pem is needed")?)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Opts {
        servers,
        tls: Arc::new(tls),
        password: get("--password").ok_or("--password is needed")?,
        agents: get("--agents").map_or(Ok(1000), |v| v.parse())?,
        rate: get("--rate").map_or(Ok(200), |v| v.parse())?,
        seconds: get("--seconds").map_or(Ok(30), |v| v.parse())?,
        server_pids: all("--server-pid")
            .iter()
            .filter_map(|v| v.parse().ok())
            .collect(),
        dispatch: args.iter().any(|a| a == "--dispatch"),
        runs: get("--runs").map(|v| v.parse()).transpose()?,
        first: get("--first").map_or(Ok(0), |v| v.parse())?,
        hold: get("--hold").map(|v| v.parse()).transpose()?,
    })
}

/// A kept-alive HTTPS/1.1 connection for API calls.
struct Http {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    host: String,
}

impl Http {
    /// A connection to instance `n` (taken in turn).
    async fn connect(o: &Opts, n: usize) -> Res<Self> {
        let (host, port) = &o.servers[n % o.servers.len()];
        let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(o.tls.clone())
            .connect(name, tcp)
            .await?;
        Ok(Self {
            stream,
            host: host.clone(),
        })
    }

    /// One request; the status, headers and body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: Option<&str>,
    ) -> Res<(u16, String, Vec<u8>)> {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        let head_end = loop {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head.split_whitespace().nth(1).ok_or("no status")?.parse()?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
            })
            .ok_or("no content-length")?
            .parse()?;
        while buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, head, buf[head_end..head_end + len].to_vec()))
    }
}

async fn ws(
    o: &Opts,
    n: usize,
    path: &str,
    bearer: Option<&str>,
) -> Res<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>
{
    let (host, port) = &o.servers[n % o.servers.len()];
    let mut req = format!("wss://{host}:{port}{path}").into_client_request()?;
    if let Some(b) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {b}").parse()?);
    }
    let connector = tokio_tungstenite::Connector::Rustls(o.tls.clone());
    let (s, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)).await?;
    Ok(s)
}

async fn next_msg(
    s: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Res<ServerMsg> {
    while let Some(m) = s.next().await {
        if let Message::Text(t) = m? {
            return Ok(serde_json::from_str(t.as_str())?);
        }
    }
    Err("closed".into())
}

/// One simulated agent: enrol, then keep the channel with heartbeats; counts itself online.
async fn agent(
    o: Arc<Opts>,
    n: usize,
    token: String,
    online: Arc<AtomicUsize>,
    enrolled: Arc<tokio::sync::Semaphore>,
    orders: Orders,
) -> Res<()> {
    let permit = enrolled.acquire().await?;
    let mut e = ws(&o, n, ENROLL_PATH, None).await?;
    let hello = AgentMsg::Enroll {
        protocol: PROTOCOL_VERSION,
        token,
        hostname: format!("sim-{:05}", o.first + n),
    };
    e.send(Message::Text(hello.to_text().into())).await?;
    let secret = match next_msg(&mut e).await? {
        ServerMsg::Enrolled { secret, .. } => secret,
        other => return Err(format!("enrolment refused: {other:?}").into()),
    };
    drop(e);
    let mut c = ws(&o, n, CHANNEL_PATH, Some(&secret)).await?;
    let hello = AgentMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "sim".into(),
    };
    c.send(Message::Text(hello.to_text().into())).await?;
    let beat = match next_msg(&mut c).await? {
        ServerMsg::Welcome {
            heartbeat_seconds, ..
        } => Duration::from_secs(heartbeat_seconds),
        other => return Err(format!("channel refused: {other:?}").into()),
    };
    let inv = Inventory {
        hostname: format!("sim-{:05}", o.first + n),
        os: "sim".into(),
        agent_version: "sim".into(),
        ..Default::default()
    };
    c.send(Message::Text(
        AgentMsg::Inventory(inv.clone()).to_text().into(),
    ))
    .await?;
    drop(permit);
    online.fetch_add(1, Ordering::Relaxed);
    let mut tick = tokio::time::interval(beat);
    tick.reset();
    loop {
        tokio::select! {
            _ = tick.tick() => c.send(Message::Text(AgentMsg::Heartbeat.to_text().into())).await?,
            m = next_msg(&mut c) => if let ServerMsg::Request { id, request } = m? {
                let result = match request {
                    Request::RunJob(_) => {
                        orders.lock().map_err(|_| "lock")?.push((n, SystemTime::now()));
                        Ok(Reply::RunAccepted(RunAccepted { acceptance: Acceptance::Started }))
                    }
                    Request::ListRuns(_) => Ok(Reply::Runs(RunList::default())),
                    Request::Inventory(_) => Ok(Reply::Inventory(inv.clone())),
                    other => Err(format!("the simulated agent does not do {other:?}")),
                };
                c.send(Message::Text(AgentMsg::Response { id, result }.to_text().into())).await?;
            },
        }
    }
}

/// Job orders the simulated agents received: agent number and when.
type Orders = Arc<std::sync::Mutex<Vec<(usize, SystemTime)>>>;

/// CPU seconds the processes have used (user + system), together.
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .sum()
}

/// Schedule one job for every agent a few seconds ahead and time how long until each has
/// its order; count agents with none or more than one.
async fn dispatch(o: &Opts, http: &mut Http, auth: &str, orders: &Orders) -> Res<()> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let (_, _, body) = http
            .call(
                "GET",
                &format!("/api/v1/agents?limit=500&after={after}"),
                auth,
                None,
            )
            .await?;
        let page: serde_json::Value = serde_json::from_slice(&body)?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        // This process's own agents only (a split fleet has others).
        let own = o.first..o.first + o.agents;
        ids.extend(items.iter().filter_map(|a| {
            let n: usize = a["hostname"].as_str()?.strip_prefix("sim-")?.parse().ok()?;
            own.contains(&n).then_some(a["id"].as_i64()?)
        }));
        match page["next"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    if let Some(n) = o.runs {
        ids.truncate(n);
    }
    let (status, _, body) = http
        .call(
            "POST",
            "/api/v1/targets",
            auth,
            Some(r#"{"name":"sim","url":"/srv/sim"}"#),
        )
        .await?;
    if status != 201 {
        return Err(format!("target: {}", String::from_utf8_lossy(&body)).into());
    }
    let target = serde_json::from_slice::<serde_json::Value>(&body)?["id"].clone();
    // A whole second a few seconds ahead (schedules count in seconds).
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let fire = now + 6;
    let at = {
        let secs = fire % 86_400;
        let days = fire / 86_400;
        // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            secs / 3600,
            secs % 3600 / 60,
            secs % 60
        )
    };
    let job = serde_json::json!({"name": "fleet-wide", "spec": {
        "agents": ids, "source": "/dev/sda", "target_id": target,
        "schedule": {"kind": "once", "at": at, "timezone": "UTC"},
    }});
    let (status, _, body) = http
        .call("POST", "/api/v1/jobs", auth, Some(&job.to_string()))
        .await?;
    if status != 201 {
        return Err(format!("job: {}", String::from_utf8_lossy(&body)).into());
    }
    let fire_at = UNIX_EPOCH + Duration::from_secs(fire);
    while SystemTime::now() < fire_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu0 = cpu_seconds(&o.server_pids);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && orders.lock().map_err(|_| "lock")?.len() < ids.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // late doubles would show now
    let cpu = cpu_seconds(&o.server_pids) - cpu0;
    let got = orders.lock().map_err(|_| "lock")?.clone();
    let mut per_agent = std::collections::HashMap::new();
    for (n, _) in &got {
        *per_agent.entry(*n).or_insert(0usize) += 1;
    }
    let mut delays: Vec<f64> = got
        .iter()
        .map(|(_, t)| t.duration_since(fire_at).map_or(0.0, |d| d.as_secs_f64()))
        .collect();
    delays.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        delays
            .get(((delays.len() as f64 * p) as usize).min(delays.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "dispatch: {} of {} agents got the job; first {:.2} s, p50 {:.2} s, last {:.2} s after the start time; {} agents without, {} with more than one; server CPU {:.1} s; server RSS {}",
        per_agent.len(),
        ids.len(),
        pct(0.0),
        pct(0.5),
        pct(1.0),
        ids.len().saturating_sub(per_agent.len()),
        per_agent.values().filter(|&&c| c > 1).count(),
        cpu,
        rss_mib(&o.server_pids)
    );
    let doubled = per_agent.values().filter(|&&c| c > 1).count();
    if per_agent.len() < ids.len() || doubled > 0 {
        return Err(format!(
            "{} agents got no order and {doubled} more than one",
            ids.len() - per_agent.len().min(ids.len())
        )
        .into());
    }
    Ok(())
}

/// Each process's resident memory, joined by " + ".
fn rss_mib(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "n/a".into();
    }
    pids.iter()
        .map(|p| one_rss_mib(*p))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn one_rss_mib(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
        })
        .map(|kb| {
            format!(
                "{:.0} MiB",
                kb.trim_end_matches(" kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
            )
        })
        .unwrap_or_else(|| "n/a".into())
}

#[tokio::main]
async fn main() -> Res<()> {
    let o = Arc::new(opts()?);
    let mut http = Http::connect(&o, 0).await?;
    let (_, head, _) = http
        .call(
            "POST",
            "/api/v1/session",
            "",
            Some(&format!(
                "{{\"name\":\"admin\",\"password\":\"{}\"}}",
                o.password
            )),
        )
        .await?;
    // The session cookie and the CSRF cookie, whose value every write repeats in a header.
    let cookies: Vec<&str> = head
        .lines()
        .filter_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .filter_map(|c| c.split(';').next())
        .collect();
    let csrf = cookies
        .iter()
        .find_map(|c| c.strip_prefix("holdfast_csrf="))
        .ok_or("login failed: no CSRF cookie")?;
    let auth = format!("Cookie: {}\r\nx-csrf-token: {csrf}\r\n", cookies.join("; "));
    // A token enrols at most 10,000 machines: one per 10,000 agents.
    const PER_TOKEN: usize = 10_000;
    let mut tokens = Vec::new();
    for chunk in 0..o.agents.div_ceil(PER_TOKEN) {
        let uses = (o.agents - chunk * PER_TOKEN).min(PER_TOKEN);
        let (_, _, body) = http
            .call(
                "POST",
                "/api/v1/enrollment-tokens",
                &auth,
                Some(&format!("{{\"uses\":{uses}}}")),
            )
            .await?;
        let token = serde_json::from_slice::<serde_json::Value>(&body)?["secret"]
            .as_str()
            .ok_or_else(|| {
                format!(
                    "no enrolment token: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                )
            })?
            .to_owned();
        tokens.push(token);
    }

    let orders: Orders = Arc::default();
    let online = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let enrolling = Arc::new(tokio::sync::Semaphore::new(64));
    let start = Instant::now();
    for n in 0..o.agents {
        let (o, token, online, failed, enrolling, orders) = (
            o.clone(),
            tokens[n / PER_TOKEN].clone(),
            online.clone(),
            failed.clone(),
            enrolling.clone(),
            orders.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = agent(o, n, token, online, enrolling, orders).await {
                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("agent {n}: {e}");
                }
            }
        });
    }
    while online.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < o.agents {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "connected: {} agents ({} failed) in {:.1} s; server RSS {}",
        online.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        rss_mib(&o.server_pids)
    );
    let failed_now = failed.load(Ordering::Relaxed);
    if failed_now > 0 {
        return Err(format!("{failed_now} agents failed to connect").into());
    }

    if let Some(secs) = o.hold {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        return Ok(());
    }
    if o.dispatch {
        return dispatch(&o, &mut http, &auth, &orders).await;
    }

    // Agent listings at a fixed rate over 4 kept-alive connections, while agents stay on.
    let mut clients = Vec::new();
    for n in 0..4 {
        clients.push(Http::connect(&o, n).await?);
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Res<Duration>>(1024);
    let per_client = (o.rate as f64 / 4.0).max(0.1);
    let total = o.rate * o.seconds;
    for mut c in clients {
        let (tx, auth) = (tx.clone(), auth.clone());
        let count = total / 4;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_client));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..count {
                tick.tick().await;
                let t = Instant::now();
                let r = c.call("GET", "/api/v1/agents?limit=100", &auth, None).await;
                let r = match r {
                    Ok((200, _, _)) => Ok(t.elapsed()),
                    Ok((s, _, _)) => Err(format!("status {s}").into()),
                    Err(e) => Err(e),
                };
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let load_start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0usize;
    while let Some(r) = rx.recv().await {
        match r {
            Ok(d) => lat.push(d),
            Err(_) => errors += 1,
        }
    }
    let took = load_start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "listing: {} requests in {took:.1} s ({:.0}/s), {errors} errors; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; agents still online: {}; server RSS {}",
        lat.len(),
        lat.len() as f64 / took,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        online.load(Ordering::Relaxed) - failed.load(Ordering::Relaxed).min(online.load(Ordering::Relaxed)),
        rss_mib(&o.server_pids)
    );
    if errors > 0 {
        return Err(format!("{errors} listing requests failed").into());
    }
    Ok(())
}
