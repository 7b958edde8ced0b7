"""voiceagent: phone agents on Twilio ConversationRelay and Amazon Bedrock.

The service edges (HTTP, WebSocket, model, store, tools) live here; the per-call runtime lives in
the sibling package ``actors``.
"""

__version__ = "0.1.0"
