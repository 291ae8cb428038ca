-- Push delivery leases: exactly one hub delivers to each push destination.
-- The holder renews lease_until (a heartbeat every 2 s, 6 s long); when it
-- runs out another hub takes the row and delivers from the durable floor.
CREATE TABLE kp_push_leases (
    consumer    TEXT PRIMARY KEY,
    hub_id      TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
