"""The server-side Lua scripts: shard leases, fenced reads and claims, and the batch commit.

Every script that changes a consumer group or writes output first checks that the
caller still holds the shard lease (a fencing token), inside the same atomic script.
A worker that lost its lease (paused, partitioned) therefore cannot read, claim or
commit anything again: no zombie writes.

The batch commit (COMMIT) writes everything a batch produces in one script: the output
entries, the alerts of flagged values (`forecast:anomalies`), the dead letters, the
checkpoints (with the verdict state) and `forecast:latest`, and acknowledges the inputs. An
input acknowledged is never delivered again, so each of these is written exactly once.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgpack

from worker.batch import Commit
from worker.wire import VERSION

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
-- KEYS: state, seen, lease, latest. ARGV: token, ttl_ms, limit, backfill_cursor.
-- Removes the checkpoints (and latest forecasts) of series not committed for ttl_ms (at most
-- `limit`), and, while
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
  redis.call('HDEL', KEYS[4], unpack(old))
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

ADD_ONCE = """
-- KEYS: a live-evidence hash. ARGV: marker field, flush number, then field/increment pairs.
-- Adds the increments unless this hash recorded this flush number already (a flush sent
-- again after a failure), then records it: each flush counts exactly once.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# The COMMIT script's arguments after the fixed ones (ARGV[1..8]), in order: one msgpack
# value each ('msgpack'), or a count then the items ('flat'; dead letters: a count of
# counted arrays), for servers whose Lua has no cmsgpack (the embedded fakeredis of `demo`).
COMMIT_ARGS = ("token", "group", "pred_maxlen", "dead_maxlen", "version", "retention_ms",
               "count_minid", "encoding")
COMMIT_ARRAYS = ("preds", "extra", "counts", "deads", "state", "acks", "seen", "latest",
                 "follow", "alerts")
# Additive: a new key goes last, before the followed series' streams (which follow KEYS[8]).
COMMIT_KEYS = ("values", "predictions", "deadletter", "state", "lease", "seen", "latest",
               "anomalies")
FOLLOW_MAXLEN = 10_000  # entries kept per followed series' stream (approximately)

_COMMIT_HEAD = (
    _FENCE.format(lease=5)
    + """
-- KEYS: values, predictions, deadletter, state, lease, seen, latest, anomalies, then the
-- followed series' streams. ARGV: token, group, pred_maxlen, dead_maxlen, model_version,
-- retention_ms, count_minid, encoding, then the arrays (worker.scripts.COMMIT_ARRAYS):
--   preds: the layout's values, `width` per entry (worker.wire); extra, counts: the other
--   fields as name/value pairs, counts[e] of them for entry e; dead letters, each an array of
--   field/value pairs; series/blob pairs; ids to ack; series whose last-seen time is now;
--   series/latest-forecast pairs (forecast:latest); follow: (entry, n) pairs, entry e also
--   goes to KEYS[8 + n], its series' own stream; alerts: the flagged values (each an array
--   of field/value pairs) for KEYS[8], capped like the predictions (pred_maxlen). Written
--   here, with the acks and the checkpoints, an alert is exactly once like a prediction.
-- Lua cannot roll back: refuse before the first write if an output key has a wrong type.
for k, want in pairs({[2] = 'stream', [3] = 'stream', [4] = 'hash', [7] = 'hash',
                      [8] = 'stream'}) do
  local t = redis.call('TYPE', KEYS[k]).ok
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' is a ' .. t .. ', expected a ' .. want)
  end
end
local group, pmax, dmax, version = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local preds, extra, counts, deads, state, acks, seen, latest, follow, alerts
if ARGV[8] == 'msgpack' then
  local mp = cmsgpack.unpack
  preds, extra, counts, deads = mp(ARGV[9]), mp(ARGV[10]), mp(ARGV[11]), mp(ARGV[12])
  state, acks, seen, latest, follow = mp(ARGV[13]), mp(ARGV[14]), mp(ARGV[15]), mp(ARGV[16]),
    mp(ARGV[17])
  alerts = mp(ARGV[18])
else
  local i = 9
  local function take()
    local n, t = tonumber(ARGV[i]), {}
    for j = 1, n do t[j] = ARGV[i + j] end
    i = i + n + 1
    return t
  end
  local function take_many()  -- a count of counted arrays
    local n, t = tonumber(ARGV[i]), {}
    i = i + 1
    for d = 1, n do t[d] = take() end
    return t
  end
  preds, extra, counts = take(), take(), take()
  deads = take_many()
  state, acks, seen, latest, follow = take(), take(), take(), take(), take()
  alerts = take_many()
  for j = 1, #counts do counts[j] = tonumber(counts[j]) end
  for j = 1, #follow do follow[j] = tonumber(follow[j]) end
end
local call, out, w = redis.call, KEYS[2], {width}
local n = 0
if w > 0 then n = #preds / w end
"""
)

# One unrolled XADD per entry, without tables: the common case (every entry has the same
# fields, none followed); the general one adds each entry's extra pairs and its followed copy.
_COMMIT_XADD = """
if #counts == 0 and #follow == 0 then
  for i = 1, #preds, w do
    call('XADD', out, '*', {pairs})
  end
else
  local streams = {{}}
  for f = 1, #follow, 2 do streams[follow[f]] = KEYS[8 + follow[f + 1]] end
  local j = 1
  for e = 1, n do
    local i = (e - 1) * w + 1
    local k = counts[e] or 0
    call('XADD', out, '*', {pairs}, unpack(extra, j, j + k - 1))
    local s = streams[e]
    if s then
      call('XADD', s, 'MAXLEN', '~', {follow_maxlen}, '*', {pairs}, unpack(extra, j, j + k - 1))
    end
    j = j + k
  end
end
"""

_COMMIT_TAIL = """
if n > 0 then call('XTRIM', out, 'MAXLEN', '~', pmax) end
for _, dead in ipairs(deads) do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', dmax, '*', unpack(dead))
end
for _, alert in ipairs(alerts) do
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', pmax, '*', unpack(alert))
end
-- in chunks: unpack() is limited to a few thousand values
for i = 1, #state, 4000 do
  redis.call('HSET', KEYS[4], unpack(state, i, math.min(i + 3999, #state)))
end
for i = 1, #latest, 4000 do
  redis.call('HSET', KEYS[7], unpack(latest, i, math.min(i + 3999, #latest)))
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
return n
"""


def commit_source(layout: tuple[str, ...]) -> str:
    """The COMMIT script for one layout (worker.wire): its XADD calls written out.

    >>> src = commit_source(("series", "prediction", "model_version", "source_id"))
    >>> "call('XADD', out, '*', 'series', preds[i], 'prediction', preds[i + 1], " \\
    ...     "'model_version', version, 'source_id', preds[i + 2])" in src
    True
    """
    args, k = [], 0
    for name in layout:
        if name == VERSION:
            args.append(f"'{name}', version")
            continue
        args.append(f"'{name}', preds[i{f' + {k}' if k else ''}]")
        k += 1
    xadd = _COMMIT_XADD.replace("{pairs}", ", ".join(args)).replace(
        "{follow_maxlen}", str(FOLLOW_MAXLEN)).replace("{{}}", "{}")
    # no entries (an empty layout): no XADD loop (a Lua for with step 0 would never end)
    return _COMMIT_HEAD.replace("{width}", str(k)) + (xadd if k else "") + _COMMIT_TAIL


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
        self.add_once = client.register_script(ADD_ONCE)
        self.commits: dict[tuple[str, ...], Any] = {}  # layout -> its COMMIT script

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
                       self.sweep, self.forget, self.add_once, *self.commits.values()):
            self.client.script_load(script.script)

    def commit_for(self, layout: tuple[str, ...]) -> Any:
        """The COMMIT script of a layout, loaded on the server the first time it is used."""
        script = self.commits.get(layout)
        if script is None:
            script = self.client.register_script(commit_source(layout))
            self.client.script_load(script.script)
            self.commits[layout] = script
        return script


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
) -> tuple[tuple[str, ...], list[Any]]:
    """The layout of a commit's output entries and the ARGV of its COMMIT script.

    `retention_ms` and `count_minid` bound the input stream (never past an uncommitted
    entry: the script computes that bound itself); `seen` are the series whose last-seen
    time (for the series TTL) becomes now.
    """
    packed = commit.outputs.pack()
    head = [token, group, pred_maxlen, dead_maxlen, commit.version, retention_ms, count_minid]
    arrays: tuple[list[Any], ...] = (
        packed.flat, packed.extra, packed.counts, commit.deadletters, commit.state,
        commit.ack_ids, seen or [], commit.latest, commit.follow, commit.alerts)
    if msgpack_ok:
        return packed.layout, [*head, "msgpack", *map(packb, arrays)]
    args: list[Any] = [*head, "flat"]
    for name, array in zip(COMMIT_ARRAYS, arrays, strict=True):
        if name in ("deads", "alerts"):  # a count of counted arrays
            args.append(len(array))
            for dead in array:
                args += [len(dead), *dead]
        else:
            args += [len(array), *array]
    return packed.layout, args
