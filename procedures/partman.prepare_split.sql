-- partman.prepare_split(plan, lock_timeout_ms, dry_run): step 1 of a split, one short transaction
-- (the caller's): create the targets unattached, `LIKE parent INCLUDING ALL` (same columns,
-- primary key and indexes, so ATTACH adopts the indexes instead of building them), each with
-- CHECK (satisfies_hash_partition(parent, 2m, r', key)) named `<target>_split_check`, so that
-- ATTACH sees its partition constraint implied and skips the validation scan; owned by the
-- parent's owner. In the same transaction the mirror trigger goes on the source
-- (partman.mirror_ddl), when the source is attached: a detached or DETACH PENDING source receives
-- no writes through the parent (and PostgreSQL refuses ALTER TABLE on a pending one).
-- Resuming, it completes what exists: targets made by a split are kept; when the mirror was
-- dropped or disabled meanwhile, the targets are emptied (copies made while no mirror ran may be
-- stale) and the mirror is made again.
--
-- Inputs: the plan (partman.split_plan), the lock wait per attempt, dry_run (print, change
-- nothing, assume nothing exists yet). Output: none. Errors: PM001 when a table of a target's
-- name exists and was not made by a split (or is attached), or after 40 attempts at the locks.
-- Locks: ACCESS EXCLUSIVE on the source (CREATE TRIGGER takes SHARE ROW EXCLUSIVE) and the
-- parent's ACCESS SHARE, each attempt bounded by lock_timeout and retried with back-off, so
-- writers never queue behind it for longer than that.
create or replace function partman.prepare_split(plan jsonb, lock_timeout_ms integer, dry_run boolean) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    name text;
    made text[] := '{}'::text[];
    missing text[] := '{}'::text[];
    mirrored boolean := false;
    statements text[] := '{}'::text[];
    statement text;
    needs_mirror boolean := plan->>'state' = 'attached';
    target record;
    attempt integer := 0;
begin
    foreach name in array array[plan->>'low_name', plan->>'high_name'] loop
        select c.relispartition as attached,
               exists (select from pg_constraint as k where k.conrelid = c.oid and k.contype = 'c'
                       and k.conname = name || '_split_check') as marked
        into target from pg_class as c where c.oid = to_regclass(format('%I.%I', plan->>'schema', name));
        if dry_run and not exists (select from partman.unfinished((plan->>'parent')::regclass)) then
            missing := missing || name;
        elsif target is null then
            missing := missing || name;
        elsif target.attached or not target.marked then
            perform partman.refuse(format('%s.%s exists and was not made by `split` (or is attached): rename or drop it first',
                                          plan->>'schema', name));
        else
            made := made || name;
        end if;
    end loop;
    mirrored := exists (select from pg_trigger as t where t.tgrelid = (plan->>'source_oid')::oid
                        and t.tgname = 'pgvote_split_mirror' and t.tgenabled in ('O', 'A'));
    if cardinality(missing) = 0 and (mirrored or not needs_mirror) then
        raise notice 'prepare: targets % in place%', array_to_string(made, ', '),
            case when mirrored then ' and the mirror trigger' else '' end;
        return;
    end if;
    foreach name in array missing loop
        statements := statements
            || format('create table %I.%I (like %s including all)', plan->>'schema', name, plan->>'parent')
            || format('alter table %I.%I add constraint %I check (%s)', plan->>'schema', name, name || '_split_check',
                      format(plan->>'fits', '', case when name = plan->>'low_name' then plan->'low_slice'->>1
                                                     else plan->'high_slice'->>1 end));
        if plan->>'owner' is not null then
            statements := statements || format('alter table %I.%I owner to %I', plan->>'schema', name, plan->>'owner');
        end if;
    end loop;
    if needs_mirror and not mirrored then
        statements := statements || partman.mirror_ddl(plan);
        if cardinality(made) > 0 then
            statements := statements || format('truncate %s', (select string_agg(format('%I.%I', plan->>'schema', m), ', ')
                                                               from unnest(made) as m));
        end if;
    end if;
    raise notice 'prepare: targets % (unattached)%', array_to_string(missing, ', '),
        case when needs_mirror and not mirrored then format(' and the mirror trigger on %s', plan->>'source_name') else '' end;
    loop
        attempt := attempt + 1;
        begin
            perform set_config('lock_timeout', lock_timeout_ms || 'ms', true);
            foreach statement in array statements loop
                perform partman.run(statement, dry_run);
            end loop;
            return;
        exception when lock_not_available then
            if attempt >= 40 then
                perform partman.refuse('prepare: gave up after 40 attempts (locks busy); nothing is lost, '
                                       'rerun `pgvote partitions split --resume` later');
            end if;
            raise notice 'prepare: % is busy (attempt %), retrying', plan->>'source_name', attempt;
        end;
        perform pg_sleep(least(0.05 * attempt, 1.0));
    end loop;
end
$function$;
