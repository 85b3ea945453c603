"""Back-pressure on a cluster (issue 17 item 4): an instance that refuses a viewer with
503 (full, overloaded) passes it on to the next instance; the client sees a 503 (with
Retry-After, from the routes) only when every instance refused. The instances' control
API is faked: what is tested is the placement loop of `Cluster.view`."""

from __future__ import annotations

from typing import Any

import pytest

from tchat.config import load_settings
from tchat.sfu.cluster.backend import Cluster
from tchat.sfu.cluster.routing import InstanceRecord
from tchat.sfu.worker import SessionError


def _cluster(full: set[str], refuse: int = 503) -> tuple[Cluster, list[tuple[str, bool]]]:
    cluster = Cluster(load_settings(NUM_SFU_INSTANCES=3))
    asked: list[tuple[str, bool]] = []  # (instance, told to pull from the origin)

    async def call(
        method: str,
        inst: InstanceRecord,
        path: str,
        body: dict[str, Any] | None = None,
        limit_s: float = 10.0,
    ) -> tuple[int, dict[str, Any]]:
        assert (method, path) == ("POST", "/view") and body is not None
        # each instance may hold the viewer a third of SFU_JOIN_WAIT (10 s) in its join
        # queue, and the request's timeout leaves it that long
        assert body["max_wait"] == pytest.approx(10 / 3) and limit_s > body["max_wait"]
        asked.append((inst.id, "origin" in body))
        if inst.id in full:
            return refuse, {"detail": f"SFU is full ({inst.id})"}
        return 200, {"peer": "p1", "answer": "v=0"}

    cluster.call = call  # type: ignore[method-assign]
    return cluster, asked


async def _rooms(cluster: Cluster) -> None:
    for n, (iid, viewers) in enumerate([("a", 5), ("b", 6), ("c", 7)]):
        rec = InstanceRecord(iid, 1000 + n, "127.0.0.1", f"http://{iid}", 2000 + n, n, viewers)
        await cluster.routing.put_instance(rec)
    assert await cluster.routing.set_route("r", "a", None)


async def test_a_full_instance_passes_the_viewer_to_the_next() -> None:
    cluster, asked = _cluster(full={"a", "b"})
    await _rooms(cluster)
    session, answer = await cluster.view("r", "offer", 2)
    # least loaded first (the origin a), then b, then c, which pulls from the origin
    assert session == "c.p1" and answer == "v=0"
    assert asked == [("a", False), ("b", True), ("c", True)]


async def test_every_instance_full_is_a_503_and_other_refusals_are_not_retried() -> None:
    cluster, asked = _cluster(full={"a", "b", "c"})
    await _rooms(cluster)
    with pytest.raises(SessionError) as refused:
        await cluster.view("r", "offer", 2)
    assert refused.value.status == 503 and [i for i, _ in asked] == ["a", "b", "c"]

    cluster, asked = _cluster(full={"a"}, refuse=429)  # this client's limit: not the box's
    await _rooms(cluster)
    with pytest.raises(SessionError) as limited:
        await cluster.view("r", "offer", 2)
    assert limited.value.status == 429 and asked == [("a", False)]
