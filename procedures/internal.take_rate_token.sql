-- internal.take_rate_token(limit_name, bucket_key): take one token from a caller's bucket of
-- a limit of rate_limit.limits, or end the request with 429.
--
-- Token bucket: a bucket holds at most `burst` tokens and gains requests_per_minute / 60 per
-- second; a request takes one. A caller's first request creates its bucket full (minus one).
-- A disabled or unknown limit takes nothing.
-- Errors    rate_limited 429, with Retry-After = whole seconds until a token is back (>= 1).
-- Locks     the bucket row of (limit_name, bucket_key) until the transaction ends: concurrent
--           requests of the same caller queue here and see each other's tokens (exact under
--           READ COMMITTED: ON CONFLICT re-reads the latest row); other callers never wait.
-- Rollback  the token is taken in the caller's transaction: if the request fails later, or
--           raises the 429 here, nothing is consumed. Only committed requests count.
-- The bucket table is UNLOGGED: this write costs no WAL.
-- No SET search_path (a per-call cost on the vote path): it runs inside the SECURITY DEFINER
-- functions that call it (hooks.pre_request, internal.take_fingerprint_token), whose search_path is pinned; every name is qualified.
create or replace function internal.take_rate_token(limit_name text, bucket_key bytea) returns void
language plpgsql
volatile
as $function$
declare
    lim         rate_limit.limits;
    per_second  double precision;
    taken_at    timestamptz := clock_timestamp();
    available   double precision;
    retry_after integer;
begin
    select l.* into lim from rate_limit.limits as l where l.name = take_rate_token.limit_name;
    if not found or not lim.enabled then
        return;
    end if;
    per_second := lim.requests_per_minute / 60.0;

    -- Refill for the time elapsed (never negative: another backend may have written a later
    -- refilled_at), then take a token if one is there. No row returned = no token.
    insert into rate_limit.buckets as b (limit_name, bucket_key, tokens, refilled_at)
    values (take_rate_token.limit_name, take_rate_token.bucket_key, lim.burst - 1, taken_at)
    on conflict on constraint buckets_pkey do update
    set tokens = least(lim.burst::double precision,
                       b.tokens + per_second * greatest(extract(epoch from excluded.refilled_at - b.refilled_at)::double precision, 0)) - 1,
        refilled_at = greatest(b.refilled_at, excluded.refilled_at)
    where least(lim.burst::double precision,
                b.tokens + per_second * greatest(extract(epoch from excluded.refilled_at - b.refilled_at)::double precision, 0)) >= 1
    returning b.tokens into available;
    if found then
        return;
    end if;

    select least(lim.burst::double precision,
                 b.tokens + per_second * greatest(extract(epoch from taken_at - b.refilled_at)::double precision, 0))
    into available
    from rate_limit.buckets as b
    where b.limit_name = take_rate_token.limit_name and b.bucket_key = take_rate_token.bucket_key;
    retry_after := greatest(1, ceil((1 - coalesce(available, 0)) / per_second)::integer);

    perform internal.raise_api_error('rate_limited',
        case take_rate_token.limit_name
            when 'fingerprint' then format(
                'Too many ballots from this voter on this poll: at most %s per minute (bursts of %s). Retry in %s s.',
                lim.requests_per_minute, lim.burst, retry_after)
            else format('Too many requests: at most %s per minute (bursts of %s). Retry in %s s.',
                        lim.requests_per_minute, lim.burst, retry_after)
        end,
        jsonb_build_object('Retry-After', retry_after::text));
end
$function$;
