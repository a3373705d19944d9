-- Issue 19: responses of `POST /v1/responses` kept for `previous_response_id`, `GET`,
-- `DELETE` and background runs (`store: true`, the default).

-- One response: `input` is the whole conversation it answered (the chain of earlier
-- responses' input and output, then the new input) as Responses input items, `body` the
-- response object; both JSON, sealed under `key_id` when data keys are configured
-- (crates/store/src/crypto.rs). `api_key` is the name of the key that made it ('' when
-- the server runs without keys): only that key reads, continues or deletes it. Times are
-- Unix ms; retention deletes responses past `extracted_days` by `created_at`.
CREATE TABLE responses (
    id          TEXT   NOT NULL PRIMARY KEY,
    api_key     TEXT   NOT NULL,
    model       TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    input       TEXT   NOT NULL,
    body        TEXT   NOT NULL,
    key_id      TEXT
);
CREATE INDEX responses_created ON responses (created_at);
