-- partman.drop_retired(schema_name, table_name, lock_timeout_ms, dry_run): step 5 of a split, in
-- its own transaction once the switch committed: DROP the old partition `<name>_split_old`.
-- Nobody waits for it any more, so the cost of the DROP's commit (dropping the table's buffers,
-- truncating its files) is paid by no writer. Also what `--resume` does with a split killed right
-- after its switch.
--
-- Inputs: the retired table, the lock wait per attempt, dry_run. Output: none. Errors: PM001
-- after 40 attempts at its lock. Locks: ACCESS EXCLUSIVE on the retired table (under lock_timeout,
-- retried with back-off). Commits: once, after the drop.
create or replace procedure partman.drop_retired(schema_name text, table_name text, lock_timeout_ms integer,
                                                 dry_run boolean)
language plpgsql
as $procedure$
declare
    attempt integer := 0;
    started timestamptz := clock_timestamp();
begin
    loop
        attempt := attempt + 1;
        begin
            perform pg_catalog.set_config('lock_timeout', lock_timeout_ms || 'ms', true);
            perform partman.run(pg_catalog.format('drop table if exists %I.%I', schema_name, table_name), dry_run);
            exit;
        exception when lock_not_available then
            if attempt >= 40 then
                perform partman.refuse(pg_catalog.format('drop %s.%s: gave up after 40 attempts (locks busy); nothing is '
                                                         'lost, rerun `pgvote partitions split --resume` later',
                                                         schema_name, table_name));
            end if;
        end;
        perform pg_catalog.pg_sleep(least(0.05 * attempt, 1.0));
    end loop;
    commit;
    raise notice 'dropped the old partition %.% in % ms', schema_name, table_name,
        round(extract(epoch from pg_catalog.clock_timestamp() - started) * 1000);
end
$procedure$;
