"""The edges: the HTTP and WebSocket app, the server, the CLI, sessions, the runtime, metrics,
the load generator and the testing helpers. They import the actors and the parts; nothing
imports them (docs/architecture.md)."""
