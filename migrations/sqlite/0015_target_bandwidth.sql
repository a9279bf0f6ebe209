-- A target's bandwidth limit with time windows (e.g. 20M@mon-fri/08:00-18:00,unlimited):
-- agents hold their transfers to and from the target to it.
ALTER TABLE targets ADD COLUMN bandwidth TEXT;
