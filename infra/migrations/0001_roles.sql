-- Application roles. One per side of the system, so a bug (or an attacker) in one side
-- cannot touch what that side has no business touching:
--   voteledger_command   appends events, maintains vote slots, idempotency keys, agents, items
--   voteledger_projector reads events, writes read models and checkpoints
--   voteledger_query     reads read models only (never the ledger)
-- Roles are cluster-wide while grants are per database, so creation must tolerate roles that a
-- migration of another database (or a concurrent one) already created.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['voteledger_command', 'voteledger_projector', 'voteledger_query'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
        -- A forgotten open transaction holds every projection back (see events read order),
        -- so the application roles never keep one open for long.
        EXECUTE format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', r, '30s');
    END LOOP;
END
$$;

-- Nothing is granted by default: each later migration grants exactly what a role needs.
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO voteledger_command, voteledger_projector, voteledger_query;
