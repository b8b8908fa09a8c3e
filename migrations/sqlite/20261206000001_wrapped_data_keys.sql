-- Data keys wrapped at rest (security review, issue #12): `key` holds the data
-- key wrapped with a key-encryption key kept outside the database
-- (KEYLEDGER_DATA_KEY_WRAPPING_KEY), 81 bytes; keys stored before (32 bytes, in
-- clear) stay readable and are rewrapped by the server at its next start.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt
-- (nothing else refers to it: no index, trigger or view).
CREATE TABLE user_data_keys_wrapped
(
    owner_id   TEXT PRIMARY KEY,
    key        BLOB,
    created_at TEXT NOT NULL,
    erased_at  TEXT,
    CHECK ((key IS NULL) = (erased_at IS NOT NULL)),
    CHECK (key IS NULL OR length(key) IN (32, 81))
) STRICT;
INSERT INTO user_data_keys_wrapped (owner_id, key, created_at, erased_at)
SELECT owner_id, key, created_at, erased_at FROM user_data_keys;
DROP TABLE user_data_keys;
ALTER TABLE user_data_keys_wrapped RENAME TO user_data_keys;
