-- pgvote split mirror (the trigger function's body, made by partitions/splitsql.py): repeats every write on
-- {source} in the target its row hashes to, in the writer's transaction, until the split's switch drops
-- {source} (and this function).
begin
    if tg_op <> 'INSERT' and (tg_op = 'DELETE' or ({old}) is distinct from ({new})) then
        -- a batch of the copy may have read this row before it went: serialise with the batches
        perform pg_catalog.pg_advisory_xact_lock_shared({lock});
        {delete_low}
        {delete_high}
    end if;
    if tg_op <> 'DELETE' then
        if {fits_low} then
            {upsert_low}
        else
            {upsert_high}
        end if;
    end if;
    return null;
end
