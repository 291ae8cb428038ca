-- Knutepunkt's store on PostgreSQL, layout 1. Applied at start by refinery
-- (schema history in refinery_schema_history). Never edit an applied file:
-- add V2__... instead. ARCHITECTURE.md ("The PostgreSQL backend") explains
-- every table and who writes it.

-- The commit-order sequencer: one row. Writers take
-- pg_advisory_xact_lock(7403251) first, so group transactions commit one
-- after another in seq order.
CREATE TABLE kp_sequencer (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    last_seq   BIGINT NOT NULL,
    last_audit BIGINT NOT NULL
);
INSERT INTO kp_sequencer VALUES (1, 0, 0);

-- The log: one row per accepted event; seq = meta.lastUpdated in µs.
CREATE TABLE kp_events (
    seq          BIGINT PRIMARY KEY,
    municipality INTEGER NOT NULL,
    rtype        SMALLINT NOT NULL,
    id           UUID NOT NULL,
    vendor       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    content_hash BYTEA NOT NULL,
    patient      BYTEA NOT NULL,
    class        SMALLINT NOT NULL,
    category     TEXT NOT NULL,
    is_alarm     BOOLEAN NOT NULL,
    -- seq of the alarm a note answers.
    answers      BIGINT,
    -- Parallel arrays: (system, code) of every coding, for token search.
    code_systems TEXT[] NOT NULL,
    code_values  TEXT[] NOT NULL,
    -- The resource as normalize made it (meta is spliced in on read).
    json         TEXT NOT NULL
);
CREATE INDEX kp_events_type ON kp_events (municipality, rtype, seq);
CREATE INDEX kp_events_patient ON kp_events (municipality, rtype, patient, seq);
CREATE INDEX kp_events_codes ON kp_events USING GIN (code_values);
CREATE INDEX kp_events_id ON kp_events (id);
-- Floors and pending counts walk one municipality's log in seq order.
CREATE INDEX kp_events_org ON kp_events (municipality, seq);
-- Consumers read routine items by (municipality, seq) and find alarms here,
-- never by scanning routine rows.
CREATE INDEX kp_events_routine ON kp_events (municipality, seq) WHERE class = 2;
CREATE INDEX kp_events_urgent ON kp_events (municipality, class, seq) WHERE class < 2;

-- Idempotency: one row per (vendor, event_id), pointing at the event stored
-- under it last. The primary key is the unique constraint across hubs.
CREATE TABLE kp_ids (
    vendor       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    content_hash BYTEA NOT NULL,
    municipality INTEGER NOT NULL,
    rtype        SMALLINT NOT NULL,
    is_alarm     BOOLEAN NOT NULL,
    PRIMARY KEY (vendor, event_id)
);
CREATE INDEX kp_ids_seq ON kp_ids (seq);

-- Destinations as consumers of the log: start and durable ack floor.
CREATE TABLE kp_consumers (
    name            TEXT PRIMARY KEY,
    municipality    INTEGER NOT NULL,
    escalation_only BOOLEAN NOT NULL,
    start_seq       BIGINT NOT NULL,
    floor_seq       BIGINT NOT NULL
);

-- Settled above the floor (log items), or the final state of an item that
-- came from the explicit queue. kind: 1 delivered, 2 dead-lettered.
CREATE TABLE kp_settled (
    consumer TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    kind     SMALLINT NOT NULL,
    at       BIGINT NOT NULL,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX kp_settled_seq ON kp_settled (seq);

-- Alarms handed to the consumer's fallback already (once each).
CREATE TABLE kp_escalated (
    consumer TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX kp_escalated_seq ON kp_escalated (seq);

-- Items handed to a consumer by name: escalations, replayed dead letters.
CREATE TABLE kp_queue (
    consumer TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX kp_queue_seq ON kp_queue (seq);

-- Pull leases, shared by every hub: an item leased until lease_until is
-- offered by no hub before then.
CREATE TABLE kp_leases (
    consumer    TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    hub_id      TEXT NOT NULL,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX kp_leases_hub ON kp_leases (hub_id);

CREATE TABLE kp_dead_letters (
    consumer       TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    class          SMALLINT NOT NULL,
    attempts       INTEGER NOT NULL,
    error          TEXT NOT NULL,
    response       TEXT,
    at             BIGINT NOT NULL,
    discarded_at   BIGINT,
    discard_reason TEXT,
    PRIMARY KEY (consumer, seq)
);
CREATE INDEX kp_dead_letters_seq ON kp_dead_letters (seq);

-- The audit trail; seq = time in µs, strictly increasing across hubs.
CREATE TABLE kp_audit (
    seq          BIGINT PRIMARY KEY,
    municipality INTEGER NOT NULL,
    patients     BYTEA[] NOT NULL,
    record       JSONB NOT NULL
);
CREATE INDEX kp_audit_org ON kp_audit (municipality, seq);
CREATE INDEX kp_audit_patients ON kp_audit USING GIN (patients);

-- Used assertion ids (jti), until exp (Unix seconds).
CREATE TABLE kp_jti (
    client TEXT NOT NULL,
    jti    TEXT NOT NULL,
    exp    BIGINT NOT NULL,
    PRIMARY KEY (client, jti)
);
