"""voiceagent: phone agents on Twilio ConversationRelay and Amazon Bedrock.

Three layers, arrows one way (docs/architecture.md): ``voiceagent.app`` is the edges (HTTP
and WebSocket app, server, CLI, sessions, runtime, metrics, load generator, testing helpers);
the sibling package ``actors`` runs one call; the rest of ``voiceagent`` is the parts they use
(model, store, relay protocol, tools, use cases, settings), which import neither.
"""

__version__ = "0.1.0"
