-- partman.copy_batch(plan, after, batch_size, dry_run): one batch of step 2 of a split, the copy:
-- the next rows of the source by primary key (keyset: after the last key of the previous batch),
-- each into the target its row hashes to with INSERT .. ON CONFLICT DO NOTHING. A row the mirror
-- already wrote wins (it is newer than any copy of it); a copy that lands first is overwritten
-- by the mirror's upsert; when both race, the unique index makes the later one wait for the
-- earlier one's commit, so either order ends with the newest version.
--
-- Inputs: the plan (partman.split_plan); after = the last key returned by the previous batch
-- (each column as text, null for the first batch); batch_size; dry_run: print the statement.
-- Output: (rows read, the last key), no row when the source has no row after `after`.
-- Errors: deadlock_detected or lock_not_available against a writer (the caller retries).
-- Locks: ROW EXCLUSIVE on the targets; the caller holds the split's mirror lock exclusively.
create or replace function partman.copy_batch(plan jsonb, after text[], batch_size integer, dry_run boolean)
returns table (rows bigint, last text[])
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
declare
    query text := format(
        'with batch as materialized (select %1$s from %2$s %3$s order by %4$s limit %5$s), '
        'low as (insert into %6$s (%1$s) select %1$s from batch where %7$s on conflict do nothing), '
        'high as (insert into %8$s (%1$s) select %1$s from batch where not %7$s on conflict do nothing) '
        'select (select count(*) from batch), array[%9$s] from batch order by %10$s limit 1',
        plan->>'cols', plan->>'source',
        case when after is null and not dry_run then '' else format('where (%s) > (%s)', plan->>'pk', plan->>'pk_typed') end,
        plan->>'pk', batch_size, plan->>'low', format(plan->>'fits', '', plan->'low_slice'->>1), plan->>'high',
        plan->>'pk_text', plan->>'pk_desc');
begin
    if dry_run then
        raise notice using message = query, detail = 'sql';
        rows := null;
        last := null;
        return;  -- no row
    end if;
    return query execute query using after;
end
$function$;
