-- The links of a job (its target, its site, its agents) and of a site (its default target)
-- become columns and a join table with foreign keys, so that the database itself refuses
-- to delete a target or site that a job or site still uses. The JSON spec keeps them too
-- (it is what the API shows and exports); the store writes both in one transaction.
-- Existing links are carried over from the JSON.
ALTER TABLE jobs ADD COLUMN target_id BIGINT REFERENCES targets(id);
ALTER TABLE jobs ADD COLUMN site_id BIGINT REFERENCES sites(id);
ALTER TABLE sites ADD COLUMN target_id BIGINT REFERENCES targets(id);

CREATE TABLE job_agents (
    job_id    BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    agent_id  BIGINT NOT NULL REFERENCES agents(id),
    PRIMARY KEY (job_id, agent_id)
);
CREATE INDEX job_agents_by_agent ON job_agents (agent_id);
CREATE INDEX jobs_by_target ON jobs (target_id);
CREATE INDEX jobs_by_site ON jobs (site_id);
CREATE INDEX sites_by_target ON sites (target_id);

UPDATE jobs SET target_id = t.id FROM targets t
    WHERE jsonb_typeof(jobs.spec::jsonb -> 'target_id') = 'number'
      AND t.id = (jobs.spec::jsonb ->> 'target_id')::bigint;
UPDATE jobs SET site_id = s.id FROM sites s
    WHERE jsonb_typeof(jobs.spec::jsonb -> 'site_id') = 'number'
      AND s.id = (jobs.spec::jsonb ->> 'site_id')::bigint;
UPDATE sites SET target_id = t.id FROM targets t
    WHERE jsonb_typeof(sites.defaults::jsonb -> 'target_id') = 'number'
      AND t.id = (sites.defaults::jsonb ->> 'target_id')::bigint;
INSERT INTO job_agents (job_id, agent_id)
    SELECT DISTINCT jobs.id, g.id FROM jobs
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(jobs.spec::jsonb -> 'agents') = 'array'
             THEN jobs.spec::jsonb -> 'agents' ELSE '[]'::jsonb END) AS a(value)
    JOIN agents g ON g.id = a.value::bigint
    ON CONFLICT DO NOTHING;
