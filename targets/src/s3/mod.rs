//! S3 and S3-compatible object storage (AWS, SeaweedFS, MinIO, Ceph RGW, …) over HTTP(S), signed
//! with SigV4.
//!
//! Uploads are all-or-nothing by the protocol's own means: a body that fits one part is one
//! `PutObject`; a larger one is a multipart upload whose object appears only when
//! `CompleteMultipartUpload` succeeds, and which is aborted (its parts freed) on any failure.
//! Every part carries its SHA-256 (`x-amz-checksum-sha256` and the signed payload hash), so
//! the server refuses a part changed on the way. Folders are key prefixes: they exist as soon
//! as an object lies under them, and [`Target::mkdirs`] has nothing to do.
//!
//! On a bucket with Object Lock, [`S3Target::with_retention`] gives every image written a
//! retention period; [`Target::delete`] removes the object's current version (not just hides it
//! behind a delete marker), which the bucket refuses while that version is locked.

mod sigv4;
mod xml;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::io::AsyncReadExt as _;
use zeroize::Zeroizing;

use crate::error::TargetError;
use crate::location::Credentials;
use crate::s3config::valid_bucket;
pub use crate::s3config::{LockMode, ObjectLock, S3Config};
use crate::{Body, ByteStream, ObjectKey, ObjectMeta, Target, TargetCaps};

pub use xml::{DefaultRetention, LockConfiguration, LockRule};

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One request gets this long to be sent and answered (a part of 512 MiB at 2 MB/s fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Error documents are small; anything longer is cut.
const MAX_ERROR_BODY: usize = 64 << 10;
/// S3 allows at most this many parts in one upload.
const MAX_PARTS: u32 = 10_000;
/// Bytes of parts held in memory at once (being read, or in flight).
const IN_FLIGHT_BYTES: usize = 64 << 20;

/// Size of part `number` (1-based): 16 MiB, doubling every 1,250 parts up to 512 MiB, so
/// 10,000 parts hold about 2.4 TiB while small images use small parts. Every part but the last
/// must be at least 5 MiB.
fn part_size(number: u32) -> usize {
    let doublings = (number.saturating_sub(1) / 1_250).min(5);
    (16 << 20) << doublings
}

/// An S3 bucket (or a folder in it).
#[derive(Clone)]
pub struct S3Target {
    inner: Arc<Inner>,
    retention: Option<ObjectLock>,
}

struct Inner {
    display: String,
    https: bool,
    /// `host[:port]` of requests (with the bucket in front when virtual-hosted).
    authority: String,
    /// Path in front of keys: `/bucket` when path-style, empty otherwise.
    bucket_path: String,
    prefix: String,
    signer: sigv4::Signer,
    client: HttpClient,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("target", &self.inner.display)
            .finish_non_exhaustive()
    }
}

/// An unsuccessful answer: its status and the code and message of its error document.
struct Failure {
    status: StatusCode,
    code: String,
    message: String,
}

impl S3Target {
    /// A target for `config`, signing with the access key (`creds.user`) and secret key
    /// (`creds.password`); HTTPS certificates are checked against `creds.ca_file` (or the
    /// public web roots).
    pub fn new(config: &S3Config, creds: Credentials) -> Result<Self, TargetError> {
        let access_key = creds
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                TargetError::Invalid("S3 needs an access key id (the credentials' user)".into())
            })?;
        let secret_key = creds
            .password
            .clone()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                TargetError::Invalid(
                    "S3 needs a secret access key (the credentials' password)".into(),
                )
            })?;
        let endpoint = url::Url::parse(&config.endpoint).map_err(|e| {
            TargetError::Invalid(format!(
                "S3 endpoint '{}' is not a URL: {e}",
                config.endpoint
            ))
        })?;
        let https = match endpoint.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(TargetError::Invalid(format!(
                    "S3 endpoint '{}': scheme {other} (http or https)",
                    config.endpoint
                )))
            }
        };
        let host = endpoint
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                TargetError::Invalid(format!("S3 endpoint '{}' has no host", config.endpoint))
            })?;
        let host = match endpoint.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        if !valid_bucket(&config.bucket) {
            return Err(TargetError::Invalid(format!(
                "'{}' is not a valid bucket name (3–63 characters: lower-case letters, digits, '.', '-')",
                config.bucket
            )));
        }
        let (authority, bucket_path) = if config.path_style {
            (host, format!("/{}", config.bucket))
        } else {
            (format!("{}.{host}", config.bucket), String::new())
        };
        let tls = crate::tls::client_config(creds.ca_file.as_ref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(20)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let prefix = config.prefix.trim_matches('/').to_owned();
        let display = format!("s3://{}/{prefix}", config.bucket);
        Ok(Self {
            inner: Arc::new(Inner {
                display,
                https,
                authority,
                bucket_path,
                prefix,
                signer: sigv4::Signer {
                    access_key,
                    secret_key: Zeroizing::new(secret_key.as_str().to_owned()),
                    region: config.region.clone(),
                },
                client,
            }),
            retention: None,
        })
    }

    /// Lock every object written from now on for `retention` (the bucket must have Object
    /// Lock enabled, or uploads are refused).
    pub fn with_retention(mut self, retention: ObjectLock) -> Self {
        self.retention = Some(retention);
        self
    }

    /// Names of the unfinished multipart uploads in this folder and below (parts stored,
    /// object never completed): an upload cut off where no abort could reach the server.
    pub async fn unfinished_uploads(&self) -> Result<Vec<String>, TargetError> {
        let prefix = match self.inner.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let uploads = self.inner.unfinished_uploads(&prefix).await?;
        Ok(uploads
            .into_iter()
            .map(|u| u.key.strip_prefix(&prefix).unwrap_or(&u.key).to_owned())
            .collect())
    }

    /// The version id of `key`'s current version (None on a bucket without versioning).
    pub async fn current_version(&self, key: &ObjectKey) -> Result<Option<String>, TargetError> {
        self.inner.head(key).await.map(|(_, version)| version)
    }

    /// Send `DeleteObject` for `version` of `key` (the current one when None) without asking
    /// about locks first: the bucket decides. On a versioned (Object Lock) bucket a DELETE
    /// without a version only hides the object behind a delete marker, so
    /// [`Target::delete`] names the version, which a lock refuses.
    pub async fn delete_version(
        &self,
        key: &ObjectKey,
        version: Option<&str>,
    ) -> Result<(), TargetError> {
        let object = self.inner.object(key);
        let query: Vec<(&str, String)> = version
            .map(|v| ("versionId", v.to_owned()))
            .into_iter()
            .collect();
        self.inner
            .call(
                "delete",
                key.as_str(),
                Method::DELETE,
                Some(&object),
                &query,
                Vec::new(),
                Bytes::new(),
            )
            .await
            .map(drop)
    }

    /// Create the bucket, with Object Lock (and so versioning) when `object_lock` — which
    /// only works at creation. An existing bucket of ours is fine.
    pub async fn create_bucket(&self, object_lock: bool) -> Result<(), TargetError> {
        let mut headers = Vec::new();
        if object_lock {
            headers.push((
                "x-amz-bucket-object-lock-enabled".to_owned(),
                "true".to_owned(),
            ));
        }
        // AWS wants the region named, except for its first one.
        let body = match self.inner.signer.region.as_str() {
            "us-east-1" => Bytes::new(),
            region => Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
            )),
        };
        let resp = self
            .inner
            .send(
                "create the bucket",
                "",
                Method::PUT,
                None,
                &[],
                headers,
                body,
            )
            .await?;
        match self.inner.check(resp).await {
            Ok(_) => Ok(()),
            Err(f) if f.code == "BucketAlreadyOwnedByYou" => Ok(()),
            Err(f) => Err(self.inner.classify("create the bucket", "", f)),
        }
    }

    /// The bucket's Object Lock configuration: `None` when the bucket has no Object Lock.
    pub async fn lock_configuration(&self) -> Result<Option<LockConfiguration>, TargetError> {
        let resp = self
            .inner
            .send(
                "read the lock configuration of",
                "",
                Method::GET,
                None,
                &[("object-lock", String::new())],
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match self.inner.check(resp).await {
            Ok(resp) => {
                let config: LockConfiguration = self
                    .inner
                    .answer(
                        resp,
                        "read the lock configuration of",
                        "",
                        "object lock configuration",
                    )
                    .await?;
                Ok(config
                    .object_lock_enabled
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case("enabled"))
                    .then_some(config))
            }
            Err(f)
                if f.status == StatusCode::NOT_FOUND
                    || f.code == "ObjectLockConfigurationNotFoundError" =>
            {
                Ok(None)
            }
            Err(f) => Err(self.inner.classify("read the lock configuration of", "", f)),
        }
    }

    /// When the current version of `key` may be deleted: `None` when it is not locked.
    pub async fn locked_until(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, TargetError> {
        let object = self.inner.object(key);
        let resp = self
            .inner
            .send(
                "read the retention of",
                key.as_str(),
                Method::GET,
                Some(&object),
                &[("retention", String::new())],
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        match self.inner.check(resp).await {
            Ok(resp) => {
                let r: xml::Retention = self
                    .inner
                    .answer(
                        resp,
                        "read the retention of",
                        key.as_str(),
                        "object retention",
                    )
                    .await?;
                let until = match r.retain_until_date {
                    Some(text) => chrono::DateTime::parse_from_rfc3339(&text)
                        .map_err(|e| {
                            self.inner.permanent(
                                "read the retention of",
                                key.as_str(),
                                format!("retain-until date '{text}': {e}"),
                            )
                        })?
                        .with_timezone(&chrono::Utc),
                    None => return Ok(None),
                };
                Ok((until > chrono::Utc::now()).then_some(until))
            }
            Err(f) if f.status == StatusCode::NOT_FOUND && f.code != "NoSuchKey" => Ok(None),
            Err(f) if f.code == "NoSuchObjectLockConfiguration" => Ok(None),
            Err(f) => Err(self
                .inner
                .classify("read the retention of", key.as_str(), f)),
        }
    }
}

/// Read a response body of at most `limit` bytes.
async fn read_body(resp: Response<Incoming>, limit: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(resp.into_body(), limit);
    limited
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading the answer: {e}"))
}

/// Read up to `size` bytes from `body` (fewer only at its end).
async fn read_part(body: &mut Body, size: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(size);
    let mut filled = 0;
    while filled < size {
        let n = body.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

fn header_str(resp: &Response<Incoming>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Inner {
    /// The object key of `key` under the prefix.
    fn object(&self, key: &ObjectKey) -> String {
        if self.prefix.is_empty() {
            key.as_str().to_owned()
        } else {
            format!("{}/{}", self.prefix, key.as_str())
        }
    }

    fn permanent(&self, op: &'static str, key: &str, detail: impl Into<String>) -> TargetError {
        TargetError::Permanent {
            target: self.display.clone(),
            op,
            key: key.to_owned(),
            detail: detail.into(),
        }
    }

    fn transient(&self, op: &'static str, key: &str, detail: impl Into<String>) -> TargetError {
        TargetError::Transient {
            target: self.display.clone(),
            op,
            key: key.to_owned(),
            detail: detail.into(),
        }
    }

    /// Sign and send one request; `object` is the full object key (None: the bucket).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        op: &'static str,
        key: &str,
        method: Method,
        object: Option<&str>,
        query: &[(&str, String)],
        mut headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<Response<Incoming>, TargetError> {
        let path = match object {
            Some(o) => format!("{}/{}", self.bucket_path, sigv4::uri_encode(o, true)),
            None if self.bucket_path.is_empty() => "/".to_owned(),
            None => self.bucket_path.clone(),
        };
        let query = sigv4::canonical_query(query);
        let payload_sha256 = if body.is_empty() {
            sigv4::EMPTY_SHA256.to_owned()
        } else {
            sigv4::sha256_hex(&body)
        };
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        headers.push(("host".into(), self.authority.clone()));
        headers.push(("x-amz-date".into(), amz_date.clone()));
        headers.push(("x-amz-content-sha256".into(), payload_sha256.clone()));
        let authorization = self.signer.authorization(
            method.as_str(),
            &path,
            &query,
            &headers,
            &payload_sha256,
            &amz_date,
        );
        let scheme = if self.https { "https" } else { "http" };
        let uri = if query.is_empty() {
            format!("{scheme}://{}{path}", self.authority)
        } else {
            format!("{scheme}://{}{path}?{query}", self.authority)
        };
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .header("authorization", authorization)
            .header("content-length", body.len())
            .body(Full::new(body))
            .map_err(|e| {
                TargetError::Invalid(format!("{}: request for '{key}': {e}", self.display))
            })?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // The connection error's cause says what happened (refused, reset, TLS).
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail = format!("{detail}: {s}");
                    source = s.source();
                }
                Err(self.transient(op, key, detail))
            }
            Err(_) => Err(self.transient(
                op,
                key,
                format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            )),
        }
    }

    /// A successful response, or what went wrong (with the error document's code).
    async fn check(&self, resp: Response<Incoming>) -> Result<Response<Incoming>, Failure> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_body(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        let doc: Option<xml::ErrorDoc> = xml::parse("error", &body).ok();
        Err(Failure {
            status,
            code: doc.as_ref().map(|d| d.code.clone()).unwrap_or_default(),
            message: doc.map(|d| d.message).unwrap_or_default(),
        })
    }

    fn classify(&self, op: &'static str, key: &str, f: Failure) -> TargetError {
        let (target, k) = (self.display.clone(), key.to_owned());
        let detail = match (f.code.is_empty(), f.message.is_empty()) {
            (true, _) => format!("HTTP {}", f.status),
            (false, true) => format!("HTTP {}: {}", f.status, f.code),
            (false, false) => format!("HTTP {}: {}: {}", f.status, f.code, f.message),
        };
        match (f.status.as_u16(), f.code.as_str()) {
            (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch") => TargetError::Auth {
                target,
                user: self.signer.access_key.clone(),
            },
            // A HEAD answer has no body to say why; a refused HEAD is a refused login.
            (403, "") => TargetError::Auth {
                target,
                user: self.signer.access_key.clone(),
            },
            (404, "NoSuchBucket") => TargetError::Permanent {
                target,
                op,
                key: k,
                detail: "the bucket does not exist".into(),
            },
            (404, _) => TargetError::NotFound { target, key: k },
            (_, "EntityTooLarge" | "QuotaExceeded") => TargetError::Full { target, key: k },
            (408 | 429 | 500 | 502 | 503 | 504, _)
            | (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                TargetError::Transient {
                    target,
                    op,
                    key: k,
                    detail,
                }
            }
            (416, _) => TargetError::Permanent {
                target,
                op,
                key: k,
                detail: format!("the range is past the end of the object ({detail})"),
            },
            _ => TargetError::Permanent {
                target,
                op,
                key: k,
                detail,
            },
        }
    }

    /// A successful answer's XML document (at most 16 MiB: a listing page) as `T`; a cut
    /// connection is transient, a document that is not one is permanent.
    async fn answer<T: for<'de> serde::Deserialize<'de>>(
        &self,
        resp: Response<Incoming>,
        op: &'static str,
        key: &str,
        what: &str,
    ) -> Result<T, TargetError> {
        let doc = read_body(resp, 16 << 20)
            .await
            .map_err(|d| self.transient(op, key, d))?;
        xml::parse(what, &doc).map_err(|d| self.permanent(op, key, d))
    }

    /// Send, and turn an unsuccessful answer into an error.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        op: &'static str,
        key: &str,
        method: Method,
        object: Option<&str>,
        query: &[(&str, String)],
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<Response<Incoming>, TargetError> {
        let resp = self
            .send(op, key, method, object, query, headers, body)
            .await?;
        self.check(resp)
            .await
            .map_err(|f| self.classify(op, key, f))
    }

    /// Size and version id of an object.
    async fn head(&self, key: &ObjectKey) -> Result<(u64, Option<String>), TargetError> {
        let object = self.object(key);
        let resp = self
            .call(
                "read the size of",
                key.as_str(),
                Method::HEAD,
                Some(&object),
                &[],
                Vec::new(),
                Bytes::new(),
            )
            .await?;
        let size = header_str(&resp, "content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                self.permanent("read the size of", key.as_str(), "the answer has no size")
            })?;
        let version = header_str(&resp, "x-amz-version-id").filter(|v| v != "null");
        Ok((size, version))
    }

    /// Headers that lock a new object, when a retention is set.
    fn lock_headers(retention: Option<ObjectLock>) -> Vec<(String, String)> {
        let Some(r) = retention else {
            return Vec::new();
        };
        let until = chrono::Utc::now()
            + chrono::Duration::from_std(r.period).unwrap_or(chrono::Duration::MAX);
        vec![
            ("x-amz-object-lock-mode".into(), r.mode.header().into()),
            (
                "x-amz-object-lock-retain-until-date".into(),
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        ]
    }

    /// One part, or a whole small object, with its checksum.
    async fn put_piece(
        &self,
        key: &ObjectKey,
        object: &str,
        query: &[(&str, String)],
        mut headers: Vec<(String, String)>,
        data: Bytes,
    ) -> Result<(String, String), TargetError> {
        let sha256 = base64::engine::general_purpose::STANDARD
            .encode(ring::digest::digest(&ring::digest::SHA256, &data));
        headers.push(("x-amz-checksum-sha256".into(), sha256.clone()));
        let resp = self
            .call(
                "upload",
                key.as_str(),
                Method::PUT,
                Some(object),
                query,
                headers,
                data,
            )
            .await?;
        let etag = header_str(&resp, "etag").unwrap_or_default();
        Ok((etag, sha256))
    }

    async fn put(
        self: &Arc<Self>,
        key: &ObjectKey,
        mut body: Body,
        overwrite: bool,
        retention: Option<ObjectLock>,
    ) -> Result<u64, TargetError> {
        let object = self.object(key);
        if !overwrite {
            match self.head(key).await {
                Ok(_) => {
                    return Err(TargetError::Exists {
                        target: self.display.clone(),
                        key: key.to_string(),
                    })
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let body_error = |e: std::io::Error| {
            self.permanent("upload", key.as_str(), format!("reading the image: {e}"))
        };
        let first = read_part(&mut body, part_size(1))
            .await
            .map_err(body_error)?;
        if first.len() < part_size(1) {
            let len = first.len() as u64;
            self.put_piece(key, &object, &[], Self::lock_headers(retention), first)
                .await?;
            return Ok(len);
        }
        // An upload of this name an earlier run left unfinished (killed agent, lost link)
        // still holds its parts on the server, invisibly: free them.
        for stale in self.unfinished_uploads(&object).await? {
            if stale.key == object {
                self.abort(key, &object, &stale.upload_id).await?;
            }
        }
        let mut headers = Self::lock_headers(retention);
        headers.push(("x-amz-checksum-algorithm".into(), "SHA256".into()));
        let resp = self
            .call(
                "upload",
                key.as_str(),
                Method::POST,
                Some(&object),
                &[("uploads", String::new())],
                headers,
                Bytes::new(),
            )
            .await?;
        let started: xml::MultipartStarted = self
            .answer(resp, "upload", key.as_str(), "start of a multipart upload")
            .await?;
        let upload_id = started.upload_id;
        let result = match self.put_parts(key, &object, &upload_id, first, body).await {
            Ok((parts, len)) => self
                .complete(key, &object, &upload_id, &parts)
                .await
                .map(|()| len),
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Free the parts already stored; the object never appeared. When the server is
            // out of reach, the next upload of this name frees them.
            let _ = self.abort(key, &object, &upload_id).await;
        }
        result
    }

    async fn abort(
        &self,
        key: &ObjectKey,
        object: &str,
        upload_id: &str,
    ) -> Result<(), TargetError> {
        let query = [("uploadId", upload_id.to_owned())];
        match self
            .call(
                "abort the upload of",
                key.as_str(),
                Method::DELETE,
                Some(object),
                &query,
                Vec::new(),
                Bytes::new(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Multipart uploads under `prefix` that were started and neither completed nor aborted.
    async fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<xml::Upload>, TargetError> {
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = vec![("uploads", String::new()), ("prefix", prefix.to_owned())];
            if let Some((k, u)) = markers.take() {
                query.push(("key-marker", k));
                query.push(("upload-id-marker", u));
            }
            let resp = self
                .call(
                    "list unfinished uploads of",
                    prefix,
                    Method::GET,
                    None,
                    &query,
                    Vec::new(),
                    Bytes::new(),
                )
                .await?;
            let page: xml::UploadsPage = self
                .answer(
                    resp,
                    "list unfinished uploads of",
                    prefix,
                    "unfinished uploads",
                )
                .await?;
            uploads.extend(page.uploads);
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(k), Some(u)) => markers = Some((k, u)),
                _ => break,
            }
        }
        Ok(uploads)
    }

    /// Upload the parts of a multipart upload, a few at a time, reading the next while
    /// earlier ones are sent. Returns (number, ETag, checksum) of every part and the length.
    async fn put_parts(
        self: &Arc<Self>,
        key: &ObjectKey,
        object: &str,
        upload_id: &str,
        first: Bytes,
        mut body: Body,
    ) -> Result<(Vec<(u32, String, String)>, u64), TargetError> {
        let mut in_flight = tokio::task::JoinSet::new();
        let mut in_flight_bytes = 0usize;
        let mut done = Vec::new();
        let mut total = 0u64;
        let mut number = 1u32;
        let mut next = first;
        loop {
            while in_flight_bytes + next.len() > IN_FLIGHT_BYTES && !in_flight.is_empty() {
                let (n, len, etag, sha) = self.joined(key, in_flight.join_next().await)?;
                in_flight_bytes -= len;
                done.push((n, etag, sha));
            }
            total += next.len() as u64;
            in_flight_bytes += next.len();
            let len = next.len();
            let (me, k, o, id, data) = (
                Arc::clone(self),
                key.clone(),
                object.to_owned(),
                upload_id.to_owned(),
                next,
            );
            in_flight.spawn(async move {
                let query = [("partNumber", number.to_string()), ("uploadId", id)];
                me.put_piece(&k, &o, &query, Vec::new(), data)
                    .await
                    .map(|(etag, sha)| (number, len, etag, sha))
            });
            if len < part_size(number) {
                break;
            }
            number += 1;
            next = read_part(&mut body, part_size(number)).await.map_err(|e| {
                self.permanent("upload", key.as_str(), format!("reading the image: {e}"))
            })?;
            if next.is_empty() {
                break;
            }
            if number > MAX_PARTS {
                return Err(self.permanent(
                    "upload",
                    key.as_str(),
                    "the image is larger than 10,000 parts hold (about 2.4 TiB): split it (--split)",
                ));
            }
        }
        while let Some(joined) = in_flight.join_next().await {
            let (n, _, etag, sha) = self.joined(key, Some(joined))?;
            done.push((n, etag, sha));
        }
        done.sort_by_key(|(n, _, _)| *n);
        Ok((done, total))
    }

    #[allow(clippy::type_complexity)]
    fn joined(
        &self,
        key: &ObjectKey,
        joined: Option<
            Result<Result<(u32, usize, String, String), TargetError>, tokio::task::JoinError>,
        >,
    ) -> Result<(u32, usize, String, String), TargetError> {
        match joined {
            Some(Ok(result)) => result,
            Some(Err(e)) => {
                Err(self.permanent("upload", key.as_str(), format!("part upload ended: {e}")))
            }
            None => Err(self.permanent("upload", key.as_str(), "no part upload was running")),
        }
    }

    async fn complete(
        &self,
        key: &ObjectKey,
        object: &str,
        upload_id: &str,
        parts: &[(u32, String, String)],
    ) -> Result<(), TargetError> {
        let body = Bytes::from(xml::complete_body(parts));
        let resp = self
            .call(
                "upload",
                key.as_str(),
                Method::POST,
                Some(object),
                &[("uploadId", upload_id.to_owned())],
                Vec::new(),
                body,
            )
            .await?;
        // A failed completion may still answer 200, with an error document as its body.
        let doc = read_body(resp, MAX_ERROR_BODY)
            .await
            .map_err(|d| self.transient("upload", key.as_str(), d))?;
        if let Ok(e) = xml::parse::<xml::ErrorDoc>("error", &doc) {
            return Err(self.classify(
                "upload",
                key.as_str(),
                Failure {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: e.code,
                    message: e.message,
                },
            ));
        }
        Ok(())
    }

    /// GET a range; checks the answer covers exactly the range before returning it.
    async fn get(
        &self,
        key: &ObjectKey,
        range: &Range<u64>,
    ) -> Result<Response<Incoming>, TargetError> {
        let object = self.object(key);
        let headers = vec![(
            "range".to_owned(),
            format!("bytes={}-{}", range.start, range.end - 1),
        )];
        let resp = self
            .call(
                "read",
                key.as_str(),
                Method::GET,
                Some(&object),
                &[],
                headers,
                Bytes::new(),
            )
            .await?;
        let len = header_str(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
        let whole = header_str(&resp, "content-range")
            .and_then(|v| v.rsplit('/').next().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        if resp.status() != StatusCode::PARTIAL_CONTENT || len != Some(range.end - range.start) {
            return Err(self.permanent(
                "read",
                key.as_str(),
                format!(
                    "bytes {}..{} are past the end of the object ({whole} bytes)",
                    range.start, range.end
                ),
            ));
        }
        Ok(resp)
    }
}

#[async_trait]
impl Target for S3Target {
    fn caps(&self) -> TargetCaps {
        TargetCaps {
            display: self.inner.display.clone(),
            max_connections: 8,
            // One GET streamed front to back costs one request instead of one per range.
            stream_reads: true,
        }
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        self.inner.put(key, body, overwrite, self.retention).await
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        if range.is_empty() {
            self.inner.head(key).await?;
            return Ok(Bytes::new());
        }
        let resp = self.inner.get(key, &range).await?;
        let len = (range.end - range.start) as usize;
        let data = read_body(resp, len)
            .await
            .map_err(|d| self.inner.transient("read", key.as_str(), d))?;
        if data.len() != len {
            return Err(self.inner.transient(
                "read",
                key.as_str(),
                format!("the answer ended after {} of {len} bytes", data.len()),
            ));
        }
        Ok(data)
    }

    async fn read_stream(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<ByteStream, TargetError> {
        enum State {
            Start(Arc<Inner>, ObjectKey, Range<u64>),
            Body(Arc<Inner>, ObjectKey, Incoming, u64),
            Done,
        }
        let start = State::Start(Arc::clone(&self.inner), key.clone(), range);
        let stream = futures_util::stream::unfold(start, |state| async move {
            let (inner, key, mut body, left) = match state {
                State::Done => return None,
                State::Start(_, _, range) if range.is_empty() => return None,
                State::Start(inner, key, range) => match inner.get(&key, &range).await {
                    Ok(resp) => (inner, key, resp.into_body(), range.end - range.start),
                    Err(e) => return Some((Err(e), State::Done)),
                },
                State::Body(inner, key, body, left) => (inner, key, body, left),
            };
            loop {
                if left == 0 {
                    return None;
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        let taken = data.len() as u64;
                        if taken > left {
                            let e = inner.permanent(
                                "read",
                                key.as_str(),
                                "the answer is longer than the range",
                            );
                            return Some((Err(e), State::Done));
                        }
                        return Some((Ok(data), State::Body(inner, key, body, left - taken)));
                    }
                    Some(Err(e)) => {
                        let e = inner.transient("read", key.as_str(), e.to_string());
                        return Some((Err(e), State::Done));
                    }
                    None => {
                        let e = inner.transient(
                            "read",
                            key.as_str(),
                            format!("the answer ended {left} bytes before the range's end"),
                        );
                        return Some((Err(e), State::Done));
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        self.inner.head(key).await.map(|(size, _)| size)
    }

    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        let inner = &self.inner;
        let shown = dir.map(ObjectKey::as_str).unwrap_or("");
        let prefix = match dir {
            Some(d) => format!("{}/", inner.object(d)),
            None if inner.prefix.is_empty() => String::new(),
            None => format!("{}/", inner.prefix),
        };
        let mut entries = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_owned()),
                ("delimiter", "/".to_owned()),
                ("prefix", prefix.clone()),
            ];
            if let Some(t) = token.take() {
                query.push(("continuation-token", t));
            }
            let resp = inner
                .call(
                    "list",
                    shown,
                    Method::GET,
                    None,
                    &query,
                    Vec::new(),
                    Bytes::new(),
                )
                .await?;
            let page: xml::ListPage = inner.answer(resp, "list", shown, "listing").await?;
            for o in page.contents {
                let name = o.key.strip_prefix(&prefix).unwrap_or(&o.key);
                // A zero-byte "folder/" object made by other tools names the folder itself.
                if !name.is_empty() && !name.contains('/') {
                    entries.push(ObjectMeta {
                        name: name.to_owned(),
                        size: o.size,
                        is_dir: false,
                    });
                }
            }
            for p in page.common_prefixes {
                let name = p.prefix.strip_prefix(&prefix).unwrap_or(&p.prefix);
                let name = name.trim_end_matches('/');
                if !name.is_empty() {
                    entries.push(ObjectMeta {
                        name: name.to_owned(),
                        size: 0,
                        is_dir: true,
                    });
                }
            }
            match page.next_continuation_token {
                Some(t) if page.is_truncated => token = Some(t),
                _ => break,
            }
        }
        Ok(entries)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        // S3 answers a DELETE of a missing key with success: ask first, as the contract says.
        let (_, version) = self.inner.head(key).await?;
        if version.is_some() {
            // Say why the bucket will refuse, and until when.
            if let Some(until) = self.locked_until(key).await? {
                return Err(TargetError::Locked {
                    target: self.inner.display.clone(),
                    key: key.to_string(),
                    until: until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
            }
        }
        self.delete_version(key, version.as_deref()).await
    }

    async fn mkdirs(&self, _dir: &ObjectKey) -> Result<(), TargetError> {
        Ok(())
    }

    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_to_hold_two_tebibytes() {
        assert_eq!(part_size(1), 16 << 20);
        assert_eq!(part_size(1_250), 16 << 20);
        assert_eq!(part_size(1_251), 32 << 20);
        assert_eq!(part_size(10_000), 512 << 20);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(n) as u64).sum();
        assert!(total > 2 << 40, "{total}");
    }
}
