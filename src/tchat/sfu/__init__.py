"""The SFU: WHIP ingest, WHEP viewers, RTP forwarding without transcoding.

Sans-I/O cores (`sdp`, `rtp`, `ice`, `dtls`, `forwarder`) take inputs by call and a
`now` argument; `worker` is the asyncio shell owning the one UDP port; `api` mounts
the HTTP signalling routes.
"""
