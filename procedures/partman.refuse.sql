-- partman.refuse(message): raise the partition manager's refusal, SQLSTATE PM001.
--
-- Inputs: one line a DBA can act on. Output: none, it always raises. Errors: PM001, which
-- `pgvote partitions` shows as "refused: <message>" with exit status 2. Every refusal is raised
-- before the step it refuses changed anything (or in its transaction, which then rolls back).
-- Locks: none.
create or replace function partman.refuse(message text) returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $function$
begin
    raise exception using message = message, errcode = 'PM001';
end
$function$;
