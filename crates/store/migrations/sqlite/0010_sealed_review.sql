-- Issue 18, item 13: review drafts, staged actions' payloads (edited by reviewers), rejection
-- reasons, outbox payloads (webhook bodies, reply mails), a delivery's last error and each
-- attempt's error quote the message or name the people in it. They are encrypted at rest
-- like the message content; key_id names the data key (NULL: in clear, as rows written
-- before this migration or without a data key).
ALTER TABLE drafts ADD COLUMN key_id TEXT;
ALTER TABLE actions ADD COLUMN key_id TEXT;
ALTER TABLE decisions ADD COLUMN key_id TEXT;
ALTER TABLE outbox ADD COLUMN key_id TEXT;
ALTER TABLE outbox_attempts ADD COLUMN key_id TEXT;
