"""N SFU instance processes under one `tchat serve`: spawn, heartbeat, restart.

Each instance is `python -m tchat.instance` (sfu/cluster/instance.py with the
recorder). Once a second the supervisor reads every instance's /stats (its load
figures) and publishes its record to the routing store with a TTL; a process that
exits is removed from routing at once (its rooms' routes die with it) and started
again under a new id, so viewers it held can reconnect and a publisher it held can go
live again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tchat.aio import cancel_and_wait
from tchat.sfu.cluster.control import ControlAuth
from tchat.sfu.cluster.instance import FINALIZE_BUDGET_S, KEY_ENV
from tchat.sfu.cluster.routing import InstanceRecord, Routing, RoutingUnavailable

log = logging.getLogger("tchat.sfu.cluster.supervisor")
HEARTBEAT_S = 1.0
# a live process whose /stats does not answer (busy) stays routable this many beats;
# after that its record is left to expire (a hung instance leaves routing)
MAX_MISSED_STATS = 5
# an instance process imports and binds in ~1 s; on a busy 2-core host it took over 30 s
# (load average ~30): waiting longer costs nothing when it starts, failing costs the server
START_TIMEOUT_S = 120.0
# a node stopping finalizes its recordings (bounded by FINALIZE_BUDGET_S) before it exits
STOP_TIMEOUT_S = FINALIZE_BUDGET_S + 5.0
RESTART_BACKOFF_S = 1.0


@dataclass(eq=False)
class LocalInstance:
    index: int
    record: InstanceRecord
    proc: asyncio.subprocess.Process
    stats: dict[str, object]
    missed: int = 0


async def end(proc: asyncio.subprocess.Process, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a node: EOF on its stdin, then SIGKILL only if it is still there `timeout_s`
    later (it exits once its recordings finalized, within FINALIZE_BUDGET_S)."""
    if proc.returncode is None:
        if proc.stdin is not None:
            proc.stdin.close()  # the node exits cleanly on EOF
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            log.error("sfu node pid=%d did not stop in %.0f s; killing it", proc.pid, timeout_s)
            proc.kill()
            await proc.wait()


class Supervisor:
    def __init__(
        self,
        count: int,
        routing: Routing,
        key: str,
        host: str,
        base_udp_port: int = 0,
        base_tcp_port: int = 0,
        max_load: float = 0.9,
        env: dict[str, str] | None = None,
    ) -> None:
        self.count = count
        # settings the instance processes must see exactly as the server resolved them
        self.env = dict(env or {})
        self.routing = routing
        self.key = key
        self.host = host
        self.base_udp_port = base_udp_port
        self.base_tcp_port = base_tcp_port  # ICE-TCP: instance i on base + i (0: off)
        self.max_load = max_load
        self.serve_id = secrets.token_hex(3)
        self.instances: dict[int, LocalInstance] = {}
        self.restarts = 0
        self._generation = 0
        self._client = httpx.AsyncClient(timeout=2.0, auth=ControlAuth(key))
        self._task: asyncio.Task[None] | None = None
        # restarts run beside the heartbeats: a spawn takes seconds on a busy host, longer
        # than the live instances' heartbeat TTL
        self._restarting: dict[int, asyncio.Task[None]] = {}
        # called with an instance that died, its last heartbeat's stats included
        self.on_lost: Callable[[LocalInstance], None] | None = None

    async def start(self) -> None:
        started = await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        for inst in started:
            self.instances[inst.index] = inst
            await self._publish(inst)
        self._task = asyncio.create_task(self._monitor(), name="sfu-supervisor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._restarting.values())
        await asyncio.gather(*(end(inst.proc) for inst in self.instances.values()))
        for inst in self.instances.values():
            try:
                await self.routing.remove_instance(inst.record.id)
            except RoutingUnavailable:
                pass
        await self._client.aclose()

    async def _spawn(self, index: int) -> LocalInstance:
        self._generation += 1
        instance_id = f"{self.serve_id}-{index}-{self._generation}"
        port = self.base_udp_port + index if self.base_udp_port else 0
        tcp = self.base_tcp_port + index if self.base_tcp_port else 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tchat.instance", "--id", instance_id, "--udp-port", str(port),
            "--tcp-port", str(tcp),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env, KEY_ENV: self.key},
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            ports = json.loads(line)
        except (TimeoutError, ValueError, KeyError):
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"SFU instance {index} did not start") from None
        except asyncio.CancelledError:  # stopped while it started: no orphan process
            proc.kill()
            raise
        record = InstanceRecord(
            id=instance_id,
            udp_port=int(ports["udp_port"]),
            host=self.host,
            control=f"http://{self.host}:{ports['control_port']}",
            relay_port=int(ports["relay_port"]),
            pid=int(ports["pid"]),
            max_load=self.max_load,
        )
        log.info("sfu instance %s up pid=%d udp=%d", instance_id, record.pid, record.udp_port)
        return LocalInstance(index, record, proc, {})

    async def _publish(self, inst: LocalInstance) -> None:
        try:
            await self.routing.put_instance(inst.record)
        except RoutingUnavailable as exc:
            log.warning("sfu heartbeat not stored: %s", exc)

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            # concurrently: one slow instance must not delay the others' heartbeats
            # past their TTL
            await asyncio.gather(
                *(
                    self._check_logged(i, inst)
                    for i, inst in list(self.instances.items())
                    if i not in self._restarting
                )
            )

    async def _check_logged(self, index: int, inst: LocalInstance) -> None:
        try:
            await self._check(index, inst)
        except Exception:
            log.exception("sfu supervisor check of instance %d failed", index)

    async def _check(self, index: int, inst: LocalInstance) -> None:
        if inst.proc.returncode is not None:
            log.warning(
                "sfu instance %s exited (%s); restarting", inst.record.id, inst.proc.returncode
            )
            task = asyncio.create_task(self._restart(index, inst), name=f"sfu-restart-{index}")
            self._restarting[index] = task
            task.add_done_callback(lambda _: self._restarting.pop(index, None))
            return
        asked = time.time()  # the counts below are as of this moment, or later
        try:
            resp = await self._client.get(inst.record.control + "/stats")
            inst.stats = resp.json()
        except (httpx.HTTPError, ValueError):
            inst.missed += 1
            if inst.missed <= MAX_MISSED_STATS:
                await self._publish(inst)  # alive but busy: keep it routable
            return
        inst.missed = 0
        inst.record.sampled = asked
        inst.record.viewers = int(inst.stats.get("viewers", 0))  # type: ignore[call-overload]
        inst.record.load = float(inst.stats.get("load", 0.0))  # type: ignore[arg-type]
        await self._publish(inst)

    async def _restart(self, index: int, inst: LocalInstance) -> None:
        try:
            await self.routing.remove_instance(inst.record.id)
        except RoutingUnavailable as exc:
            log.warning("could not remove dead instance from routing: %s", exc)
        if self.on_lost is not None:
            try:
                self.on_lost(inst)
            except Exception:
                log.exception("sfu on_lost of instance %s failed", inst.record.id)
        await asyncio.sleep(RESTART_BACKOFF_S)
        try:
            fresh = await self._spawn(index)
        except RuntimeError:
            log.exception("sfu instance %d restart failed; retrying", index)
            return  # still dead: the next heartbeat round tries again
        self.instances[index] = fresh
        self.restarts += 1
        await self._publish(fresh)

    async def stats(self) -> list[dict[str, object]]:
        async def one(inst: LocalInstance) -> dict[str, object]:
            try:
                data: dict[str, object] = (
                    await self._client.get(inst.record.control + "/stats")
                ).json()
            except (httpx.HTTPError, ValueError) as exc:
                data = {"id": inst.record.id, "error": str(exc)}
            data["index"] = inst.index
            data["at"] = time.time()
            return data

        return list(await asyncio.gather(*(one(i) for i in self.instances.values())))
