-- partman.switch_split(plan, lock_timeout_ms, dry_run): step 4 of a split, one attempt, in the
-- caller's transaction (which commits right after): LOCK the parent and the source ACCESS
-- EXCLUSIVE under lock_timeout, check that both targets and (for an attached source) the enabled
-- mirror are still there, DETACH the source (DETACH .. FINALIZE when it is DETACH PENDING, nothing
-- when it is detached), ATTACH both targets (their CHECKs make ATTACH skip the validation scan),
-- drop the CHECKs, the trigger and its function, rename the source `<name>_split_old`. Only
-- catalog work: writers wait the lock wait plus a few milliseconds, and there is no instant at
-- which a hash value has no partition (the transaction is atomic). The old table is dropped in
-- its own transaction afterwards (partman.drop_retired): a DROP of a big table makes its COMMIT
-- drop the buffers and truncate the files (0.1-0.4 s for a million rows), which nobody needs to
-- wait for. The non-concurrent DETACH locks the parent, so every writer, not only this slice's,
-- waits for these milliseconds.
-- DETACH .. CONCURRENTLY is NOT used: it cannot run in a transaction block, and from its first
-- commit the partition is DETACH PENDING, which PostgreSQL already hides from new inserts ("no
-- partition of relation found for row") and reads, while the targets cannot be attached before
-- the detach ends (their bounds would overlap). It would open a gap; this switch never does.
--
-- Inputs: the plan, the lock wait, dry_run. Output: the clock_timestamp() at which the locks were
-- granted. Errors: lock_not_available when the locks are not granted within lock_timeout (the
-- caller retries with back-off, so a long transaction never makes writers queue behind the
-- switch for longer); PM001 when a target or the mirror disappeared during the copy (rolled
-- back; `--resume` makes them again). Locks: ACCESS EXCLUSIVE on the parent and the source until
-- the caller's commit.
create or replace function partman.switch_split(plan jsonb, lock_timeout_ms integer, dry_run boolean)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    granted timestamptz;
    statements text[] := '{}'::text[];
    statement text;
    i integer := 0;
begin
    perform set_config('lock_timeout', lock_timeout_ms || 'ms', true);
    perform partman.run(format('lock table %s in access exclusive mode', plan->>'parent'), dry_run);
    perform partman.run(format('lock table %s in access exclusive mode', plan->>'source'), dry_run);
    granted := clock_timestamp();
    if not dry_run then
        if (select count(*) from pg_class as c join pg_constraint as k on k.conrelid = c.oid and k.contype = 'c'
            and k.conname = c.relname || '_split_check' where not c.relispartition
            and c.oid in (to_regclass(plan->>'low'), to_regclass(plan->>'high'))) <> 2 then
            perform partman.refuse(format('switch: a target of %s disappeared during the copy; run '
                                          '`pgvote partitions split --resume` to make it again', plan->>'source_name'));
        end if;
        if plan->>'state' = 'attached' and not exists (
            select from pg_trigger as t where t.tgrelid = (plan->>'source_oid')::oid
            and t.tgname = 'pgvote_split_mirror' and t.tgenabled in ('O', 'A')) then
            perform partman.refuse(format('switch: the mirror trigger on %s was dropped or disabled during the copy; '
                                          'run `pgvote partitions split --resume` to copy again', plan->>'source_name'));
        end if;
    end if;
    if plan->>'state' = 'attached' then
        statements := statements || format('alter table %s detach partition %s', plan->>'parent', plan->>'source');
    elsif plan->>'state' = 'detach pending' then
        statements := statements || format('alter table %s detach partition %s finalize', plan->>'parent', plan->>'source');
    end if;
    statements := statements
        || format('alter table %s attach partition %s for values with (modulus %s, remainder %s)', plan->>'parent',
                  plan->>'low', plan->'low_slice'->>0, plan->'low_slice'->>1)
        || format('alter table %s attach partition %s for values with (modulus %s, remainder %s)', plan->>'parent',
                  plan->>'high', plan->'high_slice'->>0, plan->'high_slice'->>1)
        || format('alter table %s drop constraint %I', plan->>'low', plan->>'low_name' || '_split_check')
        || format('alter table %s drop constraint %I', plan->>'high', plan->>'high_name' || '_split_check');
    if plan->>'state' = 'attached' then
        statements := statements || format('drop trigger if exists pgvote_split_mirror on %s', plan->>'source');
    end if;
    statements := statements
        || format('drop function if exists %s()', plan->>'mirror_function')
        || format('alter table %s rename to %I', plan->>'source', plan->>'retired_name');
    foreach statement in array statements loop
        perform partman.run(statement, dry_run);
        i := i + 1;
        if i = 1 and not dry_run then
            perform partman.crash_point('switch');
        end if;
    end loop;
    return granted;
end
$function$;
