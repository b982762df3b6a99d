"""The server-side Lua scripts: shard leases, fenced reads and claims, and the batch commit.

Every script that changes a consumer group or writes output first checks that the
caller still holds the shard lease (a fencing token), inside the same atomic script.
A worker that lost its lease (paused, partitioned) therefore cannot read, claim or
commit anything again: no zombie writes.
"""

from __future__ import annotations

from typing import Any

from worker.batch import Commit

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

READ = _FENCE.format(lease=2) + """
-- KEYS: values, lease. ARGV: token, group, consumer, count.
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[1], '>')
"""

CLAIM = _FENCE.format(lease=2) + """
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
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[2], ARGV[3], min_idle, ARGV[5], 'COUNT', ARGV[6])
local entries = r[2]
local details = {}
if #entries > 0 then
  details = redis.call('XPENDING', KEYS[1], ARGV[2], entries[1][1], entries[#entries][1],
                       #entries, ARGV[3])
end
return {r[1], entries, details}
"""

COMMIT = _FENCE.format(lease=5) + """
-- KEYS: values, predictions, deadletter, state, lease.
-- ARGV: token, group, pred_maxlen, dead_maxlen, model_version, n_extra, extra names...,
--       n_pred, n_pred groups of (series, prediction, source_id, ts, extras...),
--       n_dead, n_dead groups of (n_args, field/value pairs...),
--       n_state_args, series/blob pairs..., n_ack, ids...
local group, pmax, dmax, version = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local i = 6
local n_extra = tonumber(ARGV[i]); i = i + 1
local extra = {}
for e = 1, n_extra do extra[e] = ARGV[i]; i = i + 1 end
local n = tonumber(ARGV[i]); i = i + 1
local written = n
for _ = 1, n do
  local ts = ARGV[i + 3]
  if n_extra == 0 and ts == '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', pmax, '*', 'series', ARGV[i], 'prediction',
               ARGV[i + 1], 'model_version', version, 'source_id', ARGV[i + 2])
  else
    local cmd = {'XADD', KEYS[2], 'MAXLEN', '~', pmax, '*', 'series', ARGV[i], 'prediction',
                 ARGV[i + 1], 'model_version', version, 'source_id', ARGV[i + 2]}
    if ts ~= '' then cmd[#cmd + 1] = 'ts'; cmd[#cmd + 1] = ts end
    for e = 1, n_extra do cmd[#cmd + 1] = extra[e]; cmd[#cmd + 1] = ARGV[i + 3 + e] end
    redis.call(unpack(cmd))
  end
  i = i + 4 + n_extra
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local c = tonumber(ARGV[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', dmax, '*', unpack(ARGV, i + 1, i + c))
  i = i + c + 1
end
n = tonumber(ARGV[i]); i = i + 1
local last = i + n - 1
while i <= last do  -- in chunks: unpack() is limited to a few thousand values
  local stop = math.min(i + 3999, last)
  redis.call('HSET', KEYS[4], unpack(ARGV, i, stop))
  i = stop + 1
end
n = tonumber(ARGV[i]); i = i + 1
last = i + n - 1
while i <= last do
  local stop = math.min(i + 3999, last)
  redis.call('XACK', KEYS[1], group, unpack(ARGV, i, stop))
  i = stop + 1
end
return written
"""


class Scripts:
    """The scripts registered on one client (EVALSHA, re-loaded automatically if flushed)."""

    def __init__(self, client: Any) -> None:
        self.acquire = client.register_script(ACQUIRE)
        self.renew = client.register_script(RENEW)
        self.release = client.register_script(RELEASE)
        self.read = client.register_script(READ)
        self.claim = client.register_script(CLAIM)
        self.commit = client.register_script(COMMIT)


def commit_args(token: str, group: str, version: str, commit: Commit,
                pred_maxlen: int, dead_maxlen: int) -> list[Any]:
    """ARGV of the COMMIT script for one `Commit`."""
    args: list[Any] = [token, group, pred_maxlen, dead_maxlen, version, len(commit.extra_fields)]
    args += commit.extra_fields
    args.append(len(commit.predictions))
    for group_args in commit.predictions:
        args += group_args
    args.append(len(commit.deadletters))
    for dead in commit.deadletters:
        args.append(len(dead))
        args += dead
    args.append(len(commit.state))
    args += commit.state
    args.append(len(commit.ack_ids))
    args += commit.ack_ids
    return args
