-- Issue 22, item 3: an archive you can ask (`verre archive add/ask`, crates/archive).

-- One document added to the archive. `name` (the file name it was added from: often a
-- person's name) is sealed under `key_id` like a message's content; `content_hash` (hex
-- SHA-256 of the file's bytes) adds the same file only once. `model` names the embedding
-- model its vectors come from. Times are Unix ms; `[retention] archive_days` deletes
-- documents by `added_at`.
CREATE TABLE archive_documents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash  TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    pages         BIGINT  NOT NULL,
    model         TEXT    NOT NULL,
    dimensions    BIGINT  NOT NULL,
    added_at      BIGINT  NOT NULL,
    key_id        TEXT
);
CREATE INDEX archive_documents_added ON archive_documents (added_at);

-- A passage of a document: its text and its embedding (little-endian f32s), both sealed
-- under `key_id`; `page` counts from 1 (1 for documents without pages).
CREATE TABLE archive_chunks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id   BIGINT  NOT NULL REFERENCES archive_documents(id),
    idx           BIGINT  NOT NULL,
    page          BIGINT  NOT NULL,
    text          TEXT    NOT NULL,
    vector        BLOB    NOT NULL,
    key_id        TEXT,
    UNIQUE (document_id, idx)
);
