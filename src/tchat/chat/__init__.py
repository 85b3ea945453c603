"""Live chat: WebSocket protocol, validation, rate limits, stores, history API, fan-out."""
