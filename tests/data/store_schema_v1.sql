-- A store as schema version 1 wrote it: the DDL is _SCHEMA of gateway/store/sqlite.py
-- at commit 63ef45a, followed by a few rows of every table. Loaded by tests/test_schema_upgrade.py.
CREATE TABLE IF NOT EXISTS signal (
    name TEXT PRIMARY KEY,
    next_seq INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signal_def (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL REFERENCES signal(name),
    unit TEXT NOT NULL,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    instrument TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    UNIQUE (name, unit, kind, description, instrument)
);
-- id is the commit order: the cursor upstream sinks resume from.
-- value has no declared type so integers stay integers and floats stay floats.
CREATE TABLE IF NOT EXISTS sample (
    id INTEGER PRIMARY KEY,
    def_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    source_ts INTEGER NOT NULL,
    gateway_ts INTEGER NOT NULL,
    quality INTEGER NOT NULL,
    value,
    reason TEXT,
    data BLOB
);
CREATE INDEX IF NOT EXISTS sample_def_seq ON sample (def_id, seq);
-- Samples the gateway had to drop (store full): counted and kept as evidence.
CREATE TABLE IF NOT EXISTS loss (
    id INTEGER PRIMARY KEY,
    recorded_ns INTEGER NOT NULL,
    signal TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL
);

INSERT INTO signal (name, next_seq) VALUES ('r1/pump/flow', 4), ('r1/pump/mode', 2);
INSERT INTO signal_def (id, name, unit, kind, description, instrument, created_ns) VALUES
    (1, 'r1/pump/flow', 'mL/min', 'scalar', 'feed flow', 'pump', 1764000000000000000),
    (2, 'r1/pump/mode', '1', 'scalar', '', 'pump', 1764000000000000000),
    (3, 'r1/pump/flow', 'L/h', 'scalar', 'feed flow', 'pump', 1764000001000000000);
INSERT INTO sample (id, def_id, seq, source_ts, gateway_ts, quality, value, reason) VALUES
    (1, 1, 0, 1764000000100000000, 1764000000100000500, 2, 48.5, NULL),
    (2, 2, 0, 1764000000100000000, 1764000000100000600, 2, 3, NULL),
    (3, 1, 1, 1764000000200000000, 1764000000200000500, 1, 48.25, 'drift'),
    (4, 2, 1, 1764000000200000000, 1764000000200000600, 2, 'auto', NULL),
    (5, 1, 2, 1764000000300000000, 1764000000300000500, 0, NULL, 'No response received'),
    (6, 3, 3, 1764000001100000000, 1764000001100000500, 2, 2.91, NULL);
INSERT INTO loss (id, recorded_ns, signal, first_seq, last_seq, count, reason) VALUES
    (1, 1764000002000000000, 'r1/pump/mode', 2, 9, 8, 'drop_newest: store full');
PRAGMA user_version = 1;
