//! The authorization matrix, generated from the OpenAPI document: every operation the
//! document lists must have a line in [`MATRIX`] (and every line an operation), and every
//! route the source declares must be in the document, so no route ships unchecked. Each
//! operation is called with no credentials, as a viewer, an operator and an admin, with a
//! session that lacks its CSRF token, and as a user who must change their password first.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::api::Api;
use holdfast_server::http::SESSION_COOKIE;

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Needs {
    /// Anyone: no credentials asked.
    Public,
    /// Anyone, but a session that calls it must carry its CSRF token (so another site
    /// cannot log a user out).
    AnySession,
    Viewer,
    Operator,
    Admin,
}

use Needs::*;

impl Needs {
    fn public(self) -> bool {
        matches!(self, Public | AnySession)
    }
}

/// One line per operation: method, path as documented, who may call it, and what to send
/// (a query string and a body) so that a caller who may call it gets past validation to
/// the role check.
const MATRIX: &[(&str, &str, Needs, &str, &str)] = &[
    ("get", "/healthz", Public, "", ""),
    ("get", "/metrics", Public, "", ""),
    ("get", "/api/v1/info", Viewer, "", ""),
    ("get", "/api/v1/audit", Admin, "", ""),
    (
        "post",
        "/api/v1/session",
        Public,
        "",
        r#"{"name":"admin","password":"admin-password-1"}"#,
    ),
    ("get", "/api/v1/me", Viewer, "", ""),
    (
        "put",
        "/api/v1/me/password",
        Viewer,
        "",
        r#"{"current":"a","new":"b"}"#,
    ),
    ("get", "/api/v1/tokens", Viewer, "", ""),
    ("post", "/api/v1/tokens", Viewer, "", r#"{"name":"t"}"#),
    ("delete", "/api/v1/tokens/{id}", Viewer, "", ""),
    ("get", "/api/v1/users", Admin, "", ""),
    (
        "post",
        "/api/v1/users",
        Admin,
        "",
        r#"{"name":"x","password":"long-enough-pw","role":"viewer"}"#,
    ),
    (
        "put",
        "/api/v1/users/{id}",
        Admin,
        "",
        r#"{"role":"viewer"}"#,
    ),
    ("delete", "/api/v1/users/{id}", Admin, "", ""),
    ("get", "/api/v1/enrollment-tokens", Admin, "", ""),
    (
        "post",
        "/api/v1/enrollment-tokens",
        Admin,
        "",
        r#"{"uses":1}"#,
    ),
    ("delete", "/api/v1/enrollment-tokens/{id}", Admin, "", ""),
    ("get", "/api/v1/agents", Viewer, "", ""),
    ("get", "/api/v1/agents/{id}", Viewer, "", ""),
    ("delete", "/api/v1/agents/{id}", Admin, "", ""),
    (
        "put",
        "/api/v1/agents/{id}/bandwidth",
        Admin,
        "",
        r#"{"bandwidth":"20M"}"#,
    ),
    (
        "post",
        "/api/v1/agents/{id}/clone",
        Operator,
        "",
        r#"{"source":"/dev/sdy","target":"/dev/sdz","confirm":"/dev/sdz"}"#,
    ),
    (
        "post",
        "/api/v1/installs/host-keys",
        Admin,
        "",
        r#"{"machines":[{"host":"127.0.0.1","port":1}]}"#,
    ),
    (
        "post",
        "/api/v1/installs",
        Admin,
        "",
        r#"{"machines":[{"host":"127.0.0.1","port":1,"fingerprint":"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}],"user":"root","password":"x","server_url":"https://localhost:1"}"#,
    ),
    ("get", "/api/v1/installs", Admin, "", ""),
    ("get", "/api/v1/installs/{id}", Admin, "", ""),
    (
        "post",
        "/api/v1/agents/{id}/inventory/refresh",
        Operator,
        "",
        "",
    ),
    (
        "put",
        "/api/v1/agents/{id}/site",
        Admin,
        "",
        r#"{"site_id":null}"#,
    ),
    ("get", "/api/v1/sites", Viewer, "", ""),
    ("post", "/api/v1/sites", Admin, "", r#"{"name":"s"}"#),
    ("get", "/api/v1/sites/{id}", Viewer, "", ""),
    ("put", "/api/v1/sites/{id}", Admin, "", r#"{"name":"s"}"#),
    ("delete", "/api/v1/sites/{id}", Admin, "", ""),
    ("get", "/api/v1/targets", Viewer, "", ""),
    (
        "post",
        "/api/v1/targets",
        Admin,
        "",
        r#"{"name":"t","url":"/srv/images"}"#,
    ),
    ("get", "/api/v1/targets/{id}", Viewer, "", ""),
    (
        "put",
        "/api/v1/targets/{id}",
        Admin,
        "",
        r#"{"name":"t","url":"/srv/images"}"#,
    ),
    ("delete", "/api/v1/targets/{id}", Admin, "", ""),
    (
        "put",
        "/api/v1/targets/{id}/host-key",
        Admin,
        "",
        r#"{"fingerprint":"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"}"#,
    ),
    (
        "post",
        "/api/v1/targets/{id}/test",
        Operator,
        "",
        r#"{"agent_id":1}"#,
    ),
    ("get", "/api/v1/jobs", Viewer, "", ""),
    ("post", "/api/v1/jobs", Operator, "", JOB),
    ("post", "/api/v1/jobs/import", Operator, "", JOB),
    (
        "post",
        "/api/v1/jobs/preview",
        Viewer,
        "",
        r#"{"spec":{"agents":[1],"source":"/dev/sda","target_id":1}}"#,
    ),
    ("get", "/api/v1/jobs/{id}", Viewer, "", ""),
    ("put", "/api/v1/jobs/{id}", Operator, "", JOB),
    ("delete", "/api/v1/jobs/{id}", Operator, "", ""),
    ("get", "/api/v1/jobs/{id}/export", Viewer, "", ""),
    ("post", "/api/v1/jobs/{id}/run", Operator, "", ""),
    ("post", "/api/v1/jobs/{id}/cancel", Operator, "", ""),
    ("post", "/api/v1/jobs/{id}/check", Operator, "", ""),
    ("get", "/api/v1/reports", Viewer, "", ""),
    ("get", "/api/v1/reports/{id}", Viewer, "", ""),
    ("get", "/api/v1/reports/{id}/download", Viewer, "", ""),
    ("get", "/api/v1/images", Viewer, "", ""),
    ("get", "/api/v1/images/{id}", Viewer, "", ""),
    ("get", "/api/v1/images/{id}/files", Viewer, "?path=/", ""),
    (
        "get",
        "/api/v1/images/{id}/download",
        Operator,
        "?path=/etc&format=tar.gz",
        "",
    ),
    (
        "post",
        "/api/v1/images/{id}/restore-files",
        Operator,
        "",
        r#"{"paths":["/etc"]}"#,
    ),
    (
        "post",
        "/api/v1/images/{id}/restore-volume",
        Operator,
        "",
        r#"{"device":"/dev/sdz","confirm":"/dev/sdz"}"#,
    ),
    ("get", "/api/v1/settings/smtp", Admin, "", ""),
    (
        "put",
        "/api/v1/settings/smtp",
        Admin,
        "",
        r#"{"settings":{"server":"127.0.0.1","port":9,"tls":"none","sender":"a@example.test"}}"#,
    ),
    (
        "post",
        "/api/v1/settings/smtp/test",
        Admin,
        "",
        r#"{"to":"a@example.test"}"#,
    ),
    ("get", "/api/v1/settings/security", Admin, "", ""),
    ("get", "/api/v1/settings/alerts", Admin, "", ""),
    ("put", "/api/v1/settings/alerts", Admin, "", "{}"),
    ("get", "/api/v1/mail", Admin, "", ""),
    // Last: it ends the sessions it is called with.
    ("delete", "/api/v1/session", AnySession, "", ""),
];

const JOB: &str =
    r#"{"name":"j","enabled":true,"spec":{"agents":[1],"source":"/dev/sda","target_id":1}}"#;

/// Routes the source declares that are not API operations: the document itself.
const UNDOCUMENTED: &[&str] = &["/api/v1/openapi.json"];

/// How a request authenticates.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    /// A session cookie, with its CSRF token or without.
    Session(&'a str, bool),
}

/// The status and error code of one call.
async fn call(api: &Api, method: &str, uri: &str, who: As<'_>, body: &str) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(uri);
    if let As::Session(secret, csrf) = who {
        req = req.header(header::COOKIE, format!("{SESSION_COOKIE}={secret}"));
        if csrf {
            req = req.header("x-csrf-token", holdfast_server::auth::csrf_token(secret));
        }
    }
    let req = if body.is_empty() {
        req.body(Body::empty())
    } else {
        req.header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
    }
    .expect("request");
    let resp = api.app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let code = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

/// Every path the server's source hands to `.route(` (string literals only).
fn source_routes() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("source");
        for part in text.split(".route(").skip(1) {
            let part = part.trim_start();
            if let Some(rest) = part.strip_prefix('"') {
                if let Some(end) = rest.find('"') {
                    routes.insert(rest[..end].to_owned());
                }
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_operation_is_in_the_matrix_and_holds_it() {
    let api = Api::new().await;
    let doc = api
        .call("GET", "/api/v1/openapi.json", None, None)
        .await
        .body;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let lines: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, ..)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        lines.len(),
        MATRIX.len(),
        "an operation is in the matrix twice"
    );
    let missing: Vec<_> = documented.difference(&lines).collect();
    assert!(
        missing.is_empty(),
        "operations without a line in MATRIX: {missing:?}"
    );
    let stale: Vec<_> = lines.difference(&documented).collect();
    assert!(stale.is_empty(), "MATRIX lines for no operation: {stale:?}");
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    let undocumented: Vec<_> = source_routes()
        .into_iter()
        .filter(|r| !paths.contains(r) && !UNDOCUMENTED.contains(&r.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    // The document states which operations need credentials; so does the matrix.
    for (method, path, needs, ..) in MATRIX {
        let secured = doc["paths"][path][method]["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        assert_eq!(
            secured,
            !needs.public(),
            "{method} {path}: the document and the matrix disagree on credentials"
        );
    }

    // The callers: one session per role, one of a user who must change their password.
    let admin = api.login("admin", "admin-password-1").await;
    let sessions = [
        (Admin, admin.clone()),
        (Operator, api.user(&admin, "olga", "operator", false).await),
        (Viewer, api.user(&admin, "vic", "viewer", false).await),
    ];
    let viewer = sessions[2].1.clone();
    let must_change = api.user(&admin, "neo", "admin", true).await;

    let mut wrong = Vec::new();
    for (method, path, needs, query, body) in MATRIX {
        let uri = format!("{}{query}", path.replace("{id}", "1"));
        let at = format!("{method} {path}");
        let unsafe_method = !matches!(*method, "get" | "head");
        let mut expect = |who: &str, got: (StatusCode, String), ok: bool, want: &str| {
            let fine = if ok {
                !matches!(got.0, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                    && !got.0.is_server_error()
            } else {
                got.1 == want
            };
            if !fine {
                wrong.push(format!(
                    "{at} as {who}: got {} {}, expected {}",
                    got.0,
                    got.1,
                    if ok { "to pass" } else { want }
                ));
            }
        };
        let got = call(&api, method, &uri, As::Nobody, body).await;
        expect("nobody", got, needs.public(), "unauthorized");
        if unsafe_method && *needs != Public {
            let got = call(&api, method, &uri, As::Session(&viewer, false), body).await;
            expect("a session without its CSRF token", got, false, "csrf");
        }
        if !needs.public() && !matches!(*path, "/api/v1/me" | "/api/v1/me/password") {
            let got = call(&api, method, &uri, As::Session(&must_change, true), body).await;
            expect(
                "a user who must change their password",
                got,
                false,
                "password_change_required",
            );
        }
        for (role, session) in &sessions {
            let got = call(&api, method, &uri, As::Session(session, true), body).await;
            expect(&format!("{role:?}"), got, role >= needs, "forbidden");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Agents write as root: an operator restores an image onto its own machine only; onto
/// another one takes an admin.
#[tokio::test]
async fn restores_onto_another_machine_need_an_admin() {
    use holdfast_server::store::jobs::{Finish, NewImage};
    use holdfast_server::store::RunState;

    let api = Api::new().await;
    let admin = api.login("admin", "admin-password-1").await;
    let own = crate::api::enrolled_agent(&api.store).await;
    crate::changed(&api.store, async |c| {
        c.create_enrollment_token("t2", "token-hash-2", 1, i64::MAX, "admin")
            .await
    })
    .await
    .expect("token");
    let other = crate::changed(&api.store, async |c| {
        c.enroll_agent("token-hash-2", "db01", "secret-hash-2")
            .await
    })
    .await
    .expect("enrol")
    .expect("agent");
    let r = api
        .call(
            "POST",
            "/api/v1/targets",
            Some(&admin),
            Some(json!({"name": "nas", "url": "/srv/images"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let target = r.body["id"].as_i64().expect("target id");
    let r = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&admin),
            Some(json!({"name": "web", "enabled": true, "spec": {"agents": [own], "source": "/dev/sda", "target_id": target}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let job = r.body["id"].as_i64().expect("job id");
    let run = api
        .store
        .create_scheduled_runs(job, &[own], "nightly", 1000)
        .await
        .expect("run")[0]
        .id;
    assert!(api.store.claim_run(run).await.expect("claim"));
    let finish = Finish {
        run_id: run,
        state: RunState::Successful,
        started_at: 1001,
        ended_at: 1010,
        bytes_read: 10,
        bytes_written: 5,
        report: "{}",
        images: vec![NewImage {
            name: "web/full.hfi",
            method: "full",
            base_name: None,
            image_id: "id1",
            bytes: 5,
            verified: Some(true),
            source: Some("/dev/sdb"),
        }],
    };
    assert!(api.store.finish_run(&finish).await.expect("finish"));
    api.store
        .set_images_target(run, target)
        .await
        .expect("target of images");
    let image = api.store.run_images(run).await.expect("images")[0].id;

    let operator = api.user(&admin, "olga", "operator", false).await;
    let files = format!("/api/v1/images/{image}/restore-files");
    let volume = format!("/api/v1/images/{image}/restore-volume");
    let to_other_files = json!({"paths": ["/etc"], "to": "/tmp/x", "agent_id": other});
    let to_other_volume = json!({"device": "/dev/sdz", "confirm": "/dev/sdz", "agent_id": other});
    for (path, body) in [(&files, &to_other_files), (&volume, &to_other_volume)] {
        let r = api
            .call("POST", path, Some(&operator), Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.body);
        assert!(
            r.body.to_string().contains("another machine"),
            "{path}: {}",
            r.body
        );
        // An admin passes the role check (the agent is offline, which the answer says).
        let r = api
            .call("POST", path, Some(&admin), Some(body.clone()))
            .await;
        assert!(
            r.status != StatusCode::FORBIDDEN && !r.status.is_server_error(),
            "{path}: {} {}",
            r.status,
            r.body
        );
    }
    // Onto the image's own machine, named or not, an operator passes the role check.
    for body in [
        json!({"paths": ["/etc"], "to": "/tmp/x"}),
        json!({"paths": ["/etc"], "to": "/tmp/x", "agent_id": own}),
    ] {
        let r = api.call("POST", &files, Some(&operator), Some(body)).await;
        assert!(
            r.status != StatusCode::FORBIDDEN && !r.status.is_server_error(),
            "{} {}",
            r.status,
            r.body
        );
    }
}
