-- Several trials per GPU: the GPUs (and memory) a lease holds, so that a retried lease request
-- answers with the same placement, and a trial's out-of-memory exits, each of which doubles
-- the memory it asks for next time.

ALTER TABLE leases ADD COLUMN gpus TEXT;
ALTER TABLE trials ADD COLUMN ooms INTEGER NOT NULL DEFAULT 0;
