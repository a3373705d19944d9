-- GDPR: encryption at rest, retention, audit checkpoints, the erasure salt.

-- The data key each encrypted value was sealed with (NULL: stored in clear). `raw` of a
-- message, `text` and `pages` of a part and `output` of a stage result are encrypted when
-- a data key is configured (VERRE_DATA_KEY / VERRE_DATA_KEY_FILE).
ALTER TABLE messages ADD COLUMN key_id TEXT;
ALTER TABLE parts ADD COLUMN key_id TEXT;
ALTER TABLE stage_results ADD COLUMN key_id TEXT;

-- Set when retention removed a message's raw bytes (its extraction is kept).
ALTER TABLE messages ADD COLUMN raw_purged_at BIGINT;
CREATE INDEX messages_received ON messages (received_at);

-- Each purge of old audit entries leaves a checkpoint: the last removed entry's sequence
-- number and hash, which the first kept entry's prev_hash must equal.
CREATE TABLE audit_checkpoint (
    seq      BIGINT NOT NULL PRIMARY KEY,
    hash     TEXT   NOT NULL,
    removed  BIGINT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Secrets of this database: the key of the hash that names an erased subject.
CREATE TABLE gdpr_secrets (
    name   TEXT NOT NULL PRIMARY KEY,
    value  TEXT NOT NULL
);
