-- The links of a job (its target, its site, its agents) and of a site (its default target)
-- become columns and a join table with foreign keys, so that the database itself refuses
-- to delete a target or site that a job or site still uses. The JSON spec keeps them too
-- (it is what the API shows and exports); the store writes both in one transaction.
-- Existing links are carried over from the JSON.
ALTER TABLE jobs ADD COLUMN target_id INTEGER REFERENCES targets(id);
ALTER TABLE jobs ADD COLUMN site_id INTEGER REFERENCES sites(id);
ALTER TABLE sites ADD COLUMN target_id INTEGER REFERENCES targets(id);

CREATE TABLE job_agents (
    job_id    INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    agent_id  INTEGER NOT NULL REFERENCES agents(id),
    PRIMARY KEY (job_id, agent_id)
);
CREATE INDEX job_agents_by_agent ON job_agents (agent_id);
CREATE INDEX jobs_by_target ON jobs (target_id);
CREATE INDEX jobs_by_site ON jobs (site_id);
CREATE INDEX sites_by_target ON sites (target_id);

UPDATE jobs SET target_id = json_extract(spec, '$.target_id')
    WHERE EXISTS (SELECT 1 FROM targets t WHERE t.id = json_extract(jobs.spec, '$.target_id'));
UPDATE jobs SET site_id = json_extract(spec, '$.site_id')
    WHERE EXISTS (SELECT 1 FROM sites s WHERE s.id = json_extract(jobs.spec, '$.site_id'));
UPDATE sites SET target_id = json_extract(defaults, '$.target_id')
    WHERE EXISTS (SELECT 1 FROM targets t WHERE t.id = json_extract(sites.defaults, '$.target_id'));
INSERT OR IGNORE INTO job_agents (job_id, agent_id)
    SELECT jobs.id, a.value FROM jobs, json_each(jobs.spec, '$.agents') AS a
    WHERE json_type(jobs.spec, '$.agents') = 'array'
      AND EXISTS (SELECT 1 FROM agents g WHERE g.id = a.value);
