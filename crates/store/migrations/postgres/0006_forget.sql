-- Issue 18: content verre was told to forget, and the audit chain's key.

-- Raw messages removed by erasure or retention, so the same bytes are never stored again
-- (an inbox read twice, a mail delivered again, an IMAP folder read from the start). Each
-- is named by an HMAC-SHA256 of the message's content hash under a key kept outside the
-- database (the audit key, crates/store/src/audit_key.rs): never the content, and not
-- testable against a guessed mail without that key.
CREATE TABLE forgotten (
    hash    TEXT   NOT NULL PRIMARY KEY,
    -- 'erased' (verre erase) or 'purged' (retention)
    reason  TEXT   NOT NULL,
    at      BIGINT NOT NULL
);

-- The id of the key an audit entry's hash is an HMAC under; NULL for the plain SHA-256
-- entries written before the chain was keyed.
ALTER TABLE audit_log ADD COLUMN key_id TEXT;
