-- internal.hmac_sha256(inner_pad, outer_pad, message): HMAC-SHA256 from precomputed pads
-- (key XOR ipad, key XOR opad), with the builtin sha256(): no extension needed.
-- SQL without FROM and no SET clause, so the planner inlines it into the caller; STABLE
-- because convert_to() is (an IMMUTABLE wrapper around a STABLE body is never inlined).
create or replace function internal.hmac_sha256(inner_pad bytea, outer_pad bytea, message text) returns bytea
language sql
stable
parallel safe
as $function$
    select sha256(outer_pad || sha256(inner_pad || convert_to(message, 'UTF8')))
$function$;
