-- partman.split_slice(parent, modulus, remainder, resumed, batch_size, pause_ms, lock_timeout_ms,
-- dry_run): split one hash slice online, slice (m, r) becoming (2m, r) and (2m, r + m).
-- PostgreSQL has no SPLIT PARTITION for hash partitions, and hash bounds may not overlap, so the
-- rows are moved into two new tables that are attached in the same transaction that detaches the
-- old partition. Each step is its own transaction, committed here:
--   1. prepare (partman.prepare_split): the unattached targets and the mirror trigger;
--   2. copy in batches (partman.copy_batch), one transaction each, reported as NOTICEs with DETAIL
--      'progress <rows> <estimated total>' (the CLI's progress bar). Each batch takes the split's
--      mirror lock exclusively (see partman.mirror_ddl). As superuser the batch sets
--      deadlock_timeout low, so that if a multi-row writer deadlocks with a batch, the batch is the
--      victim and is retried, never the writer; lock_timeout 2 s, retried likewise. Batches commit
--      with synchronous_commit = off, the one place the project trades durability for speed, and it
--      loses nothing: a batch lost in a crash is redone by the resume (it copies from the first key,
--      ON CONFLICT skipping what is there), and the switch's synchronous commit flushes, and makes a
--      synchronous standby confirm, the WAL of every batch before it (WAL is applied in order);
--   3. wait for older snapshots (partman.wait_for_snapshots, up to 30 s);
--   4. switch (partman.switch_split), retried with back-off on lock_timeout, up to 40 attempts;
--   5. drop the retired table (partman.drop_retired), ANALYZE the targets (status shows estimated
--      rows, the planner gets statistics).
-- Interruptions leave catalog states that partman.unfinished recognises and partman.resume
-- finishes: killed during prepare, nothing happened (one transaction); during the copy or the
-- snapshot wait, targets and trigger exist: the copy restarts from the first key, ON CONFLICT
-- skipping what is there; during the switch, it rolled back: the same; after it, a
-- `<name>_split_old` table is left, which resume drops. partman.crash_point marks each of these
-- points for the tests.
--
-- Inputs: the slice (its source found by partman.split_plan), resumed (for the messages), the
-- options. Output: a NOTICE with DETAIL 'result <json>': source, targets, rows_copied, batches,
-- copy_seconds, lock_wait_ms (writers queue behind the switch meanwhile), held_ms (locks granted
-- to commit done), attempts, seconds, dry_run, resumed and the epoch instants copy_started_at,
-- copy_ended_at, switch_started_at (the LOCK of the attempt that succeeded), switched_at (its
-- commit done), to line the split up with load measurements.
-- Errors: PM001 refusals of partman.split_plan and of each step. Locks: see each step; the
-- caller holds the split session lock (partman.take_split_lock). Must be CALLed outside a
-- transaction block (it commits).
create or replace procedure partman.split_slice(parent regclass, modulus integer, remainder integer, resumed boolean,
                                                batch_size integer, pause_ms double precision, lock_timeout_ms integer,
                                                dry_run boolean)
language plpgsql
as $procedure$
declare
    plan jsonb := partman.split_plan(parent, modulus, remainder);
    started timestamptz := pg_catalog.clock_timestamp();
    copy_started timestamptz;
    copy_ended timestamptz;
    asked timestamptz;
    granted timestamptz;
    done timestamptz;
    total bigint;
    copied bigint := 0;
    batches integer := 0;
    attempt integer;
    got record;
    last text[];
begin
    raise notice '% % (modulus %, remainder %, %) into % and %',
        case when resumed then 'resuming split of' else 'splitting' end, plan->>'source_name', modulus, remainder,
        plan->>'state', plan->>'low_name', plan->>'high_name';
    if not dry_run then
        perform pg_catalog.set_config('application_name', pg_catalog.left('pgvote split ' || (plan->>'source_name'), 63), false);
    end if;
    perform partman.prepare_split(plan, lock_timeout_ms, dry_run);
    commit;

    if dry_run then
        raise notice using message = 'copy: repeated until it returns no row, each batch in its own transaction '
            'under the mirror lock with synchronous_commit off; the last key returned is the next batch''s $1',
            detail = 'note';
        perform partman.copy_batch(plan, null, batch_size, true);
    else
        select case when c.reltuples >= 0 then c.reltuples::bigint end into total
        from pg_catalog.pg_class as c where c.oid = (plan->>'source_oid')::oid;
        if total is null then
            execute pg_catalog.format('select count(*) from %s', plan->>'source') into total;
        end if;
        raise notice using message = pg_catalog.format('copying %s', plan->>'source_name'),
            detail = pg_catalog.format('progress 0 %s', total);
        copy_started := pg_catalog.clock_timestamp();
        loop
            attempt := 0;
            loop
                attempt := attempt + 1;
                begin
                    perform pg_catalog.set_config('synchronous_commit', 'off', true);
                    perform pg_catalog.set_config('lock_timeout', '2s', true);
                    if pg_catalog.current_setting('is_superuser') = 'on' then
                        perform pg_catalog.set_config('deadlock_timeout', '20ms', true);
                    end if;
                    perform pg_catalog.pg_advisory_xact_lock(internal.advisory_lock_namespace('split_mirror'),
                                                             (plan->>'mirror_lock_key')::integer);
                    select * into got from partman.copy_batch(plan, last, batch_size, false);
                    exit;
                exception when deadlock_detected or lock_not_available then
                    if attempt >= 40 then
                        perform partman.refuse(pg_catalog.format('copy batch %s: gave up after 40 attempts (locks busy); '
                            'nothing is lost, rerun `pgvote partitions split --resume` later', batches + 1));
                    end if;
                    raise notice 'copy: batch % retried (attempt %): %', batches + 1, attempt, sqlerrm;
                end;
                perform pg_catalog.pg_sleep(least(0.05 * attempt, 1.0));
            end loop;
            commit;
            exit when got.rows is null;
            batches := batches + 1;
            copied := copied + got.rows;
            last := got.last;
            raise notice using message = pg_catalog.format('copying %s', plan->>'source_name'),
                detail = pg_catalog.format('progress %s %s', copied, greatest(total, copied));
            perform partman.crash_point('batch:' || batches);
            if pause_ms > 0 then
                perform pg_catalog.pg_sleep(pause_ms / 1000);
            end if;
        end loop;
        copy_ended := pg_catalog.clock_timestamp();
        raise notice 'copy: % rows in % batches, % s', copied, batches,
            round(extract(epoch from copy_ended - copy_started)::numeric, 1);
        commit;
        perform partman.wait_for_snapshots(30);
        commit;
    end if;

    attempt := 0;
    loop
        attempt := attempt + 1;
        begin
            asked := pg_catalog.clock_timestamp();
            granted := partman.switch_split(plan, lock_timeout_ms, dry_run);
            exit;
        exception when lock_not_available then
            if attempt >= 40 then
                perform partman.refuse('switch: gave up after 40 attempts (locks busy); nothing is lost, '
                                       'rerun `pgvote partitions split --resume` later');
            end if;
            raise notice 'switch: locks not granted within % ms (attempt %), retrying', lock_timeout_ms, attempt;
        end;
        perform pg_catalog.pg_sleep(least(0.05 * attempt, 1.0));
    end loop;
    commit;
    done := pg_catalog.clock_timestamp();
    if not dry_run then
        raise notice 'switch: % replaced by % and %; lock wait % ms, locks held % ms (attempt %)', plan->>'source_name',
            plan->>'low_name', plan->>'high_name', round(extract(epoch from granted - asked)::numeric * 1000, 1),
            round(extract(epoch from done - granted)::numeric * 1000, 1), attempt;
        perform partman.crash_point('after-switch');
    end if;
    call partman.drop_retired(plan->>'schema', plan->>'retired_name', lock_timeout_ms, dry_run);
    perform partman.run(pg_catalog.format('analyze %s, %s', plan->>'low', plan->>'high'), dry_run);
    commit;
    if not dry_run then
        perform pg_catalog.set_config('application_name', 'pgvote split', false);
        raise notice using message = pg_catalog.format('split of %s done', plan->>'source_name'),
            detail = 'result ' || pg_catalog.jsonb_build_object(
                'source', plan->>'source_name', 'targets', pg_catalog.jsonb_build_array(
                    (plan->>'schema') || '.' || (plan->>'low_name'), (plan->>'schema') || '.' || (plan->>'high_name')),
                'rows_copied', copied, 'batches', batches,
                'copy_seconds', extract(epoch from copy_ended - copy_started),
                'lock_wait_ms', extract(epoch from granted - asked) * 1000,
                'held_ms', extract(epoch from done - granted) * 1000, 'attempts', attempt,
                'seconds', extract(epoch from pg_catalog.clock_timestamp() - started),
                'dry_run', dry_run, 'resumed', resumed,
                'copy_started_at', extract(epoch from copy_started), 'copy_ended_at', extract(epoch from copy_ended),
                'switch_started_at', extract(epoch from asked), 'switched_at', extract(epoch from done))::text;
    end if;
end
$procedure$;
