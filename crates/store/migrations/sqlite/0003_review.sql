-- Human review and delivery: reviewer accounts and their sessions, failed logins (for the
-- rate limit), draft versions, decisions, the outbox that delivers approved actions, each
-- delivery attempt, and endpoints disabled by a 410.

CREATE TABLE users (
    name          TEXT   NOT NULL PRIMARY KEY,
    password_hash TEXT   NOT NULL,
    role          TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);

-- A session is known by the SHA-256 of its cookie token; the token itself is never stored.
CREATE TABLE sessions (
    token_hash  TEXT   NOT NULL PRIMARY KEY,
    user_name   TEXT   NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf_token  TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE login_failures (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name  TEXT   NOT NULL,
    ip         TEXT   NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (user_name, ip, at);

CREATE TABLE drafts (
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    version     BIGINT NOT NULL,
    body        TEXT   NOT NULL,
    author      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (message_id, version)
);

CREATE TABLE decisions (
    message_id  BIGINT NOT NULL PRIMARY KEY REFERENCES messages(id),
    decision    TEXT   NOT NULL,
    reviewer    TEXT   NOT NULL,
    reason      TEXT,
    decided_at  BIGINT NOT NULL
);

-- One row per approved action. webhook_id is the Standard Webhooks `webhook-id`: the same
-- on every attempt, the receiver's idempotency key.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id       BIGINT NOT NULL UNIQUE REFERENCES actions(id),
    message_id      BIGINT NOT NULL REFERENCES messages(id),
    webhook_id      TEXT   NOT NULL UNIQUE,
    kind            TEXT   NOT NULL,
    target          TEXT   NOT NULL,
    payload         TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_expires   BIGINT,
    last_error      TEXT,
    last_status     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    sent_at         BIGINT
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

CREATE TABLE outbox_attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id        BIGINT NOT NULL REFERENCES outbox(id),
    attempt          BIGINT NOT NULL,
    at               BIGINT NOT NULL,
    response_status  BIGINT,
    error            TEXT
);
CREATE INDEX outbox_attempts_outbox ON outbox_attempts (outbox_id);

-- Webhook URLs that answered 410 Gone: nothing more is sent there until a person re-enables it.
CREATE TABLE endpoints (
    url         TEXT   NOT NULL PRIMARY KEY,
    status      TEXT   NOT NULL,
    reason      TEXT,
    updated_at  BIGINT NOT NULL
);
