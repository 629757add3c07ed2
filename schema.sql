-- reconciled store schema.
--
-- Migrations are append-only. Each starts with a line "-- migration: N" and runs in one
-- transaction, after which PRAGMA user_version = N. Never edit a migration that has shipped;
-- add a new one below.

-- migration: 1
-- The inbox: every verified notification, stored exactly once per (provider, dedup_key).
CREATE TABLE inbox (
    id               INTEGER PRIMARY KEY,
    endpoint         TEXT    NOT NULL,   -- the [[endpoint]] name it arrived on
    provider         TEXT    NOT NULL,   -- stripe, paypal, ...
    dedup_key        TEXT    NOT NULL,   -- the provider's id for the notification (evt_...)
    event_type       TEXT,               -- payment_intent.succeeded, ...
    received_at      INTEGER NOT NULL,   -- first delivery, unix milliseconds
    last_received_at INTEGER NOT NULL,   -- latest delivery, unix milliseconds
    remote_addr      TEXT    NOT NULL,   -- peer address of the first delivery
    headers          TEXT    NOT NULL,   -- JSON object: headers needed to verify again
    body             BLOB    NOT NULL,   -- the raw request body, byte for byte
    delivery_count   INTEGER NOT NULL DEFAULT 1,
    status           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'done', 'parked', 'ignored', 'rejected', 'dead')),
    UNIQUE (provider, dedup_key)
);
CREATE INDEX inbox_by_status ON inbox (status, id);

-- Requests that failed verification, kept for an operator to see (a rotated secret, a
-- misconfigured endpoint). Capped: the writer deletes all but the newest N rows.
CREATE TABLE verify_failures (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,        -- unix milliseconds
    endpoint    TEXT    NOT NULL,
    remote_addr TEXT    NOT NULL,
    reason      TEXT    NOT NULL,        -- short code: bad_signature, stale_timestamp, ...
    detail      TEXT    NOT NULL,        -- the message sent back to the client
    body_len    INTEGER NOT NULL,
    body_prefix BLOB    NOT NULL         -- at most 1 KiB of the body
);

-- Small facts about the store itself (readiness probe time, ...).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
