-- partman.run(statement, dry_run): execute one DDL statement of the partition manager, or (dry
-- run) send it to the client as a NOTICE whose DETAIL is 'sql', which `--dry-run` prints as the
-- script. With the custom setting partman.verbose = on (`pgvote partitions -v`) an executed
-- statement is reported too (DETAIL 'ran').
--
-- Inputs: the statement, identifiers already quoted. Output: none. Errors: the statement's own.
-- Locks: the statement's own, in the caller's transaction.
create or replace function partman.run(statement text, dry_run boolean) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
begin
    if dry_run then
        raise notice using message = statement, detail = 'sql';
        return;
    end if;
    if current_setting('partman.verbose', true) = 'on' then
        raise notice using message = statement, detail = 'ran';
    end if;
    execute statement;
end
$function$;
