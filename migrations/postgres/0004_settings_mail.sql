-- Server settings (SMTP; secrets sealed by the vault) and the mail outbox: every mail is
-- recorded before it is sent, retried on failure, and its fate kept.
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    secret      TEXT,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE mail_outbox (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT NOT NULL,
    recipients       TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    sent_at          BIGINT,
    last_error       TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
