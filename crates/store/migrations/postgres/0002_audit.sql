-- The audit log: append-only and hash-chained. Each entry's `hash` covers the previous
-- entry's hash and this entry's fields, with `detail` represented by `detail_hash`, so an
-- erasure can blank `detail` (leaving a tombstone) without breaking the chain.
CREATE TABLE audit_log (
    seq          BIGINT  NOT NULL PRIMARY KEY,
    at           BIGINT  NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    detail       TEXT,
    detail_hash  TEXT    NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL,
    erased_at    BIGINT
);
CREATE INDEX audit_log_subject ON audit_log (subject);
