-- internal.client_network(x_real_ip): the rate-limit identity of the client address the proxy
-- set: an IPv4 address as it stands, an IPv6 address as its /64 network.
--
-- Why /64: an IPv6 subscriber is given a whole /64 (often more) and picks addresses in it at
-- will (privacy addresses rotate by themselves), so a bucket per address would give one client
-- as many buckets as it likes. An IPv4-mapped address (::ffff:a.b.c.d, what a dual-stack socket
-- reports for an IPv4 peer) counts as its IPv4 address, else every IPv4 client would share the
-- one /64 of ::ffff:0:0/96.
-- Inputs    x_real_ip  the x-real-ip request header, which the proxy sets to the peer address.
-- Output    '198.51.100.7', '2001:db8:1:2::/64'; null for text that is no plain address (a
--           mask, a zone id, a name, garbage): the caller then counts as one without an address.
-- Errors    none.
-- Locks     none.
create or replace function internal.client_network(x_real_ip text) returns text
language plpgsql
immutable strict parallel safe
as $function$
declare
    address inet;
begin
    -- the characters of a v4 or v6 address only; inet itself would also take a /mask
    if x_real_ip !~ '^[0-9A-Fa-f:.]{2,45}$' then
        return null;
    end if;
    begin
        address := x_real_ip::inet;
    exception when invalid_text_representation then
        return null;
    end;
    if pg_catalog.family(address) = 6 and address << '::ffff:0.0.0.0/96'::inet then
        address := '0.0.0.0'::inet + (address - '::ffff:0.0.0.0'::inet);
    end if;
    if pg_catalog.family(address) = 4 then
        return pg_catalog.host(address);
    end if;
    return pg_catalog.network(pg_catalog.set_masklen(address, 64))::text;
end
$function$;
