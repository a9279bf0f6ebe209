//! The agent endpoints refuse what they must, with a reason: another protocol version, no or
//! an unknown credential, a first message that is not the expected one.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use holdfast_proto::{AgentMsg, RefusalCode, ServerMsg, CHANNEL_PATH, ENROLL_PATH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::proc::{free_port, start};

/// Open `path` trusting only the server's CA; send `first` (if any); the server's answer.
pub async fn exchange(
    port: u16,
    ca: &std::path::Path,
    path: &str,
    auth: Option<&str>,
    first: Option<AgentMsg>,
) -> ServerMsg {
    let pem = std::fs::read(ca).expect("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("pem")).expect("add");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut req = format!("wss://localhost:{port}{path}")
        .into_client_request()
        .expect("request");
    if let Some(a) = auth {
        req.headers_mut()
            .insert("authorization", a.parse().expect("header"));
    }
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(config));
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .expect("connect");
    if let Some(m) = first {
        ws.send(Message::Text(m.to_text().into()))
            .await
            .expect("send");
    }
    loop {
        match ws.next().await.expect("an answer").expect("frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server message"),
            _ => continue,
        }
    }
}

pub fn refusal(m: ServerMsg) -> (RefusalCode, String) {
    match m {
        ServerMsg::Refused { code, reason } => (code, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn refusals_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (mut server, _) = start(dir.path(), port, true);
    let ca = dir.path().join("tls/ca.pem");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Another protocol version.
    let enroll = AgentMsg::Enroll {
        protocol: 99,
        token: "hfe_x".into(),
        hostname: "pc".into(),
    };
    let (code, reason) = refusal(exchange(port, &ca, ENROLL_PATH, None, Some(enroll)).await);
    assert_eq!(code, RefusalCode::Version);
    assert!(
        reason.contains("protocol version 99") && reason.contains("upgrade the server"),
        "{reason}"
    );
    // A token nobody issued.
    let enroll = AgentMsg::Enroll {
        protocol: holdfast_proto::PROTOCOL_VERSION,
        token: "hfe_nope".into(),
        hostname: "pc".into(),
    };
    let (code, _) = refusal(exchange(port, &ca, ENROLL_PATH, None, Some(enroll)).await);
    assert_eq!(code, RefusalCode::BadToken);
    // The wrong first message.
    let (code, _) =
        refusal(exchange(port, &ca, ENROLL_PATH, None, Some(AgentMsg::Heartbeat)).await);
    assert_eq!(code, RefusalCode::Protocol);
    // The channel without a credential, and with one that does not exist.
    let (code, reason) = refusal(exchange(port, &ca, CHANNEL_PATH, None, None).await);
    assert_eq!(code, RefusalCode::Unknown);
    assert!(reason.contains("enrol"), "{reason}");
    let (code, _) =
        refusal(exchange(port, &ca, CHANNEL_PATH, Some("Bearer hfa_7.bogus"), None).await);
    assert_eq!(code, RefusalCode::Unknown);
    let _ = server.kill();
    let _ = server.wait();
}
