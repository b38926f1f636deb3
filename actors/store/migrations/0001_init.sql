-- Courier's PostgreSQL schema, version 1. Uids and keys are bytea: the
-- protocol allows any bytes in them, text would refuse some.
-- Times are Unix milliseconds (bigint); a NULL expiry never expires.

-- One row per identity ever loaded: its owner epoch (bumped by every
-- activation; writes are conditional on it), its meta (IdentityMeta:
-- last seq, session) and the lease of the inbox expiry sweep.
CREATE TABLE courier_identities (
    app         INTEGER NOT NULL,
    uid         BYTEA   NOT NULL,
    owner       BIGINT  NOT NULL,
    meta        BYTEA,
    sweep_after BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (app, uid)
);

-- Undelivered messages (InboxEntry) by seq.
CREATE TABLE courier_inbox (
    app        INTEGER NOT NULL,
    uid        BYTEA   NOT NULL,
    seq        BIGINT  NOT NULL,
    expires_at BIGINT,
    entry      BYTEA   NOT NULL,
    PRIMARY KEY (app, uid, seq)
);
-- The expiry sweep walks this index from the earliest expiry (keyset
-- pagination on all four columns).
CREATE INDEX courier_inbox_expiry ON courier_inbox (expires_at, app, uid, seq);

-- Idempotency records of pushes and C2C-dedup records
-- (IdempotencyRecord).
CREATE TABLE courier_idempotency (
    app        INTEGER NOT NULL,
    uid        BYTEA   NOT NULL,
    key        BYTEA   NOT NULL,
    expires_at BIGINT,
    record     BYTEA   NOT NULL,
    PRIMARY KEY (app, uid, key)
);
CREATE INDEX courier_idempotency_expiry ON courier_idempotency (expires_at);

-- Versioned documents shared by the nodes (the access lists).
CREATE TABLE courier_documents (
    name    TEXT   NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL,
    doc     BYTEA  NOT NULL
);
