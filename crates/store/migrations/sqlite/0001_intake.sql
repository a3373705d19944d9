-- verre intake: messages, their parts, the job queue, stage results, quarantine, staged actions.
-- Times are Unix milliseconds (BIGINT) so both backends read them the same way.

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash  TEXT    NOT NULL UNIQUE,
    source        TEXT    NOT NULL,
    source_ref    TEXT    NOT NULL,
    raw           BLOB    NOT NULL,
    size          BIGINT  NOT NULL,
    status        TEXT    NOT NULL DEFAULT 'pending',
    received_at   BIGINT  NOT NULL,
    finished_at   BIGINT
);

CREATE TABLE parts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    BIGINT  NOT NULL REFERENCES messages(id),
    idx           BIGINT  NOT NULL,
    kind          TEXT    NOT NULL,
    filename      TEXT,
    content_type  TEXT    NOT NULL,
    size          BIGINT  NOT NULL,
    supported     BIGINT  NOT NULL,
    note          TEXT,
    text          TEXT,
    pages         TEXT,
    UNIQUE (message_id, idx)
);

CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    BIGINT  NOT NULL REFERENCES messages(id),
    stage         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    attempts      BIGINT  NOT NULL DEFAULT 0,
    max_attempts  BIGINT  NOT NULL,
    run_after     BIGINT  NOT NULL,
    lease_owner   TEXT,
    lease_expires BIGINT,
    last_error    TEXT,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL,
    UNIQUE (message_id, stage)
);
CREATE INDEX jobs_ready ON jobs (state, run_after);

CREATE TABLE stage_results (
    message_id        BIGINT NOT NULL REFERENCES messages(id),
    stage             TEXT   NOT NULL,
    output            TEXT   NOT NULL,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    worker            TEXT   NOT NULL,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (message_id, stage)
);

CREATE TABLE quarantine (
    message_id  BIGINT NOT NULL PRIMARY KEY REFERENCES messages(id),
    stage       TEXT   NOT NULL,
    reason      TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    name        TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    status      TEXT   NOT NULL DEFAULT 'staged',
    created_at  BIGINT NOT NULL,
    UNIQUE (message_id, name)
);

-- PII found in a message's text, for the governance issue. part_idx is NULL for headers.
CREATE TABLE pii_tags (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    part_idx    BIGINT,
    kind        TEXT   NOT NULL,
    span_start  BIGINT NOT NULL,
    span_end    BIGINT NOT NULL
);
CREATE INDEX pii_tags_message ON pii_tags (message_id);
