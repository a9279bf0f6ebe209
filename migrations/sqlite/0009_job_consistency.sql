-- A job names how a mounted source is made consistent (`consistency`) instead of a `live`
-- flag. Existing jobs keep what they did: live stays live, and the others remounted the
-- source read-only, which is now `lock`.
UPDATE jobs SET spec = REPLACE(REPLACE(spec, '"live":true', '"consistency":"live"'), '"live":false', '"consistency":"lock"');
