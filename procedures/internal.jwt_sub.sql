-- internal.jwt_sub(): the caller's JWT "sub" claim, the identity of a signed-in user.
--
-- Reads request.jwt.claims, which PostgREST sets per transaction from a verified JWT.
-- Errors: login_required (401) when there is no usable sub: no JWT, or a sub that is not
-- a JSON string of 1-256 characters.
create or replace function internal.jwt_sub() returns text
language plpgsql
stable
as $function$
declare
    sub jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb -> 'sub';
begin
    if jsonb_typeof(sub) is distinct from 'string'
       or char_length(sub #>> '{}') not between 1 and 256 then
        perform internal.raise_api_error('login_required',
            'Sign in first: this call needs a JWT whose "sub" claim is a string of 1-256 characters.');
    end if;
    return sub #>> '{}';
end
$function$;
