//! E-mail: the SMTP settings (password sealed by the vault) and the outbox sender. Every
//! mail is recorded in the outbox first; a sender task delivers due mails and retries a
//! failure with growing pauses, recording each error, so a mail is never lost silently and
//! never holds up a job.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::store::{now, Store, StoreError};
use crate::vault::{Vault, VaultError};

/// The settings key of the SMTP configuration.
pub const SMTP_KEY: &str = "smtp";
/// The vault context of the SMTP password.
pub const SMTP_CONTEXT: &str = "settings:smtp";
/// Pauses between tries of a failing mail; after the last it is given up (and recorded).
const RETRY_MINUTES: [i64; 6] = [1, 5, 15, 60, 180, 720];
/// How often the outbox is looked at.
const OUTBOX_TICK: Duration = Duration::from_secs(5);
/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mail taken for sending stays with its sender before it is due again.
const CLAIM: Duration = Duration::from_secs(120);

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text (only for a relay on a trusted network).
    None,
    /// Plain connection upgraded with STARTTLS (required: refused without it).
    Starttls,
    /// TLS from the first byte (usually port 465).
    Implicit,
}

/// SMTP settings as admins set them (the password is separate and write-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub server: String,
    pub port: u16,
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    /// Name sent in HELO/EHLO (default: this machine's name).
    #[serde(default)]
    pub helo: Option<String>,
    /// The From address.
    pub sender: String,
    /// Subject of report mails: `$STATUS`, `$JOB`, `$COMPUTER` and `$REPORT` are replaced.
    #[serde(default = "default_subject")]
    pub subject_template: String,
    /// CA certificate(s) to trust for the server's certificate, PEM (default: the public
    /// web roots).
    #[serde(default)]
    pub ca_pem: Option<String>,
}

fn default_subject() -> String {
    "[Holdfast] $STATUS: $JOB on $COMPUTER".into()
}

/// Why a mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("e-mail is not set up (no SMTP settings)")]
    NotConfigured,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Vault(#[from] VaultError),
    #[error("invalid address '{0}'")]
    Address(String),
    #[error("{0}")]
    Settings(String),
    #[error("SMTP server {server}:{port}: {detail}")]
    Smtp {
        server: String,
        port: u16,
        detail: String,
    },
}

impl SmtpSettings {
    /// Every rule, with what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.server.trim().is_empty()
            || self
                .server
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("server must be a host name or address".into());
        }
        if self.port == 0 {
            return Err("port must be 1 to 65535".into());
        }
        self.sender
            .parse::<Mailbox>()
            .map_err(|_| format!("sender '{}' is not an e-mail address", self.sender))?;
        if let Some(pem) = &self.ca_pem {
            Certificate::from_pem(pem.as_bytes())
                .map_err(|e| format!("ca_pem is not a PEM certificate: {e}"))?;
        }
        Ok(())
    }
}

/// Parse comma- or list-given recipients.
pub fn mailboxes(list: &[String]) -> Result<Vec<Mailbox>, MailError> {
    list.iter()
        .map(|a| {
            a.trim()
                .parse::<Mailbox>()
                .map_err(|_| MailError::Address(a.clone()))
        })
        .collect()
}

/// Sends mail with the stored settings.
pub struct Mailer {
    store: Store,
    vault: Arc<Vault>,
}

impl Mailer {
    pub fn new(store: Store, vault: Arc<Vault>) -> Self {
        Self { store, vault }
    }

    /// The stored settings and password.
    pub async fn settings(
        &self,
    ) -> Result<Option<(SmtpSettings, Option<Zeroizing<String>>)>, MailError> {
        let Some((value, secret)) = self.store.setting(SMTP_KEY).await? else {
            return Ok(None);
        };
        let s: SmtpSettings =
            serde_json::from_str(&value).map_err(|e| MailError::Settings(e.to_string()))?;
        let password = match secret {
            Some(sealed) => {
                let plain = self.vault.unseal(SMTP_CONTEXT, &sealed)?;
                Some(Zeroizing::new(String::from_utf8_lossy(&plain).into_owned()))
            }
            None => None,
        };
        Ok(Some((s, password)))
    }

    /// Send one mail now.
    pub async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), MailError> {
        self.send_as(to, subject, body, None).await
    }

    /// Send one mail now; `message_id` is the left part of its Message-ID when given (a
    /// mail sent again keeps its id, so mail readers show it once), the sender's domain
    /// the right.
    async fn send_as(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
        message_id: Option<&str>,
    ) -> Result<(), MailError> {
        let (s, password) = self.settings().await?.ok_or(MailError::NotConfigured)?;
        let smtp = |detail: String| MailError::Smtp {
            server: s.server.clone(),
            port: s.port,
            detail,
        };
        let mut builder = Message::builder()
            .from(
                s.sender
                    .parse::<Mailbox>()
                    .map_err(|_| MailError::Address(s.sender.clone()))?,
            )
            .subject(subject)
            .message_id(message_id.map(|left| {
                let domain = s.sender.rsplit_once('@').map_or("holdfast", |(_, d)| d);
                format!("<{left}@{}>", domain.trim_end_matches('>'))
            }))
            .header(ContentType::TEXT_PLAIN);
        for m in mailboxes(to)? {
            builder = builder.to(m);
        }
        let message = builder
            .body(body.to_owned())
            .map_err(|e| MailError::Settings(e.to_string()))?;
        let tls_parameters = || -> Result<TlsParameters, MailError> {
            let mut p = TlsParameters::builder(s.server.clone());
            if let Some(pem) = &s.ca_pem {
                p = p.add_root_certificate(
                    Certificate::from_pem(pem.as_bytes())
                        .map_err(|e| MailError::Settings(format!("ca_pem: {e}")))?,
                );
            }
            p.build_rustls().map_err(|e| smtp(e.to_string()))
        };
        let mut transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.server.as_str())
                .port(s.port)
                .timeout(Some(SMTP_TIMEOUT));
        transport = match s.tls {
            SmtpTls::None => transport,
            SmtpTls::Starttls => transport.tls(Tls::Required(tls_parameters()?)),
            SmtpTls::Implicit => transport.tls(Tls::Wrapper(tls_parameters()?)),
        };
        if let Some(h) = s.helo.as_ref().filter(|h| !h.is_empty()) {
            transport = transport.hello_name(ClientId::Domain(h.clone()));
        }
        if let Some(user) = s.username.as_ref().filter(|u| !u.is_empty()) {
            let pw = password.as_ref().map(|p| p.to_string()).unwrap_or_default();
            transport = transport.credentials(Credentials::new(user.clone(), pw));
        }
        transport
            .build()
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| smtp(e.to_string()))
    }

    /// Deliver the mails that are due; a failure is recorded and retried later. With
    /// several server instances only the leader sends, and it takes each mail before
    /// sending it, so no two instances send one mail. A mail being sent when its sender
    /// dies goes again (once its claim ran out) with the same Message-ID.
    pub async fn deliver_due(
        &self,
        leadership: &crate::cluster::Leadership,
    ) -> Result<(), StoreError> {
        for m in self.store.due_mail(now(), 50).await? {
            if leadership.leading().await.is_none() {
                return Ok(());
            }
            let until = now() + CLAIM.as_secs() as i64;
            if !self.store.claim_mail(&m, until).await? {
                continue;
            }
            let to: Vec<String> = m
                .recipients
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            let message_id = format!("holdfast-mail-{}-{}", m.id, m.created_at);
            match self
                .send_as(&to, &m.subject, &m.body, Some(&message_id))
                .await
            {
                Ok(()) => self.store.mail_sent(m.id).await?,
                Err(e) => {
                    let retry = usize::try_from(m.attempts)
                        .ok()
                        .and_then(|a| RETRY_MINUTES.get(a))
                        .map(|min| now() + min * 60);
                    tracing::warn!(mail = m.id, error = %e, gives_up = retry.is_none(), "mail not sent");
                    self.store.mail_failed(m.id, &e.to_string(), retry).await?;
                }
            }
        }
        Ok(())
    }

    /// Run the outbox until the task is dropped.
    pub fn spawn(
        self: Arc<Self>,
        cluster: Arc<crate::cluster::Cluster>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(OUTBOX_TICK);
            loop {
                tick.tick().await;
                if let Err(e) = self.deliver_due(&cluster.leadership).await {
                    tracing::error!(error = %e, "outbox failed");
                }
            }
        })
    }
}
