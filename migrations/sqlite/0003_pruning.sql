-- Pruning: why a running trial was told to stop (a pruner's verdict, with its step), so that the
-- agent's "stopped" report becomes "pruned", and the step it was judged at.
ALTER TABLE trials ADD COLUMN stop_reason TEXT;
ALTER TABLE trials ADD COLUMN pruned_step INTEGER;
