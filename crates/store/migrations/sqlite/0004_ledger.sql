-- The cost ledger: one row per API request (chat, completions, embeddings), served in
-- this process or by an upstream, answered or refused. Metadata only, never content.
-- `at` is when the request came in (Unix ms); `api_key` is the key's name ('' when the
-- server runs without keys); `local` is 1 when the backend runs on hardware the
-- operator controls.
CREATE TABLE ledger (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    at                 BIGINT  NOT NULL,
    api_key            TEXT    NOT NULL,
    endpoint           TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    backend            TEXT    NOT NULL,
    local              BIGINT  NOT NULL,
    status             BIGINT  NOT NULL,
    prompt_tokens      BIGINT  NOT NULL,
    completion_tokens  BIGINT  NOT NULL,
    first_byte_ms      BIGINT  NOT NULL,
    latency_ms         BIGINT  NOT NULL
);
CREATE INDEX ledger_at ON ledger (at);
CREATE INDEX ledger_key_at ON ledger (api_key, at);
