//! The Lua scripts the limiter runs in Redis, in one place. Each runs atomically, reads the
//! clock with `TIME` (one clock for the whole fleet), and sets an expiry on every key it
//! writes, so an idle limit leaves nothing behind. `redis::Script` calls them with EVALSHA
//! and, on `NOSCRIPT` (after a `SCRIPT FLUSH` or a Redis restart), loads them again.

/// GCRA (generic cell rate algorithm) over one key holding the "theoretical arrival time"
/// (TAT) in microseconds (so 3 per second spaces jobs 333,333 µs apart, not 333 ms; epoch
/// microseconds stay far below 2^53, exact in Lua's doubles).
///
/// KEYS[1] the TAT key. ARGV: [1] emission interval µs (period / rate), [2] burst (requests
/// that may go back to back), [3] cost (requests in this call), [4] reserve (1: always take
/// the next free slot and answer how long to wait for it — a queue; 0: take a slot only if
/// one is free now, else answer how long until one is), [5] most ms a reservation may lie
/// ahead (beyond it nothing is taken; the caller asks again later).
///
/// Returns {taken (1|0), wait µs}.
pub const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local reserve = ARGV[4] == '1'
local horizon = tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local tolerance = interval * (burst - 1)
local new_tat = tat + interval * cost
local allowed_at = new_tat - interval - tolerance
local wait = allowed_at - now
if wait < 0 then wait = 0 end
if (not reserve and wait > 0) or wait > horizon * 1000 then
  return {0, wait}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, wait}
"#;

/// Concurrency slots as a sorted set of lease holders scored by lease expiry (ms).
///
/// KEYS[1] the set. ARGV: [1] limit, [2] holder (the job id), [3] lease ms.
/// Expired leases (their worker died) are dropped first. Taking a slot the holder already
/// has renews it, so this doubles as the lease refresh. Returns {taken (1|0), ms until the
/// earliest lease expires (a bound on the wait), or 0}.
pub const ACQUIRE_SLOT: &str = r#"
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
"#;
