-- What the dashboard and the alerts read over many runs, answered from indexes alone
-- (a run row carries its report, so scanning the table reads every report):
-- runs by end time with what the daily totals sum, each agent's last success, and the
-- bytes kept per target.
CREATE INDEX runs_by_end ON runs (ended_at, state, started_at, bytes_written);
CREATE INDEX runs_success_by_agent ON runs (state, agent_id, ended_at);
CREATE INDEX images_kept_by_target ON images (target_id, bytes) WHERE deleted_at IS NULL;
