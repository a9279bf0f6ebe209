-- An agent's own bandwidth limit with time windows, set on the console: every transfer of
-- the machine to and from targets is held to it (and to the target's, the lower applies).
ALTER TABLE agents ADD COLUMN bandwidth TEXT;
