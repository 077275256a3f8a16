"""Streaming WebSocket server for qwen3tts-jax: the /api/v1/speak protocol (docs/PROTOCOL.md)."""
