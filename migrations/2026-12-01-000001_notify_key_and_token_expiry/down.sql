DROP INDEX auth_tokens_created_at_idx;
DROP TABLE notify_key;
