-- partman.mirror_ddl(plan): the statements that put the mirror trigger of a split on its source
-- (partman.split_plan). Every write to the source is repeated, in the writer's own transaction,
-- on the target its row hashes to: INSERT .. ON CONFLICT (pk) DO UPDATE, so the targets are
-- complete the moment the copy ends and the switch copies nothing.
--
-- Why a mirror and not a delta by cast_at/changed_at: now() is the writer's transaction start, so
-- a slow transaction can commit a row stamped before the copy started (it would be missed); a
-- timestamp delta needs a scan of the old partition without an index, inside the lock; and it
-- would tie the split to the ballots columns. Why not a trigger that logs changed keys: its log
-- must be replayed in rounds, the last one under the lock; the mirror leaves nothing to replay.
-- The price: writes to the slice being split do twice the work while the split runs (measured in
-- docs/partitions.md). An update that changes the key, or a delete (ballots are never deleted,
-- but the manager is generic), first takes the split's mirror lock SHARED, which each copy batch
-- takes EXCLUSIVE: a batch that read the row before it went cannot re-insert it after.
-- The trigger is AFTER INSERT/UPDATE/DELETE FOR EACH ROW, ENABLE ALWAYS (replicas applying
-- changes mirror too); its function lives in the table's schema, `<source>_split_mirror`, and the
-- switch drops both.
--
-- Inputs: the plan. Output: the statements, in order. Errors: none. Locks: none (the caller runs
-- them under lock_timeout).
create or replace function partman.mirror_ddl(plan jsonb) returns text[]
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $function$
declare
    pk_old text := (select string_agg('old.' || quote_ident(c), ', ') from jsonb_array_elements_text(plan->'pk_list') as c);
    pk_new text := (select string_agg('new.' || quote_ident(c), ', ') from jsonb_array_elements_text(plan->'pk_list') as c);
    pk_t text := (select string_agg('t.' || quote_ident(c), ', ') from jsonb_array_elements_text(plan->'pk_list') as c);
    vals text := (select string_agg('new.' || c, ', ') from regexp_split_to_table(plan->>'cols', ', ') as c);
    conflict text := coalesce('do update set ' || (select string_agg(format('%1$I = excluded.%1$I', c), ', ')
                                                   from jsonb_array_elements_text(plan->'non_key') as c), 'do nothing');
    lock text := format('%s, %s', internal.advisory_lock_namespace('split_mirror'), plan->>'mirror_lock_key');
    body text;
    target text;
    upserts text[] := '{}'::text[];
    deletes text := '';
begin
    foreach target in array array[plan->>'low', plan->>'high'] loop
        upserts := upserts || format('insert into %s as t (%s) values (%s) on conflict (%s) %s;',
                                     target, plan->>'cols', vals, plan->>'pk', conflict);
        deletes := deletes || format('delete from %s as t where (%s) = (%s); ', target, pk_t, pk_old);
    end loop;
    body := format($body$
begin
    if tg_op <> 'INSERT' and (tg_op = 'DELETE' or (%1$s) is distinct from (%2$s)) then
        perform pg_catalog.pg_advisory_xact_lock_shared(%3$s);
        %4$s
    end if;
    if tg_op <> 'DELETE' then
        if %5$s then
            %6$s
        else
            %7$s
        end if;
    end if;
    return null;
end
$body$, pk_old, pk_new, lock, deletes, format(plan->>'fits', 'new.', plan->'low_slice'->>1), upserts[1], upserts[2]);
    return array[
        format('create or replace function %s() returns trigger language plpgsql '
               'set search_path = pg_catalog, pg_temp as %L', plan->>'mirror_function', body),
        format('revoke all on function %s() from public', plan->>'mirror_function'),
        format('drop trigger if exists pgvote_split_mirror on %s', plan->>'source'),
        format('create trigger pgvote_split_mirror after insert or update or delete on %s '
               'for each row execute function %s()', plan->>'source', plan->>'mirror_function'),
        format('alter table %s enable always trigger pgvote_split_mirror', plan->>'source')];
end
$function$;
