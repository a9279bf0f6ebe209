//! Files out of images for the server: folder listings (a child `image ls`), and downloads
//! (a child `image export` to its standard output, passed to the server in data frames as
//! it comes). A download stays at most [`STREAM_WINDOW`] bytes ahead of what the server
//! acknowledged, so a slow browser slows the export instead of filling memory; a stop from
//! the server, or a lost channel, kills the child.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use holdfast_proto::request::{BrowseImage, ExportFiles, ExportStarted};
use holdfast_proto::{data_frame, AgentMsg, ImageRef, Listing, Reply, STREAM_CHUNK, STREAM_WINDOW};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::jobs::{join, Jobs};
use crate::image_cmd::browse::Listed;

/// Frames queued for the channel across all streams.
const QUEUE: usize = 16;

/// The `--image` and `--partition` arguments of a child for `image`.
fn point_args(image: &ImageRef) -> Vec<String> {
    let mut args = vec!["--image".to_owned(), join(&image.target.url, &image.name)];
    if let Some(p) = image.partition {
        args.extend(["--partition".to_owned(), p.to_string()]);
    }
    args
}

/// List a folder of an image point.
pub async fn browse(jobs: &Jobs, r: &BrowseImage) -> Result<Listing> {
    let mut args = vec!["image".to_owned(), "ls".to_owned()];
    args.extend(point_args(&r.image));
    if r.total {
        args.push("--total".to_owned());
    }
    // After `--`: a path that starts with a dash is still a path.
    args.extend(["--".to_owned(), r.path.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listed: Listed = jobs
        .child_json(&r.image.target, r.image.password.as_ref(), &args)
        .await?;
    Ok(listed.listing)
}

/// One download under way: how far the server has acknowledged it, and whether it wants
/// it stopped.
struct Flow {
    acked: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

/// The downloads of one channel, and the frames they send (in order: each stream's answer,
/// data frames, end).
pub struct Streams {
    flows: Mutex<HashMap<u64, Flow>>,
    out: mpsc::Sender<Message>,
}

impl Streams {
    /// Streams sending on a new queue; the session sends what arrives on the receiver.
    pub fn new() -> (Arc<Self>, mpsc::Receiver<Message>) {
        let (out, rx) = mpsc::channel(QUEUE);
        (
            Arc::new(Self {
                flows: Mutex::default(),
                out,
            }),
            rx,
        )
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Flow>> {
        self.flows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server has passed on `bytes` of stream `id`.
    pub fn ack(&self, id: u64, bytes: u64) {
        if let Some(f) = self.flows().get(&id) {
            f.acked.send_if_modified(|a| {
                let grew = bytes > *a;
                *a = (*a).max(bytes);
                grew
            });
        }
    }

    /// The server no longer wants stream `id`.
    pub fn stop(&self, id: u64) {
        if let Some(f) = self.flows().remove(&id) {
            let _ = f.stop.send(true);
        }
    }

    /// Stop every stream (the channel is gone).
    pub fn stop_all(&self) {
        for (_, f) in self.flows().drain() {
            let _ = f.stop.send(true);
        }
    }

    async fn send(&self, msg: &AgentMsg) -> bool {
        self.out
            .send(Message::Text(msg.to_text().into()))
            .await
            .is_ok()
    }

    /// Answer export request `id`: from a task, so the channel goes on meanwhile.
    pub fn export(self: &Arc<Self>, jobs: &Arc<Jobs>, id: u64, r: ExportFiles) {
        let (acked, acked_rx) = watch::channel(0);
        let (stop, stop_rx) = watch::channel(false);
        self.flows().insert(id, Flow { acked, stop });
        let (streams, jobs) = (self.clone(), jobs.clone());
        tokio::spawn(async move {
            let end = streams.run_export(&jobs, id, r, acked_rx, stop_rx).await;
            let live = streams.flows().remove(&id).is_some();
            match end {
                // Stopped by the server: it has forgotten the stream.
                _ if !live => {}
                Err(Stage::Before(why)) => {
                    let result = Err(why);
                    streams.send(&AgentMsg::Response { id, result }).await;
                }
                Err(Stage::During(why)) => {
                    let error = Some(why);
                    streams.send(&AgentMsg::StreamEnd { id, error }).await;
                }
                Ok(()) => {
                    streams.send(&AgentMsg::StreamEnd { id, error: None }).await;
                }
            }
        });
    }

    async fn run_export(
        &self,
        jobs: &Jobs,
        id: u64,
        r: ExportFiles,
        mut acked: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Stage> {
        let work = jobs.work_dir("export").map_err(Stage::before)?;
        let result = async {
            let mut cmd = jobs
                .target_command(&r.image.target, &work)
                .map_err(Stage::before)?;
            if let Some(p) = &r.image.password {
                cmd.env(crate::secret::PASSWORD_ENV, p.expose());
            }
            cmd.args(["image", "export", "--format", r.format.as_str(), "--output", "-"])
                .args(point_args(&r.image))
                .arg("--")
                .args(&r.paths);
            let mut child = cmd
                .spawn()
                .map_err(|e| Stage::Before(format!("cannot run the agent's own binary: {e}")))?;
            let mut stdout = child
                .stdout
                .take()
                .ok_or_else(|| Stage::Before("the export has no output".into()))?;
            let stderr = child.stderr.take();
            let errors = tokio::spawn(async move {
                let mut text = Vec::new();
                if let Some(mut e) = stderr {
                    let _ = e.read_to_end(&mut text).await;
                }
                text
            });
            let mut buf = vec![0u8; STREAM_CHUNK];
            let mut sent = 0u64;
            let mut started = false;
            loop {
                let n = tokio::select! {
                    n = stdout.read(&mut buf) => n.map_err(|e| Stage::During(format!("cannot read the export: {e}")))?,
                    _ = stop.changed() => return Err(Stage::During("stopped".into())),
                };
                if n == 0 {
                    break;
                }
                if !started {
                    started = true;
                    let result = Ok(Reply::ExportStarted(ExportStarted {}));
                    if !self.send(&AgentMsg::Response { id, result }).await {
                        return Err(Stage::During("the channel closed".into()));
                    }
                }
                // Wait for room in the window.
                while sent.saturating_sub(*acked.borrow()) >= STREAM_WINDOW {
                    tokio::select! {
                        c = acked.changed() => c.map_err(|_| Stage::During("stopped".into()))?,
                        _ = stop.changed() => return Err(Stage::During("stopped".into())),
                    }
                }
                if self
                    .out
                    .send(Message::Binary(data_frame(id, &buf[..n]).into()))
                    .await
                    .is_err()
                {
                    return Err(Stage::During("the channel closed".into()));
                }
                sent += n as u64;
            }
            let status = child
                .wait()
                .await
                .map_err(|e| Stage::During(format!("the export did not end: {e}")))?;
            let said = errors.await.unwrap_or_default();
            if status.success() {
                if !started {
                    // An empty file: nothing to send but the answer.
                    let result = Ok(Reply::ExportStarted(ExportStarted {}));
                    self.send(&AgentMsg::Response { id, result }).await;
                }
                return Ok(());
            }
            let out = std::process::Output {
                status,
                stdout: Vec::new(),
                stderr: said,
            };
            let why = crate::outcome::failure("image export", &out);
            let why = why
                .strip_prefix("holdfast-agent: error: ")
                .unwrap_or(&why)
                .to_owned();
            Err(if started {
                Stage::During(why)
            } else {
                Stage::Before(why)
            })
        }
        .await;
        let _ = std::fs::remove_dir_all(&work);
        result
    }
}

/// Where an export failed: before its first byte (the request fails) or after (the stream
/// ends with the error).
enum Stage {
    Before(String),
    During(String),
}

impl Stage {
    fn before(e: anyhow::Error) -> Self {
        Self::Before(format!("{e:#}"))
    }
}
