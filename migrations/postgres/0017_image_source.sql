-- The source an image was made of, as its job names it: a job that images several sources
-- (a whole machine) keeps a chain per source. Images stored before have none: they belong
-- to the job's one source.
ALTER TABLE images ADD COLUMN source TEXT;
