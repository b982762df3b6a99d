"""The server-side Lua scripts: shard leases, fenced reads and claims, and the batch commit.

Every script that changes a consumer group or writes output first checks that the
caller still holds the shard lease (a fencing token), inside the same atomic script.
A worker that lost its lease (paused, partitioned) therefore cannot read, claim or
commit anything again: no zombie writes.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgpack

from worker.batch import Commit

# Redis bundles an old cmsgpack without the bin type: pack bytes as raw strings.
packb = partial(msgpack.packb, use_bin_type=False)

_FENCE = """
if redis.call('GET', KEYS[{lease}]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease ' .. KEYS[{lease}] .. ' is not held by this worker')
end
"""

ACQUIRE = """
-- KEYS: lease, epoch. ARGV: consumer, ttl_ms. Returns the new token or false.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

RENEW = """
-- KEYS: lease. ARGV: token, ttl_ms. 1 if still ours (and extended), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
-- KEYS: lease. ARGV: token.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

GUARD = """
-- KEYS: lease, fence. ARGV: token. Runs between WATCH lease fence and MULTI/XREADGROUP/EXEC:
-- unless the lease is ours it touches the fence key, so that our own EXEC aborts. Sent
-- with EVAL (never NOSCRIPT) and built not to fail: a failed guard would let EXEC run.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then return 1 end
redis.call('SET', KEYS[2], ARGV[1])
return 0
"""

CLAIM = (
    _FENCE.format(lease=2)
    + """
-- KEYS: values, lease. ARGV: token, group, consumer, min_idle_ms, start, count.
-- Returns {next_cursor, entries, pending_details} or {'WAIT'} while some pending entry
-- is younger than min_idle (claiming around it would break per-series order).
local min_idle = tonumber(ARGV[4])
if ARGV[5] == '0-0' and min_idle > 0 then
  local total = redis.call('XPENDING', KEYS[1], ARGV[2])[1]
  if total > 0 then
    local old = redis.call('XPENDING', KEYS[1], ARGV[2], 'IDLE', min_idle, '-', '+', total)
    if #old < total then return {'WAIT'} end
  end
end
-- JUSTID: claiming does not count as a delivery (a reply lost to a broken connection must
-- not push valid entries toward poison); BUMP counts it right before the model sees them.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], min_idle, ARGV[5], 'COUNT', ARGV[6],
                     'JUSTID')
local ids = r[2]
local entries = {}
for i, id in ipairs(ids) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  entries[i] = e[1] or {id, false}
end
local details = {}
if #ids > 0 then
  details = redis.call('XPENDING', KEYS[1], ARGV[2], ids[1], ids[#ids], #ids, ARGV[3])
end
return {r[1], entries, details}
"""
)

BUMP = (
    _FENCE.format(lease=2)
    + """
-- KEYS: values, lease. ARGV: token, group, consumer, then (count, n, id1..idn) groups:
-- sets the delivery count of those pending entries (XCLAIM JUSTID RETRYCOUNT), the
-- delivery being counted right before the entries go to the model.
local i = 4
while i <= #ARGV do
  local count, n = ARGV[i], tonumber(ARGV[i + 1])
  for j = i + 2, i + 1 + n, 4000 do
    local cmd = {'XCLAIM', KEYS[1], ARGV[2], ARGV[3], 0}
    for k = j, math.min(j + 3999, i + 1 + n) do cmd[#cmd + 1] = ARGV[k] end
    cmd[#cmd + 1] = 'RETRYCOUNT'
    cmd[#cmd + 1] = count
    cmd[#cmd + 1] = 'JUSTID'
    redis.call(unpack(cmd))
  end
  i = i + 2 + n
end
return 1
"""
)

SWEEP = (
    _FENCE.format(lease=3)
    + """
-- KEYS: state, seen, lease. ARGV: token, ttl_ms, limit, backfill_cursor.
-- Removes the checkpoints of series not committed for ttl_ms (at most `limit`), and, while
-- backfill_cursor is not '', gives checkpoints without a last-seen time (written before the
-- TTL was turned on) the time now. Returns {next_backfill_cursor, removed series}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cursor = ARGV[4]
if cursor ~= '' then
  local r = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', ARGV[3])
  cursor = r[1]
  local z = {}
  for i = 1, #r[2], 2 do z[#z + 1] = now; z[#z + 1] = r[2][i] end
  if #z > 0 then redis.call('ZADD', KEYS[2], 'NX', unpack(z)) end
  if cursor == '0' then cursor = '' end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]),
                       'LIMIT', 0, tonumber(ARGV[3]))
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
return {cursor, old}
"""
)

FORGET = (
    _FENCE.format(lease=2)
    + """
-- KEYS: values, lease. ARGV: token, group, consumer, min_idle_ms.
-- Deletes the group's consumers (dead workers: every restart has a new name) that have no
-- pending entry and were idle for min_idle_ms. Safe only under the lease: nobody else can
-- read this stream now, so no such consumer can get a pending entry before it goes.
local gone = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[2])) do
  local info = {}
  for j = 1, #c, 2 do info[c[j]] = c[j + 1] end
  if info['name'] ~= ARGV[3] and info['pending'] == 0 and info['idle'] >= tonumber(ARGV[4]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[2], info['name'])
    gone = gone + 1
  end
end
return gone
"""
)

COMMIT = (
    _FENCE.format(lease=5)
    + """
-- KEYS: values, predictions, deadletter, state, lease, seen.
-- ARGV: token, group, pred_maxlen, dead_maxlen, model_version, retention_ms, count_minid,
--   (unused), encoding, then six arrays:
--   extra field names; predictions flat, (series, prediction, source_id, ts, extras...) each;
--   dead letters, each an array of field/value pairs; series/blob pairs; ids to ack; series
--   whose last-seen time is now (FORECAST_SERIES_TTL_MS; batched by the worker).
-- encoding 'msgpack': one msgpack argument per array (few, cheap arguments); 'flat': each
-- array as a count then its items (dead letters: a count of counted arrays), for servers
-- whose Lua has no cmsgpack (the embedded fakeredis of `forecast demo`).
-- Lua cannot roll back: refuse before the first write if an output key has a wrong type.
for k, want in pairs({[2] = 'stream', [3] = 'stream', [4] = 'hash'}) do
  local t = redis.call('TYPE', KEYS[k]).ok
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', expected a ' .. want)
  end
end
local group, pmax, dmax, version = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local extra, preds, deads, state, acks, seen
if ARGV[9] == 'msgpack' then
  local unpack_mp = cmsgpack.unpack
  extra, preds, deads = unpack_mp(ARGV[10]), unpack_mp(ARGV[11]), unpack_mp(ARGV[12])
  state, acks, seen = unpack_mp(ARGV[13]), unpack_mp(ARGV[14]), unpack_mp(ARGV[15])
else
  local i = 10
  local function take()
    local n, t = tonumber(ARGV[i]), {}
    for j = 1, n do t[j] = ARGV[i + j] end
    i = i + n + 1
    return t
  end
  extra, preds = take(), take()
  local n = tonumber(ARGV[i])
  i = i + 1
  deads = {}
  for d = 1, n do deads[d] = take() end
  state, acks, seen = take(), take(), take()
end
local n_extra = #extra
local width = 4 + n_extra
local call, out = redis.call, KEYS[2]
-- Direct calls for the common layouts (no per-entry tables); one trim per batch below.
if n_extra == 0 then
  for i = 1, #preds, 4 do
    if preds[i + 3] == '' then
      call('XADD', out, '*', 'series', preds[i], 'prediction', preds[i + 1],
           'model_version', version, 'source_id', preds[i + 2])
    else
      call('XADD', out, '*', 'series', preds[i], 'prediction', preds[i + 1],
           'model_version', version, 'source_id', preds[i + 2], 'ts', preds[i + 3])
    end
  end
elseif n_extra == 2 then
  local e1, e2 = extra[1], extra[2]
  for i = 1, #preds, 6 do
    if preds[i + 3] == '' then
      call('XADD', out, '*', 'series', preds[i], 'prediction', preds[i + 1],
           'model_version', version, 'source_id', preds[i + 2], e1, preds[i + 4], e2, preds[i + 5])
    else
      call('XADD', out, '*', 'series', preds[i], 'prediction', preds[i + 1],
           'model_version', version, 'source_id', preds[i + 2], 'ts', preds[i + 3],
           e1, preds[i + 4], e2, preds[i + 5])
    end
  end
else
  for i = 1, #preds, width do
    local cmd = {'XADD', out, '*', 'series', preds[i], 'prediction', preds[i + 1],
                 'model_version', version, 'source_id', preds[i + 2]}
    if preds[i + 3] ~= '' then cmd[#cmd + 1] = 'ts'; cmd[#cmd + 1] = preds[i + 3] end
    for e = 1, n_extra do
      local v = preds[i + 3 + e]
      if v ~= '' then cmd[#cmd + 1] = extra[e]; cmd[#cmd + 1] = v end  -- '' : field left out
    end
    call(unpack(cmd))
  end
end
if #preds > 0 then call('XTRIM', out, 'MAXLEN', '~', pmax) end
for _, dead in ipairs(deads) do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', dmax, '*', unpack(dead))
end
-- in chunks: unpack() is limited to a few thousand values
for i = 1, #state, 4000 do
  redis.call('HSET', KEYS[4], unpack(state, i, math.min(i + 3999, #state)))
end
for i = 1, #acks, 4000 do
  redis.call('XACK', KEYS[1], group, unpack(acks, i, math.min(i + 3999, #acks)))
end
local retention, count_min = tonumber(ARGV[6]), ARGV[7]
if retention > 0 or count_min ~= '0-0' or #seen > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if #seen > 0 then
    -- series -> last commit time, read by the SWEEP script (FORECAST_SERIES_TTL_MS)
    local z = {'ZADD', KEYS[6]}
    for i = 1, #seen do z[#z + 1] = now; z[#z + 1] = seen[i] end
    for i = 3, #z, 4000 do
      redis.call('ZADD', KEYS[6], unpack(z, i, math.min(i + 3999, #z)))
    end
  end
  if retention > 0 or count_min ~= '0-0' then
    -- Input retention, never past an entry some group has not committed: the bound is the
    -- oldest pending entry, else the one after the last delivered, of every group.
    local function parse(id)
      local ms, seq = string.match(id, '^(%d+)-(%d+)$')
      return tonumber(ms), tonumber(seq)
    end
    local function lt(a, b)
      local am, as = parse(a)
      local bm, bs = parse(b)
      return am < bm or (am == bm and as < bs)
    end
    local safe = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local info = {}
      for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
      local bound
      local oldest = redis.call('XPENDING', KEYS[1], info['name'], '-', '+', 1)
      if #oldest > 0 then
        bound = oldest[1][1]
      else
        local ms, seq = parse(info['last-delivered-id'])
        bound = string.format('%d-%d', ms, seq + 1)
      end
      if safe == nil or lt(bound, safe) then safe = bound end
    end
    local target = count_min
    if retention > 0 and now > retention then
      local by_age = string.format('%d-0', now - retention)
      if lt(target, by_age) then target = by_age end
    end
    if safe ~= nil and lt(safe, target) then target = safe end
    if safe ~= nil and target ~= '0-0' then
      redis.call('XTRIM', KEYS[1], 'MINID', '~', target)
    end
  end
end
return #preds / width
"""
)


class Scripts:
    """The scripts registered on one client (EVALSHA, re-loaded automatically if flushed)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.msgpack_ok = True  # set by `probe()`
        self.acquire = client.register_script(ACQUIRE)
        self.renew = client.register_script(RENEW)
        self.release = client.register_script(RELEASE)
        self.claim = client.register_script(CLAIM)
        self.bump = client.register_script(BUMP)
        self.sweep = client.register_script(SWEEP)
        self.forget = client.register_script(FORGET)
        self.commit = client.register_script(COMMIT)

    def probe(self) -> None:
        """Whether the server's Lua has cmsgpack (real Redis does; fakeredis does not)."""
        try:
            self.msgpack_ok = bool(self.client.eval("return type(cmsgpack) == 'table'", 0))
        except Exception:  # an unknown global is an error on some servers
            self.msgpack_ok = False

    def load(self) -> None:
        """Load every script up front (also after a restart flushed the script cache).

        EVALSHA then never meets NOSCRIPT: the raw pipelined path cannot recover from it in
        the same round trip, and some servers (fakeredis' TCP server) drop the connection.
        """
        for script in (self.acquire, self.renew, self.release, self.claim, self.bump,
                       self.sweep, self.forget, self.commit):
            self.client.script_load(script.script)


def commit_args(
    token: str,
    group: str,
    commit: Commit,
    pred_maxlen: int,
    dead_maxlen: int,
    msgpack_ok: bool = True,
    retention_ms: int = 0,
    count_minid: bytes | str = "0-0",
    seen: list[bytes] | None = None,
) -> list[Any]:
    """ARGV of the COMMIT script for one `Commit` (see its header for the two encodings).

    `retention_ms` and `count_minid` bound the input stream (never past an uncommitted
    entry: the script computes that bound itself); `seen` are the series whose last-seen
    time (for the series TTL) becomes now.
    """
    head = [token, group, pred_maxlen, dead_maxlen, commit.version, retention_ms,
            count_minid, ""]
    extra = list(commit.extra_fields)
    if msgpack_ok:
        parts = (extra, commit.predictions, commit.deadletters, commit.state, commit.ack_ids,
                 seen or [])
        return [*head, "msgpack", *map(packb, parts)]
    args: list[Any] = [*head, "flat", len(extra), *extra]
    args += [len(commit.predictions), *commit.predictions, len(commit.deadletters)]
    for dead in commit.deadletters:  # a count of counted arrays
        args += [len(dead), *dead]
    args += [len(commit.state), *commit.state, len(commit.ack_ids), *commit.ack_ids]
    args += [len(seen or []), *(seen or [])]
    return args
