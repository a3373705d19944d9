-- Issue 18, item 13: a quarantine reason and a job's last error quote the message or the
-- model's answer (schema errors name the values they refuse). They are encrypted at rest
-- like the message content; key_id names the data key (NULL: in clear, as rows written
-- before this migration or without a data key).
ALTER TABLE quarantine ADD COLUMN key_id TEXT;
ALTER TABLE jobs ADD COLUMN key_id TEXT;
