-- Issue 21, items 2 and 6: what backs each extracted field (its span in the document, the
-- model's confidence, fields to check first) and the fields reviewers corrected, with the
-- words of the document they correct. Both quote the message: sealed at rest like the
-- extraction (key_id names the data key; NULL: in clear), deleted with their message
-- (erasure, retention).
CREATE TABLE evidence (
    message_id  BIGINT NOT NULL PRIMARY KEY REFERENCES messages(id),
    body        TEXT   NOT NULL,
    key_id      TEXT,
    created_at  BIGINT NOT NULL
);

-- One row per correction of one field; body is the JSON {value, previous, quote, context}.
CREATE TABLE corrections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    field       TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    reviewer    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    key_id      TEXT
);
CREATE INDEX corrections_message ON corrections (message_id, field);
