-- A sweep's own MLflow run (its trials' runs are its children): the run's uuid. Sweeps made
-- before this schema have none and keep working without one.
ALTER TABLE sweeps ADD COLUMN run_uuid TEXT;
