"""Several SFU instances serving one deployment, each its own process.

`tchat serve` with NUM_SFU_INSTANCES > 1 supervises instance processes (supervisor.py)
and answers WHIP/WHEP through them (backend.py: `Cluster`, placed by routing.py). An
instance (instance.py) is an `SfuWorker` plus a `Relay` (relay.py): the room's *origin*
(origin.py) sends its publisher's RTP to *edges* (edge.py), which feed it into their
own tracks through `SfuCore.feed`. Both roles follow the worker's sessions through its
events, not by extending it. wire.py is the relay's datagram format; control.py signs
the instances' control API.
"""
