-- A run that is not an imaging job's: what it does (a restore of files or of a volume from
-- an image), as JSON without secrets; those are opened from the vault when the order is made.
ALTER TABLE runs ADD COLUMN task TEXT;
