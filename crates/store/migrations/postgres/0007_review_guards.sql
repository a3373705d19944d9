-- Review hardening (issue 18): a reply whose recipient a reviewer changed needs a second
-- approver, and sessions end after a while without use.

-- The target as the pipeline staged it, set when a reviewer first changes the target (the
-- reply's `to`); NULL while it is unchanged.
ALTER TABLE actions ADD COLUMN staged_target TEXT;

-- Approvals given to a message that waits for a second approver (removed once decided).
CREATE TABLE approvals (
    message_id  BIGINT NOT NULL REFERENCES messages(id),
    user_name   TEXT   NOT NULL,
    at          BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_name)
);

-- When the session was last used (its idle timeout counts from here).
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;
