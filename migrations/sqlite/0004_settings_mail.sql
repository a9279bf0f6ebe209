-- Server settings (SMTP; secrets sealed by the vault) and the mail outbox: every mail is
-- recorded before it is sent, retried on failure, and its fate kept.
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    secret      TEXT,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE mail_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL,
    recipients       TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    sent_at          INTEGER,
    last_error       TEXT
);
CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
