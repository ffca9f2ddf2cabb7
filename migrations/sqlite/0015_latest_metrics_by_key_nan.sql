-- A metric's runs by value, numbers apart from NaN: a search ordered by a metric walks the runs
-- whose value is a number (`key = ? AND is_nan = 0 ORDER BY value`) in this index alone, and a
-- comparison (`is_nan = 0 AND value > ?`) is a range of it, without a lookup of each row for its
-- NaN flag.
DROP INDEX latest_metrics_by_key;
CREATE INDEX latest_metrics_by_key ON latest_metrics (key, is_nan, value);
