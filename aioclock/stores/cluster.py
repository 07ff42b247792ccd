"""This node's part in a cluster on Redis: membership, claims, run reports, and the reaping of
nodes that died.

Every node of a cluster keeps the whole schedule; a fire (task id + nominal due) runs only on
the node that holds its claim. The control core asks for each claim ahead of the fire's
deadline (`aioclock.dispatcher.claims`); this thread answers, with one Redis script call per
batch. The script places a fire that nobody claimed yet:

- on the node that has a run of the same task open, if the task's overlap policy is not
  "allow" (so that its overlap policy, applied by that node, holds across the cluster);
- else, for a sync (CPU-bound) task, on the live node with the most free workers (workers
  less the sync runs it has going, as each node says every HEARTBEAT seconds, less the sync
  fires placed on it since), ties broken by the fire's hash, so that CPU-bound runs spread
  across nodes by free capacity; an async task's fires go to its own node (rendezvous
  hashing of the task over the live nodes: tasks spread evenly, and few move when a node joins
  or leaves), or, if its overlap policy is "allow", each to a node chosen by the fire's hash;

always among the live nodes that serve its task (each node says which: `tasks:ID`), and gives
it a fencing token: the fire's nominal due in microseconds, so that tokens grow with the fires
of a task whatever the order in which their claims reach Redis. The answer for a fire
already placed is its owner's: every node learns the same verdict, so a fire runs at most once.

A node says it is alive every HEARTBEAT seconds (a key that expires after NODE_TTL). Another
node that finds it expired reaps it, in one script: its runs in flight are reported lost (with
the node and the fencing token), the fires placed on it and not started are reported missed,
and no fire is placed on it again. When Redis does not answer, the claims asked are answered
"could not claim" (the node fails closed: runs nothing it has not claimed), the outage is
logged once, and the node goes on by itself when Redis answers again. Claims are by fire id,
not by wall-clock windows: a node whose clock is off names the same fires as the others (a
claim is kept CLAIM_TTL: a node more than that behind would ask after it expired).

The keys, under `PREFIX:`: `epoch` (when the cluster first served), `members` (set),
`node:ID` (alive while it exists), `free` and `placed` (hashes per node), `fire:TASK:DUE`
(owner|token, expires), `task:TASK` (hash: the owner of its last fire), `open:TASK` (fires
placed and not ended), `claims:ID` (fires placed on a node, not started), `runs:ID` (its runs
in flight), `lost` (hash per task), `reaped` (a list of what was reaped, the last REAPED_KEEP
entries), `counted` and `counts:ID` (each node's counts), `control` (the channel of verbs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aioclock._protocol import ClaimVerdicts
from aioclock.dispatcher.claims import ClusterPlan

if TYPE_CHECKING:
    from aioclock.events import Event

logger = logging.getLogger(__name__)

__all__ = ["ClusterMember", "Verdict"]

#: A node says it is alive this often (seconds) ...
HEARTBEAT = 0.5
#: ... and counts as dead once it has not said so for this long.
NODE_TTL = 1.5
#: A fire's claim is kept this long past its due (seconds): nodes that ask late read it.
CLAIM_TTL = 600.0
#: How many reaped runs `reaped` keeps.
REAPED_KEEP = 1000
#: A fire this node claimed and never started is closed this long after its due (seconds):
#: long enough for a fire that waits behind its task's run (`queue_one`) or for a worker.
UNSTARTED_CLOSE = 120.0
#: At most this many fires per script call (each call blocks Redis for a few ms at most).
CLAIM_BATCH = 2000
#: How long `close` waits for the thread's last reports.
CLOSE_WAIT = 3.0

#: (task, nominal due, verdict): the verdict is this node's fencing token (> 0), 0 when
#: another node runs the fire, -1 when it could not be claimed.
Verdict = tuple[str, float, int]

_SEP = "\x1f"  # between the parts of a fire's name in sets (never in a task id)

_CLAIM = """
local p, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local live, score = {}, {}
for _, m in ipairs(redis.call('SMEMBERS', p .. ':members')) do
  if redis.call('EXISTS', p .. ':node:' .. m) == 1 then
    local free = tonumber(redis.call('HGET', p .. ':free', m) or '0') or 0
    local placed = tonumber(redis.call('HGET', p .. ':placed', m) or '0') or 0
    live[#live + 1] = m
    score[m] = free - placed
  end
end
local out = {}
local i = 4
while i <= #ARGV do
  local task, due, flags = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local cpu = string.find(flags, 'c', 1, true)
  i = i + 3
  local fk = p .. ':fire:' .. task .. ':' .. due
  local held = redis.call('GET', fk)
  if held then
    local at = string.find(held, '|', 1, true)
    if string.sub(held, 1, at - 1) == me then
      out[#out + 1] = tonumber(string.sub(held, at + 1))
    else
      out[#out + 1] = 0
    end
  else
    -- the live nodes that serve this task (the one asking does): a node deployed without
    -- it, or that failed to add it, must not be given its fires
    local eligible, can = {}, {}
    for _, m in ipairs(live) do
      local tasks = p .. ':tasks:' .. m  -- (a node that did not say serves any task)
      if m == me or redis.call('SISMEMBER', tasks, task) == 1
          or redis.call('EXISTS', tasks) == 0 then
        eligible[#eligible + 1] = m
        can[m] = true
      end
    end
    if #eligible == 0 then
      table.insert(eligible, me)  -- (its own heartbeat lapsed: it asks, so it serves the task)
      can[me] = true
      if score[me] == nil then score[me] = 0 end
    end
    local tk = p .. ':task:' .. task
    local ok = p .. ':open:' .. task
    local owner = nil
    local sticky = string.find(flags, 's', 1, true)
    if sticky and redis.call('ZCARD', ok) > 0 then
      local last = redis.call('HGET', tk, 'owner')
      if last and can[last] then owner = last end
    end
    local hash = tonumber(string.sub(redis.sha1hex(fk), 1, 7), 16)
    if owner == nil and not cpu and sticky then
      -- the task's own node (rendezvous hashing): its fires stay there, so no run of it
      -- overlaps another on another node, and few tasks move when a node joins or leaves
      local top = nil
      for _, m in ipairs(eligible) do
        local weight = redis.sha1hex(task .. '\\31' .. m)
        if top == nil or weight > top then owner, top = m, weight end
      end
    elseif owner == nil and not cpu then
      owner = eligible[(hash % #eligible) + 1]
    end
    if owner == nil then
      local best, top = {}, nil
      for _, m in ipairs(eligible) do
        local s = score[m]
        if top == nil or s > top then
          best, top = {m}, s
        elseif s == top then
          best[#best + 1] = m
        end
      end
      owner = best[(hash % #best) + 1]
    end
    -- The fencing token is the fire's nominal due in microseconds: it grows with the dues of
    -- the task, whatever the order in which the claims reach Redis (after a pause, commands
    -- sent before it are executed in no particular order) and across an empty restart.
    local token = math.max(1, math.floor(tonumber(due) * 1000000 + 0.5))
    local text = string.format('%.0f', token)  -- (concatenated, a number loses digits)
    redis.call('HSET', tk, 'owner', owner)
    redis.call('PEXPIRE', tk, ttl)
    redis.call('SET', fk, owner .. '|' .. text, 'PX', ttl)
    local name = task .. '\\31' .. due .. '\\31' .. text
    redis.call('ZADD', ok, due, name .. '\\31' .. owner)
    redis.call('PEXPIRE', ok, ttl)
    redis.call('ZADD', p .. ':claims:' .. owner, due, name)
    if cpu then
      redis.call('HINCRBY', p .. ':placed', owner, 1)
      score[owner] = score[owner] - 1
    end
    if owner == me then out[#out + 1] = token else out[#out + 1] = 0 end
  end
end
return out
"""

_REAP = """
-- ARGV: prefix, the node, now (text), how many reaped entries to keep, '1' if it leaves
local p, dead, now, keep, leaving = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if redis.call('EXISTS', p .. ':node:' .. dead) == 1 then return false end
if redis.call('SREM', p .. ':members', dead) == 0 and leaving ~= '1' then return false end
local claims = redis.call('ZRANGE', p .. ':claims:' .. dead, 0, -1)
local runs = redis.call('HKEYS', p .. ':runs:' .. dead)
redis.call('DEL', p .. ':claims:' .. dead, p .. ':runs:' .. dead, p .. ':tasks:' .. dead)
redis.call('HDEL', p .. ':free', dead)
redis.call('HDEL', p .. ':placed', dead)
local running = {}
for _, name in ipairs(runs) do running[name] = true end
local closed = {}
for _, list in ipairs({claims, runs}) do
  for _, name in ipairs(list) do
    if not closed[name] then
      closed[name] = true
      local task = string.sub(name, 1, string.find(name, '\\31', 1, true) - 1)
      redis.call('ZREM', p .. ':open:' .. task, name .. '\\31' .. dead)
      if leaving ~= '1' then  -- the reports, in the same step: none is lost
        local what = running[name] and 'lost' or 'missed'
        redis.call('HINCRBY', p .. ':' .. what, task, 1)
        local entry = what .. '\\31' .. dead .. '\\31' .. name .. '\\31' .. now
        redis.call('LPUSH', p .. ':reaped', entry)
      end
    end
  end
end
redis.call('LTRIM', p .. ':reaped', 0, keep - 1)
-- its counts join those of the nodes gone before (one hash, not one per node ever started)
local counts = redis.call('HGETALL', p .. ':counts:' .. dead)
for i = 1, #counts, 2 do
  local total = {0, 0, 0, 0}
  local before = redis.call('HGET', p .. ':counts:gone', counts[i])
  local k = 1
  if before then
    for value in string.gmatch(before, '%d+') do total[k] = tonumber(value); k = k + 1 end
  end
  k = 1
  for value in string.gmatch(counts[i + 1], '%d+') do
    total[k] = total[k] + tonumber(value)
    k = k + 1
  end
  local text = string.format('%d,%d,%d,%d', total[1], total[2], total[3], total[4])
  redis.call('HSET', p .. ':counts:gone', counts[i], text)
end
redis.call('DEL', p .. ':counts:' .. dead)
redis.call('SREM', p .. ':counted', dead)
redis.call('SADD', p .. ':counted', 'gone')
return {claims, runs}
"""


#: The events counted in a node's counts (runs, failures, timeouts, missed).
_COUNTED = frozenset(
    ("run_succeeded", "run_failed", "run_timed_out", "run_cancelled", "run_missed")
)


def _call(answer: Callable[[list[Verdict]], None], verdicts: list[Verdict]) -> None:
    """Hand verdicts over; a loop that closed meanwhile (the app stops) must not end the
    thread."""
    try:
        answer(verdicts)
    except RuntimeError as error:
        logger.debug("claim verdicts not delivered: %r", error)


def _fire_name(task: str, due: float, token: int) -> str:
    return f"{task}{_SEP}{due!r}{_SEP}{token}"


def _parse_name(name: str) -> tuple[str, float, int]:
    task, due, token = name.rsplit(_SEP, 2)
    return task, float(due), int(token)


class ClusterMember:
    """This node in the cluster whose keys are under `prefix` on the Redis server at `url`.

    `workers`: how many sync runs this node takes at once (its free capacity is that less its
    sync runs in flight); `sticky`: the tasks whose overlap policy is not "allow" (their fires
    follow an open run of theirs); `cpu_bound`: the sync tasks (placed by free capacity). Use
    `start` on the app's loop, then `ask` and `record` from anywhere.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        workers: int,
        sticky: Iterable[str] = (),
        cpu_bound: Iterable[str] = (),
        node: str | None = None,
        options: Mapping[str, Any] | None = None,
        tasks: Iterable[str] | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.workers = max(1, workers)
        self.sticky = set(sticky)
        self.cpu_bound = set(cpu_bound)
        # The tasks this node serves: only their fires are placed on it (None: any task).
        self.tasks = None if tasks is None else set(tasks)
        self.options = dict(options or {})  # for redis-py (TLS, credentials): the store's
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._cond = threading.Condition()
        self._asks: list[tuple[list[tuple[str, float]], Callable[[list[Verdict]], None]]] = []
        self._reports: list[tuple[str, str, float, int]] = []  # (what, task, due, token)
        self._owned: dict[tuple[str, float], int] = {}  # fires claimed here, not yet started
        self._started: dict[tuple[str, float], int] = {}  # ... started, not yet ended
        self._running = 0
        self._tasks_changed = False
        # This node's counts per task (runs, failures, timeouts, missed), and the tasks whose
        # counts changed since they were last written (`stats` sums every node's).
        self._counts: dict[str, list[int]] = {}
        self._counts_changed: set[str] = set()
        # Control verbs from the other nodes: (verb, task, data), called on the app's loop.
        self._on_control: Callable[[str, str, bytes], None] | None = None
        self._listener: threading.Thread | None = None
        self._beating: threading.Thread | None = None
        self._wake_beat = threading.Event()  # set when the node leaves
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing: str | None = None  # the outage being lived through, logged once
        self._reap_from = 0.0  # (monotonic) when this node may reap others
        #: Runs of other nodes reported lost here, and fires of theirs missed (counts).
        self.reaped_lost = 0
        self.reaped_missed = 0
        self.plan: ClusterPlan | None = None  # once started
        self._loop: asyncio.AbstractEventLoop | None = None  # the app's, once started
        self._redis: Any = None  # answers text
        self._bytes: Any = None  # answers bytes (the control verbs, pickled)
        self._claim: Any = None
        self._reap: Any = None

    # -- the loop's side ------------------------------------------------------------------------

    async def start(self) -> ClusterPlan:
        """Join the cluster: its epoch (set now if this is its first node) and whether other
        nodes serve already."""
        import redis

        options = {**self.options, "socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        self._redis = redis.Redis.from_url(self.url, **options, decode_responses=True)
        self._bytes = redis.Redis.from_url(self.url, **options)
        self._claim = self._redis.register_script(_CLAIM)
        self._reap = self._redis.register_script(_REAP)
        self._loop = asyncio.get_running_loop()
        plan = self.plan = await asyncio.to_thread(self._join)
        self._thread = threading.Thread(target=self._run, name="aioclock-cluster", daemon=True)
        self._thread.start()
        self._beating = threading.Thread(
            target=self._keep_alive, name="aioclock-cluster-heartbeat", daemon=True
        )
        self._beating.start()
        logger.info(
            "node %s joined the cluster %s (%s; epoch %.3f)",
            self.node,
            self.prefix,
            "other nodes serve" if plan.joining else "no other node serves",
            plan.epoch,
        )
        return plan

    def ask(self, fires: list[tuple[str, float]], answer: Callable[[list[Verdict]], None]) -> None:
        """Claim `fires`; `answer(verdicts)` is called from the cluster's thread."""
        with self._cond:
            self._asks.append((fires, answer))
            self._cond.notify_all()

    def claim(
        self, fires: list[tuple[str, float]], deliver: Callable[[ClaimVerdicts], None]
    ) -> None:
        """Claim `fires` for a runtime: `deliver(ClaimVerdicts)` is called on the loop that
        started this member."""
        loop = self._loop
        assert loop is not None, "start() first"

        def answer(verdicts: list[Verdict]) -> None:
            loop.call_soon_threadsafe(deliver, ClaimVerdicts(verdicts))

        self.ask(fires, answer)

    def record(self, event: Event) -> None:
        """A sink of the app's events: the runs of this node's claimed fires, as they start,
        end or are skipped, are reported to the cluster (behind, from the thread)."""
        kind = event.kind
        if event.task is None:
            return
        self._count(event)
        if event.due is None:
            return
        key = (event.task, event.due)
        with self._cond:
            if kind == "run_started":
                token = self._owned.pop(key, None)
                if event.task in self.cpu_bound:
                    self._running += 1
                if token is not None:
                    self._started[key] = token
                    self._reports.append(("start", event.task, event.due, token))
            elif kind == "run_missed":
                token = self._owned.pop(key, None)
                if token is not None:
                    self._reports.append(("end", event.task, event.due, token))
            elif kind in ("run_succeeded", "run_failed", "run_timed_out", "run_cancelled"):
                if event.task in self.cpu_bound:
                    self._running = max(0, self._running - 1)
                token = self._started.pop(key, None)
                if token is not None:
                    self._reports.append(("end", event.task, event.due, token))
            else:
                return
            self._cond.notify_all()

    def _count(self, event: Event) -> None:
        kind = event.kind
        if kind not in _COUNTED:
            return
        assert event.task is not None
        with self._cond:
            counts = self._counts.get(event.task)
            if counts is None:
                counts = self._counts[event.task] = [0, 0, 0, 0]
            if kind == "run_missed":
                counts[3] += event.count
            else:
                counts[0] += 1
                if kind == "run_failed":
                    counts[1] += 1
                elif kind == "run_timed_out":
                    counts[2] += 1
            self._counts_changed.add(event.task)

    def listen(self, on_control: Callable[[str, str, bytes], None]) -> None:
        """Call `on_control(verb, task, data)` for each control verb another node applied
        (from a thread of its own: the caller passes it to its loop)."""
        self._on_control = on_control
        self._listener = threading.Thread(
            target=self._listen, name="aioclock-cluster-control", daemon=True
        )
        self._listener.start()

    def publish(self, verb: str, task: str, data: bytes = b"") -> None:
        """Tell the other nodes that this one applied a control verb (they apply it too). It
        is sent at once: a verb is rare, and its caller waits for it anyway."""
        import pickle

        message = pickle.dumps((self.node, verb, task, data))
        self._bytes.publish(self._key("control"), message)

    async def stats(self) -> dict[str, tuple[int, int, int, int, int]]:
        """The counts of every node that served, per task: runs, failures, timeouts, missed,
        and the runs lost with a node that died."""
        return await asyncio.to_thread(self._read_stats)

    def _read_stats(self) -> dict[str, tuple[int, int, int, int, int]]:
        self._write_counts()  # this node's latest first
        totals: dict[str, list[int]] = {}
        for member in self._redis.smembers(self._key("counted")):
            for task, text in self._redis.hgetall(self._key(f"counts:{member}")).items():
                values = [int(part) for part in text.split(",")]
                total = totals.setdefault(task, [0, 0, 0, 0, 0])
                for index, value in enumerate(values[:4]):
                    total[index] += value
        for task, lost in self._redis.hgetall(self._key("lost")).items():
            totals.setdefault(task, [0, 0, 0, 0, 0])[4] = int(lost)
        for task, missed in self._redis.hgetall(self._key("missed")).items():  # (reaped)
            totals.setdefault(task, [0, 0, 0, 0, 0])[3] += int(missed)
        return {task: (t[0], t[1], t[2], t[3], t[4]) for task, t in totals.items()}

    def _write_counts(self) -> None:
        with self._cond:
            changed = {task: list(self._counts[task]) for task in self._counts_changed}
            self._counts_changed.clear()
        if not changed:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.sadd(self._key("counted"), self.node)
            mapping = {task: ",".join(map(str, counts)) for task, counts in changed.items()}
            pipe.hset(self._key(f"counts:{self.node}"), mapping=mapping)
            pipe.execute()
        except Exception:
            with self._cond:  # written at the next heartbeat
                self._counts_changed.update(changed)
            raise

    def _listen(self) -> None:
        import pickle

        failing = False
        while not self._stopping:
            pubsub = self._bytes.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._key("control"))
                failing = False
                while not self._stopping:
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    try:
                        node, verb, task, data = pickle.loads(message["data"])
                    except Exception as error:  # not ours: skipped, the subscription stays
                        logger.warning(
                            "cluster %s: a control message skipped: %r", self.prefix, error
                        )
                        continue
                    if node != self.node and self._on_control is not None:
                        self._on_control(verb, task, data)
            except Exception as error:
                if not failing:
                    failing = True
                    logger.warning(
                        "cluster %s: control verbs of other nodes not received (%r); retrying",
                        self.prefix,
                        error,
                    )
                time.sleep(0.2)
            finally:
                pubsub.close()

    async def close(self) -> None:
        """Leave the cluster: last reports, then this node's keys go (nothing is reaped)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._wake_beat.set()
        for thread in (self._beating, self._thread, self._listener):
            if thread is not None:
                await asyncio.to_thread(thread.join, CLOSE_WAIT)
        self._thread = self._listener = self._beating = None
        if self._redis is not None:
            self._redis.close()
            self._bytes.close()

    # -- the thread -------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def _join(self) -> ClusterPlan:
        r = self._redis
        r.set(self._key("epoch"), repr(time.time()), nx=True)
        epoch = float(r.get(self._key("epoch")))
        others = [m for m in r.smembers(self._key("members")) if m != self.node]
        alive = [m for m in others if r.exists(self._key(f"node:{m}"))]
        self._beat()
        return ClusterPlan(epoch=epoch, joining=bool(alive))

    def _write_tasks(self) -> None:
        """Say which tasks this node serves (their fires may be placed on it)."""
        key = self._key(f"tasks:{self.node}")
        with self._cond:
            tasks = sorted(self.tasks) if self.tasks is not None else []
        pipe = self._redis.pipeline(transaction=True)  # (never seen half written)
        pipe.delete(key)
        for start in range(0, len(tasks), 10_000):
            pipe.sadd(key, *tasks[start : start + 10_000])
        pipe.execute()

    def task_added(self, task: str) -> None:
        """This node serves `task` from now on (written at the next heartbeat)."""
        with self._cond:
            if self.tasks is not None:
                self.tasks.add(task)
                self._tasks_changed = True

    def _beat(self) -> None:
        """Say this node is alive, and how many workers it has free."""
        with self._cond:
            free = self.workers - self._running
            rewrite, self._tasks_changed = self._tasks_changed, False
        if self.tasks is not None and (
            rewrite or not self._redis.exists(self._key(f"tasks:{self.node}"))
        ):  # (changed, or Redis restarted empty)
            self._write_tasks()
        pipe = self._redis.pipeline(transaction=False)
        if self.plan is not None:  # (Redis restarted empty: the cluster keeps its grids)
            pipe.set(self._key("epoch"), repr(self.plan.epoch), nx=True)
        pipe.sadd(self._key("members"), self.node)
        pipe.set(self._key(f"node:{self.node}"), "1", px=int(NODE_TTL * 1000))
        pipe.hset(self._key("free"), self.node, free)
        pipe.hset(self._key("placed"), self.node, 0)
        pipe.execute()

    def _run(self) -> None:
        """The claims thread: answers the claims asked, writes the reports of runs."""
        while True:
            with self._cond:
                if not (self._asks or self._reports or self._stopping):
                    self._cond.wait()
                asks, self._asks = self._asks, []
                reports, self._reports = self._reports, []
                stopping = self._stopping
            try:
                if asks:
                    self._answer(asks)
                    asks = []
                if reports:
                    self._report(reports)
                    reports = []
                if stopping:
                    beating = self._beating
                    if beating is not None:  # its last beat must not come after the leave
                        beating.join(CLOSE_WAIT)
                    self._close_unstarted(everything=True)
                    self._leave()
                    return
                self._answered()
            except Exception as error:  # Redis down, failing over, or too slow: fail closed
                self._fail(error, asks, reports)
                if stopping:
                    return

    def _keep_alive(self) -> None:
        """The heartbeat thread: says this node is alive (a thread of its own, so that a
        flood of claims never delays it), writes its counts, reaps the nodes that died."""
        # No node is reaped before the others had the time to say they are alive: at the
        # start, and after an outage of Redis (when every node's heartbeat lapsed).
        self._reap_from = time.monotonic() + NODE_TTL
        while True:
            with self._cond:
                if self._stopping:
                    return
            beat_at = time.monotonic() + HEARTBEAT
            try:
                self._close_unstarted()
                self._beat()
                self._write_counts()
                if time.monotonic() >= self._reap_from:
                    self._reap_the_dead()
                self._answered()
            except Exception as error:
                self._fail(error, [], [])
            # (its own event: the claims and reports that wake the other thread do not wake it)
            self._wake_beat.wait(max(0.0, beat_at - time.monotonic()))

    def _answered(self) -> None:
        """Redis answered: an outage, if there was one, is over."""
        if self._failing is None:
            return
        with self._cond:
            if self._failing is None:
                return
            self._failing = None
            self._reap_from = time.monotonic() + NODE_TTL
        logger.warning("cluster %s: Redis answers again", self.prefix)

    def _fail(
        self,
        error: Exception,
        asks: list[tuple[list[tuple[str, float]], Callable[[list[Verdict]], None]]],
        reports: list[tuple[str, str, float, int]],
    ) -> None:
        with self._cond:
            first = self._failing is None
            if first:
                self._failing = f"{type(error).__name__}: {error}"
        if first:
            logger.error(
                "cluster %s: Redis does not answer (%s): this node runs no fire it cannot "
                "claim until it does (logged once per outage)",
                self.prefix,
                self._failing,
            )
        for fires, answer in asks:
            _call(answer, [(task, due, -1) for task, due in fires])
        with self._cond:  # reports are kept for when Redis answers again
            self._reports[:0] = reports
        time.sleep(min(HEARTBEAT, 0.1))  # do not spin while it is down

    def _answer(
        self, asks: list[tuple[list[tuple[str, float]], Callable[[list[Verdict]], None]]]
    ) -> None:
        head: list[Any] = [self.prefix, self.node, int(CLAIM_TTL * 1000)]
        cpu = self.cpu_bound
        fires_args: list[Any] = []
        for fires, _ in asks:
            for task, due in fires:
                flags = ("s" if task in self.sticky else "") + ("c" if task in cpu else "")
                fires_args += (task, repr(due), flags or "-")
        tokens: list[Any] = []
        step = 3 * CLAIM_BATCH
        for start in range(0, len(fires_args), step):  # a script call blocks Redis: keep it short
            tokens += self._claim(args=head + fires_args[start : start + step])
        index = 0
        for fires, answer in asks:
            verdicts: list[Verdict] = []
            with self._cond:
                for task, due in fires:
                    token = int(tokens[index])
                    index += 1
                    if token > 0:
                        self._owned[(task, due)] = token
                    verdicts.append((task, due, token))
            _call(answer, verdicts)

    def _report(self, reports: list[tuple[str, str, float, int]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        runs = self._key(f"runs:{self.node}")
        claims = self._key(f"claims:{self.node}")
        for what, task, due, token in reports:
            name = _fire_name(task, due, token)
            if what == "start":
                pipe.zrem(claims, name)
                pipe.hset(runs, name, repr(time.time()))
            else:
                pipe.zrem(claims, name)
                pipe.hdel(runs, name)
                pipe.zrem(self._key(f"open:{task}"), f"{name}{_SEP}{self.node}")
        pipe.execute()

    def _close_unstarted(self, everything: bool = False) -> None:
        """Fires claimed here that never started (skipped by a catch-up, or their task was
        paused meanwhile) are closed, so that they hold no task's runs to this node; on the way
        out (`everything`), all of them."""
        limit = float("inf") if everything else time.time() - UNSTARTED_CLOSE
        with self._cond:
            stale = [(key, token) for key, token in self._owned.items() if key[1] < limit]
            for key, token in stale:
                del self._owned[key]
                self._reports.append(("end", key[0], key[1], token))

    def _leave(self) -> None:
        """Write the last reports, then leave: this node's keys go with it."""
        with self._cond:
            reports, self._reports = self._reports, []
        if reports:
            self._report(reports)
        self._write_counts()
        self._redis.delete(self._key(f"node:{self.node}"))
        # Its claims, runs and open fires go, and its counts join those of the nodes gone.
        now = repr(time.time())
        self._reap(args=[self.prefix, self.node, now, REAPED_KEEP, "1"])

    def _reap_the_dead(self) -> None:
        """Nodes that stopped saying they are alive: their runs are reported lost, their
        claimed fires that did not start missed (one node does it, atomically)."""
        r = self._redis
        for member in r.smembers(self._key("members")):
            if member == self.node or r.exists(self._key(f"node:{member}")):
                continue
            now = repr(time.time())
            reaped = self._reap(args=[self.prefix, member, now, REAPED_KEEP, "0"])
            if not reaped:
                continue  # another node reaped it first, or it came back
            claims, runs = reaped
            self._report_reaped(member, [_parse_name(n) for n in claims if n not in runs], runs)

    def _report_reaped(
        self, member: str, unstarted: list[tuple[str, float, int]], runs: list[str]
    ) -> None:
        logger.error(
            "node %s of cluster %s stopped answering: %d run(s) of it lost, %d fire(s) placed "
            "on it did not start",
            member,
            self.prefix,
            len(runs),
            len(unstarted),
        )
        for name in runs:  # (counted and listed by the reaping script)
            task, due, token = _parse_name(name)
            logger.error(
                "run of %s due %.3f lost with node %s (fencing token %d)", task, due, member, token
            )
        for task, due, token in unstarted:
            logger.warning(
                "fire of %s due %.3f missed: its node %s died before running it (fencing token %d)",
                task,
                due,
                member,
                token,
            )
        self.reaped_lost += len(runs)
        self.reaped_missed += len(unstarted)
