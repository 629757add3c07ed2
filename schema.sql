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

-- migration: 2
-- Reconciliation: the worker's bookkeeping on inbox rows, the per-payment state machine, and
-- the outbox of actions.
ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;        -- failed attempts so far
ALTER TABLE inbox ADD COLUMN next_attempt_at INTEGER NOT NULL DEFAULT 0; -- unix ms; parked/retry
ALTER TABLE inbox ADD COLUMN claimed_by TEXT;                           -- worker holding the lease
ALTER TABLE inbox ADD COLUMN claimed_until INTEGER;                     -- unix ms; lease expiry
ALTER TABLE inbox ADD COLUMN payment_key TEXT;                          -- the payment it is about
ALTER TABLE inbox ADD COLUMN outcome TEXT;                              -- what was decided, for people
ALTER TABLE inbox ADD COLUMN last_error TEXT;                           -- why the last attempt failed
ALTER TABLE inbox ADD COLUMN processed_at INTEGER;                      -- unix ms
CREATE INDEX inbox_by_payment ON inbox (provider, payment_key, id) WHERE payment_key IS NOT NULL;

-- One row per (provider, payment): a monotonic state machine (a late failure after a success
-- changes nothing), the order it was matched to, and whether it is the payment that paid it.
CREATE TABLE payments (
    provider       TEXT    NOT NULL,
    payment_id     TEXT    NOT NULL,
    status         TEXT    NOT NULL
        CHECK (status IN ('pending', 'authorized', 'succeeded', 'failed', 'canceled')),
    ever_succeeded INTEGER NOT NULL DEFAULT 0,
    order_id       TEXT,
    fulfilled      INTEGER NOT NULL DEFAULT 0,
    updated_at     INTEGER NOT NULL,             -- unix ms
    last_inbox_id  INTEGER NOT NULL,
    PRIMARY KEY (provider, payment_id)
) WITHOUT ROWID;
CREATE INDEX payments_paying ON payments (order_id) WHERE fulfilled = 1;

-- The outbox: what the shop's back office and admins must do. Exactly once per logical action.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('fulfil', 'refund', 'notify_customer', 'review')),
    order_id        TEXT,
    provider        TEXT    NOT NULL,
    payment_id      TEXT,
    amount_minor    INTEGER,
    currency        TEXT,
    reason          TEXT    NOT NULL,
    template        TEXT,
    customer_email  TEXT,
    idempotency_key TEXT    NOT NULL UNIQUE,
    inbox_id        INTEGER NOT NULL REFERENCES inbox (id),
    event_id        TEXT    NOT NULL,
    created_at      INTEGER NOT NULL             -- unix ms
);
CREATE INDEX outbox_by_kind ON outbox (kind, id);

-- migration: 3
-- The worker's claim walks unfinished rows in arrival order and stops after one batch; an
-- index holding only unfinished rows keeps that independent of how many rows are done.
CREATE INDEX inbox_due ON inbox (id) WHERE status IN ('pending', 'parked', 'processing');

-- migration: 4
-- When the worker first tried a row (the unmatched-order window runs from there, not from
-- arrival), and which endpoint (which provider account) an action belongs to.
ALTER TABLE inbox ADD COLUMN first_tried_at INTEGER;
ALTER TABLE outbox ADD COLUMN endpoint TEXT;

-- migration: 5
-- PayPal IPN rows are stored unverified; the worker posts them back to PayPal and records
-- here when PayPal answered VERIFIED (NULL: not verified by postback, or not an IPN row).
ALTER TABLE inbox ADD COLUMN verified_at INTEGER;

-- migration: 6
-- Pruning deletes finished inbox rows with their actions: find those actions by inbox row, and
-- let the foreign key check on each deleted inbox row use an index instead of a scan.
CREATE INDEX outbox_by_inbox ON outbox (inbox_id);

-- migration: 7
-- The idempotency keys of refunds, and of their notices, that pruning deleted from the outbox:
-- a payment's notification that comes back after its row was pruned must not be refunded twice.
CREATE TABLE outbox_spent_keys (
    idempotency_key TEXT PRIMARY KEY
) WITHOUT ROWID;

-- migration: 8
-- Bodies are stored compressed when that makes them smaller (src/store/body.rs): the encoding
-- (NULL: the raw bytes, as in every row written before this migration; 'lz4': an LZ4 block)
-- and the raw body's length, so that listings need not decompress.
ALTER TABLE inbox ADD COLUMN body_encoding TEXT;
ALTER TABLE inbox ADD COLUMN body_len INTEGER;

-- migration: 9
-- The same constraints and the same index, written with = and OR instead of IN: for an IN list
-- of three or more constants SQLite builds a temporary b-tree on every execution of a
-- statement, so each inbox insert and each decided row paid for several (about 4 µs each,
-- measured). Rows that met the old checks meet these; the index holds the same rows.
-- Changing a CHECK by rewriting the table's SQL is SQLite's documented procedure for it
-- (https://sqlite.org/lang_altertable.html, "other kinds of table schema changes"); the
-- schema is then reloaded (writable_schema = RESET) and the DDL below bumps its version, so
-- other connections reload it too.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (status IN (''pending'', ''processing'', ''done'', ''parked'', ''ignored'', ''rejected'', ''dead''))',
    'CHECK (status = ''pending'' OR status = ''processing'' OR status = ''done'' OR status = ''parked'' OR status = ''ignored'' OR status = ''rejected'' OR status = ''dead'')')
  WHERE type = 'table' AND name = 'inbox';
UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (status IN (''pending'', ''authorized'', ''succeeded'', ''failed'', ''canceled''))',
    'CHECK (status = ''pending'' OR status = ''authorized'' OR status = ''succeeded'' OR status = ''failed'' OR status = ''canceled'')')
  WHERE type = 'table' AND name = 'payments';
UPDATE sqlite_schema SET sql = replace(sql,
    'CHECK (kind IN (''fulfil'', ''refund'', ''notify_customer'', ''review''))',
    'CHECK (kind = ''fulfil'' OR kind = ''refund'' OR kind = ''notify_customer'' OR kind = ''review'')')
  WHERE type = 'table' AND name = 'outbox';
PRAGMA writable_schema = RESET;
DROP INDEX inbox_due;
CREATE INDEX inbox_due ON inbox (id) WHERE status = 'pending' OR status = 'parked' OR status = 'processing';

-- migration: 10
-- Actions decided in shadow mode (policy.mode = "shadow"): recorded for comparison with what
-- the shop's old integration did, never carried out. Their idempotency keys start with
-- "shadow:", so a live action never collides with one.
ALTER TABLE outbox ADD COLUMN shadow INTEGER NOT NULL DEFAULT 0;

-- migration: 11
-- Delivering actions to the shop's sinks ([[sink]]): one row per (action, sink) that takes it,
-- written in the same transaction as the action; its state moves pending → delivered, or
-- through retrying to dead. order_id is copied so that one order's actions go out in order.
CREATE TABLE deliveries (
    action_id    INTEGER NOT NULL REFERENCES outbox (id),
    sink         TEXT    NOT NULL,
    order_id     TEXT,
    state        TEXT    NOT NULL
        CHECK (state = 'pending' OR state = 'retrying' OR state = 'delivered' OR state = 'dead'),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,             -- unix ms: due from then (pending, retrying)
    last_error   TEXT,
    delivered_at INTEGER,                      -- unix ms
    created_at   INTEGER NOT NULL,             -- unix ms: when its action was written
    PRIMARY KEY (action_id, sink)
) WITHOUT ROWID;
CREATE INDEX deliveries_owed ON deliveries (sink, action_id)
    WHERE state = 'pending' OR state = 'retrying';
CREATE INDEX deliveries_owed_by_order ON deliveries (sink, order_id, action_id)
    WHERE state = 'pending' OR state = 'retrying';
-- Every attempt, for `outbox show`.
CREATE TABLE delivery_attempts (
    action_id   INTEGER NOT NULL,
    sink        TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,              -- unix ms
    duration_ms INTEGER NOT NULL,
    delivered   INTEGER NOT NULL,
    detail      TEXT,
    PRIMARY KEY (action_id, sink, attempt)
) WITHOUT ROWID;

-- migration: 12
-- The payment status API reads one order's payments and actions.
CREATE INDEX payments_by_order ON payments (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX outbox_by_order ON outbox (order_id) WHERE order_id IS NOT NULL;

-- migration: 13
-- Metrics read at scrape time, cheaply. When each endpoint last stored a notification (new or
-- a repeat): one row per endpoint, written with each batch, so "the provider went silent" is
-- known without scanning the inbox, and survives a restart.
CREATE TABLE endpoint_activity (
    endpoint       TEXT    PRIMARY KEY,
    last_stored_at INTEGER NOT NULL              -- unix ms
) WITHOUT ROWID;
INSERT INTO endpoint_activity (endpoint, last_stored_at)
    SELECT endpoint, max(last_received_at) FROM inbox GROUP BY endpoint;
-- Deliveries that gave up, per sink, counted without reading the delivered ones.
CREATE INDEX deliveries_dead ON deliveries (sink) WHERE state = 'dead';

-- migration: 14
-- Payments left open: pending, or authorized and not captured, for longer than the policy
-- allows get one review per status. open_reviewed records the status that was reviewed; the
-- index holds only open payments, so the periodic check reads a handful of rows.
ALTER TABLE payments ADD COLUMN open_reviewed TEXT;
CREATE INDEX payments_open ON payments (updated_at) WHERE status = 'pending' OR status = 'authorized';

-- migration: 15
-- How each row came: posted by the provider (webhook), listed from its API (backfill), or its
-- answer to an inquiry about a payment left open. A row fetched from the API is deduplicated
-- like any other; it never raises delivery_count, which counts the provider's deliveries.
-- (OR, not IN: an IN list of three constants in a CHECK costs a temporary b-tree per insert.)
ALTER TABLE inbox ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook'
    CHECK (source = 'webhook' OR source = 'backfill' OR source = 'inquiry');

-- migration: 16
-- Inquiries: a payment left open is looked up with its provider (an endpoint with API access)
-- now and then, a bounded number of times.
ALTER TABLE payments ADD COLUMN inquiries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN inquired_at INTEGER;                  -- unix ms
