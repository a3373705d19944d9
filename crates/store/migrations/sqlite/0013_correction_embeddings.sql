-- Issue 21, item 6: each corrected document's embedding, kept so that an extraction with
-- few-shot examples embeds only its own document, not up to 200 corrected ones again.
-- One row per message and embedding model. `vector` holds the SHA-256 of the text that was
-- embedded (32 bytes: a re-extracted document or a changed correction is embedded again)
-- followed by the embedding (little-endian f32s). An embedding of personal text is personal
-- data: sealed under `key_id` like the message's content (NULL: in clear), deleted with
-- its message (erasure, retention).
CREATE TABLE correction_embeddings (
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    model       TEXT   NOT NULL,
    vector      BLOB   NOT NULL,
    key_id      TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (message_id, model)
);
