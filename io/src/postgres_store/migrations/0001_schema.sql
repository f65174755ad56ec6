-- Rockhound's server tables on PostgreSQL, version 1: the seed's seven tables (sync_queue,
-- sync_conflicts, sync_batches, sync_state, sync_history, sync_metrics,
-- sync_idempotency_keys) plus the entities and the per-user commit counts.
--
-- Each row is kept whole as JSON (`row`, `state`, `record`: exactly what the engine wrote,
-- control characters included, which is why the type is json and not jsonb); the columns
-- beside it are its keys and, generated from it, the fields a person filters on.
--
-- Row-level security confines every statement to one user: the store sets
-- `rockhound.user_id` at the start of each user's part of a transaction, and the policies
-- below let a statement see and write that user's rows only. FORCE makes them apply to the
-- tables' owner too; a superuser or a BYPASSRLS role would skip them, so the store refuses
-- to run as one.

CREATE FUNCTION rockhound_user() RETURNS text LANGUAGE sql STABLE AS
$$ SELECT current_setting('rockhound.user_id', true) $$;

CREATE FUNCTION rockhound_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TABLE entities (
    entity_type text NOT NULL,
    entity_id text NOT NULL,
    user_id text NOT NULL,
    cursor bigint NOT NULL,
    state json NOT NULL,
    version bigint GENERATED ALWAYS AS ((state ->> 'version')::bigint) STORED,
    deleted boolean GENERATED ALWAYS AS ((state ->> 'deleted')::boolean) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_type, entity_id));
CREATE INDEX entities_by_cursor ON entities (user_id, cursor);

CREATE TABLE sync_queue (
    user_id text NOT NULL,
    op_id text NOT NULL,
    row json NOT NULL,
    entity_type text GENERATED ALWAYS AS (row ->> 'entity_type') STORED,
    entity_id text GENERATED ALWAYS AS (row ->> 'entity_id') STORED,
    status text GENERATED ALWAYS AS (row ->> 'status') STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, op_id));
CREATE INDEX sync_queue_by_status ON sync_queue (user_id, status);
CREATE INDEX sync_queue_by_entity ON sync_queue (entity_type, entity_id);

CREATE TABLE sync_idempotency_keys (
    user_id text NOT NULL,
    idempotency_key text NOT NULL,
    record json NOT NULL,
    at_ms bigint GENERATED ALWAYS AS ((record ->> 'at_ms')::bigint) STORED,
    PRIMARY KEY (user_id, idempotency_key));
CREATE INDEX sync_idempotency_keys_by_age ON sync_idempotency_keys (at_ms);

-- The audit trail, partitioned by month of the server's clock (`created_at`); the store
-- creates each month's partition before it writes a row into it, and the months ahead
-- at start. The default partition takes a row whose month has none (a clock far off).
CREATE TABLE sync_history (
    user_id text NOT NULL,
    seq bigint NOT NULL,
    row json NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, seq, created_at)) PARTITION BY RANGE (created_at);
CREATE TABLE sync_history_default PARTITION OF sync_history DEFAULT;

CREATE FUNCTION rockhound_history_partition(month timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    first timestamptz := date_trunc('month', month);
    name text := 'sync_history_' || to_char(first AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF sync_history FOR VALUES FROM (%L) TO (%L)',
            name, first, first + interval '1 month');
        -- Read through sync_history (whose policy applies), never on its own.
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', name);
    END IF;
    RETURN name;
END $$;

CREATE TABLE sync_conflicts (
    conflict_id text PRIMARY KEY,
    user_id text NOT NULL,
    created_seq bigint NOT NULL,
    record json NOT NULL,
    entity_type text GENERATED ALWAYS AS (record ->> 'entity_type') STORED,
    entity_id text GENERATED ALWAYS AS (record ->> 'entity_id') STORED,
    strategy text GENERATED ALWAYS AS (record ->> 'strategy') STORED,
    status text GENERATED ALWAYS AS (record ->> 'status') STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX sync_conflicts_by_user ON sync_conflicts (user_id, created_seq);
CREATE INDEX sync_conflicts_open ON sync_conflicts (user_id) WHERE status = 'open';

CREATE TABLE sync_batches (
    user_id text NOT NULL,
    batch_id text NOT NULL,
    record json NOT NULL,
    device_id text GENERATED ALWAYS AS (record ->> 'device_id') STORED,
    op_count bigint GENERATED ALWAYS AS ((record ->> 'op_count')::bigint) STORED,
    checksum text GENERATED ALWAYS AS (record ->> 'checksum') STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, batch_id));

CREATE TABLE sync_state (
    user_id text NOT NULL,
    device_id text NOT NULL,
    state json NOT NULL,
    pull_cursor bigint GENERATED ALWAYS AS ((state ->> 'pull_cursor')::bigint) STORED,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id));

CREATE TABLE sync_metrics (
    user_id text NOT NULL,
    window_start_ms bigint NOT NULL,
    window_row json NOT NULL,
    PRIMARY KEY (user_id, window_start_ms));

-- Each user's commit count (their cursors, history rows and conflict ids count from it).
-- Not confined by a policy: it is the list of users the store reads back at start, one
-- user at a time. It holds no row data.
CREATE TABLE user_seqs (user_id text PRIMARY KEY, seq bigint NOT NULL);
CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);

CREATE TRIGGER entities_touch BEFORE UPDATE ON entities
    FOR EACH ROW EXECUTE FUNCTION rockhound_touch();
CREATE TRIGGER sync_queue_touch BEFORE UPDATE ON sync_queue
    FOR EACH ROW EXECUTE FUNCTION rockhound_touch();
CREATE TRIGGER sync_conflicts_touch BEFORE UPDATE ON sync_conflicts
    FOR EACH ROW EXECUTE FUNCTION rockhound_touch();
CREATE TRIGGER sync_batches_touch BEFORE UPDATE ON sync_batches
    FOR EACH ROW EXECUTE FUNCTION rockhound_touch();
CREATE TRIGGER sync_state_touch BEFORE UPDATE ON sync_state
    FOR EACH ROW EXECUTE FUNCTION rockhound_touch();

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['entities', 'sync_queue', 'sync_idempotency_keys',
        'sync_history', 'sync_history_default', 'sync_conflicts', 'sync_batches',
        'sync_state', 'sync_metrics']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY own_rows ON %I USING (user_id = rockhound_user()) '
            'WITH CHECK (user_id = rockhound_user())', t);
    END LOOP;
END $$;

-- For a person reading the database: each user's open conflicts, and each device's
-- state beside its user's counts (what GET /api/sync/state answers).
CREATE VIEW open_sync_conflicts WITH (security_invoker = true) AS
    SELECT user_id, conflict_id, entity_type, entity_id, strategy, created_seq, created_at
    FROM sync_conflicts WHERE status = 'open';
CREATE VIEW sync_state_summary WITH (security_invoker = true) AS
    SELECT s.user_id, s.device_id, s.pull_cursor,
        (SELECT max(cursor) FROM entities e WHERE e.user_id = s.user_id) AS latest_cursor,
        (SELECT count(*) FROM sync_conflicts c
            WHERE c.user_id = s.user_id AND c.status = 'open') AS open_conflicts
    FROM sync_state s;

-- The seed's cleanup_old_sync_data, for an operator: the rows the server's own cleanup
-- removes (docs/database.md), given the server's clock, its retentions and the metrics
-- window, in milliseconds.
-- Confined to the current user like every statement. The server runs the same rule
-- itself (its tables are cached in memory) and a test checks that both remove the same.
CREATE FUNCTION cleanup_old_sync_data(now_ms bigint, key_retention_ms bigint,
    history_retention_ms bigint, metrics_window_ms bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    key_cutoff bigint := greatest(now_ms - key_retention_ms, 0);
    cutoff bigint := greatest(now_ms - history_retention_ms, 0);
    removed bigint := 0;
    n bigint;
BEGIN
    DELETE FROM sync_idempotency_keys WHERE at_ms < key_cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM sync_history WHERE (row ->> 'at_ms')::bigint < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM sync_conflicts WHERE status = 'resolved'
        AND coalesce((record ->> 'resolved_at_ms')::bigint, -1) < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM sync_batches WHERE (record ->> 'received_at_ms')::bigint < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    DELETE FROM sync_metrics WHERE window_start_ms + metrics_window_ms < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT; removed := removed + n;
    RETURN removed;
END $$;
