-- A store as schema version 5 wrote it: the DDL is _SCHEMA of gateway/store/sqlite.py
-- at commit e884d65, followed by a few rows of every table. Loaded by tests/test_schema_upgrade.py.
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
-- value has no declared type so integers stay integers and floats stay floats; a spectrum is a
-- blob referring to its axis. data is unused (kept so version-1 files need no rewrite).
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
-- No secondary index: it would cost ~40 % of insert throughput; exports scan in commit order.
-- The very first version-1 files had one on (def_id, seq): an upgrade drops it.
DROP INDEX IF EXISTS sample_def_seq;
-- Spectral axes (e.g. Raman shift per pixel), once per calibration; key = digest of unit+values.
CREATE TABLE IF NOT EXISTS axis (
    key TEXT PRIMARY KEY,
    unit TEXT NOT NULL,
    points INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_ns INTEGER NOT NULL
) WITHOUT ROWID;
-- How far each sink has delivered, as the sample id (commit order) of its last delivered
-- sample: where it resumes after an outage or a restart. Only ever moves forward.
CREATE TABLE IF NOT EXISTS sink_cursor (
    sink TEXT PRIMARY KEY,
    delivered_id INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;
-- Ranges of sample ids a sink delivered *above* its cursor (live data sent while an older
-- backlog was still draining). They merge into the cursor once the gap below them is delivered.
CREATE TABLE IF NOT EXISTS sink_range (
    sink TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    PRIMARY KEY (sink, first_id)
) WITHOUT ROWID;
-- Samples the gateway had to drop (store full, a sink's retention): counted and kept as
-- evidence, one record per run of a signal's seq numbers with one reason.
CREATE TABLE IF NOT EXISTS loss (
    id INTEGER PRIMARY KEY,
    recorded_ns INTEGER NOT NULL,
    signal TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS loss_by_signal ON loss (signal, id);
-- Schema 5. Each run of the store budget (gateway/store/prune.py): the sample ids it removes
-- (a contiguous range, oldest first), the archive file it wrote them to first (name in the
-- archive folder, SHA-256 and size; null without an archive) and its state: 'archiving' (file
-- being written, nothing deleted), 'pruning' (file complete, rows being deleted), 'done', or
-- 'abandoned' (stopped before anything was deleted; its file, if any, removed). Only the
-- sample table is ever pruned: this record, losses, cursors and future audit tables stay.
CREATE TABLE IF NOT EXISTS prune_run (
    id INTEGER PRIMARY KEY,
    started_ns INTEGER NOT NULL,
    finished_ns INTEGER,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    archive_file TEXT,
    archive_sha256 TEXT,
    archive_bytes INTEGER,
    state TEXT NOT NULL
);
-- Per signal, the seq span and count of the samples a run removed.
CREATE TABLE IF NOT EXISTS prune_signal (
    run_id INTEGER NOT NULL,
    signal TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, signal)
) WITHOUT ROWID;

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
-- Spectra (schema 2 on): a 4-point axis, and two spectra referring to it by key.
INSERT INTO signal (name, next_seq) VALUES ('r1/raman/spectrum', 2);
INSERT INTO signal_def (id, name, unit, kind, description, instrument, created_ns) VALUES
    (4, 'r1/raman/spectrum', '{counts}', 'spectrum', '', 'raman', 1764000000000000000);
INSERT INTO axis (key, unit, points, data, created_ns) VALUES (
    'c532ecb7e7926285533443c607aa671a', 'cm-1', 4,
    X'000000000000794000000000000089400000000000c092400000000000009940', 1764000000000000000
);
INSERT INTO sample (id, def_id, seq, source_ts, gateway_ts, quality, value, reason) VALUES
    (7, 4, 0, 1764000001200000000, 1764000001200000500, 2,
     X'53504331c532ecb7e7926285533443c607aa671a0000803f000000400000404000008040', NULL),
    (8, 4, 1, 1764000001300000000, 1764000001300000500, 2,
     X'53504331c532ecb7e7926285533443c607aa671a0000a0400000c0400000e04000000041', NULL);
-- Sink cursors (schema 3 on).
INSERT INTO sink_cursor (sink, delivered_id, updated_ns) VALUES ('mqtt', 3, 1764000002000000000);
-- Delivered ranges above a cursor (schema 4).
INSERT INTO sink_range (sink, first_id, last_id) VALUES ('mqtt', 5, 6);
-- A store budget's run (schema 5), abandoned before it deleted anything.
INSERT INTO prune_run (id, started_ns, finished_ns, first_id, last_id, samples, archive_file,
    archive_sha256, archive_bytes, state) VALUES
    (1, 1764000003000000000, 1764000003100000000, 1, 2, 2, NULL, NULL, NULL, 'abandoned');
INSERT INTO prune_signal (run_id, signal, first_seq, last_seq, count) VALUES
    (1, 'r1/pump/flow', 0, 0, 1);
PRAGMA user_version = 5;
