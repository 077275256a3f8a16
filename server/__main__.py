"""`python -m qwen3tts_jax.server`: the streaming /api/v1/speak server.

With no --model it builds (once) and serves a small random-weight demo checkpoint: the
protocol works end to end, but the audio is not speech until real weights are given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .app import TTSServer
from .config import DEFAULT_HTTP_PORT, ServerConfig


class JsonFormatter(logging.Formatter):
    """One JSON object per line; messages that already are JSON objects are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower()}
        msg = record.getMessage()
        try:
            obj = json.loads(msg) if msg.startswith("{") else None
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            out.update(obj)
        else:
            out["logger"] = record.name
            out["message"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("qwen3tts.server").setLevel(level)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m qwen3tts_jax.server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ServerConfig()
    p.add_argument("--model", default=None,
                   help="converted or raw HF checkpoint folder, or a hub id "
                        "(default: the embedded random-weight demo checkpoint)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--devices", default=None, metavar="N|all",
                   help="one engine (and --batch-slots slots) on each of the first N local devices, or all of "
                        "them; requests go to the least-loaded one (default: JAX's default device only)")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port, help="0 picks a free port")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help="the OpenAI-compatible HTTP API (POST /v1/audio/speech, ...); 0 picks a free port")
    p.add_argument("--no-http", action="store_true", help="serve only the WebSocket protocol")
    p.add_argument("--public-listings", action="store_true",
                   help="GET /v1/audio/voices and /v1/models without the auth token (Open WebUI lists without it)")
    p.add_argument("--wyoming-port", type=int, default=None,
                   help="also serve Home Assistant's Wyoming TTS protocol on this TCP port (conventionally 10200; "
                        "off by default)")
    p.add_argument("--voices-dir", type=Path, default=d.voices_dir)
    p.add_argument("--auth-token-env", default=None, metavar="NAME",
                   help="name of the environment variable holding the auth token")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions)
    p.add_argument("--batch-slots", type=int, default=None,
                   help="concurrent streams on the device (default 16; an idle slot costs no compute: "
                        "each step computes only as many rows as are busy, rounded up to a power of two)")
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars)
    p.add_argument("--max-streamed-text-chars", type=int, default=d.max_streamed_text_chars,
                   help="all the text of one streamed request (speak with textStream)")
    p.add_argument("--text-idle-timeout", type=float, default=d.text_idle_timeout_s, metavar="SECONDS",
                   help="an open streamed request with no appendText for this long fails with TIMEOUT")
    p.add_argument("--max-queued", type=int, default=d.max_queued_per_session,
                   help="queued speak requests per session")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, metavar="SECONDS")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes)
    p.add_argument("--max-send-buffer", type=int, default=d.max_send_buffer_bytes, metavar="BYTES")
    p.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace_s, metavar="SECONDS")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="persistent XLA compilation cache, so a restart skips most of the warm-up's compiles "
                        "(default: $JAX_COMPILATION_CACHE_DIR, else ~/.cache/qwen3tts_jax/xla; 'off' disables)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def default_batch_slots() -> int:
    """16 everywhere: idle slots cost nothing since the engine steps only its busy rows (on CPU
    a 16-slot engine with one stream steps as fast as a 1-slot one, BENCHMARKS.md), so the
    default only bounds how many streams share a step. Accelerators, where the step costs about
    the same from 1 to 16 rows, could take more; that awaits a GPU measurement."""
    return 16


def config_from_args(a: argparse.Namespace) -> ServerConfig:
    token = None
    if a.auth_token_env:
        token = os.environ.get(a.auth_token_env)
        if not token:
            raise SystemExit(f"--auth-token-env {a.auth_token_env}: variable is unset or empty")
    return ServerConfig(host=a.host, port=a.port, voices_dir=a.voices_dir, auth_token=token,
                        max_sessions=a.max_sessions, batch_slots=a.batch_slots or default_batch_slots(),
                        max_text_chars=a.max_text_chars, max_queued_per_session=a.max_queued,
                        max_streamed_text_chars=a.max_streamed_text_chars, text_idle_timeout_s=a.text_idle_timeout,
                        request_timeout_s=a.request_timeout, max_message_bytes=a.max_message_bytes,
                        max_send_buffer_bytes=a.max_send_buffer, shutdown_grace_s=a.shutdown_grace,
                        warmup=not a.no_warmup, http_port=None if a.no_http else a.http_port,
                        public_listings=a.public_listings, wyoming_port=a.wyoming_port,
                        devices=resolve_devices(a.devices))


def resolve_devices(value: str | None) -> int | None:
    """--devices: None (JAX's default device), N, or "all" local devices."""
    if value is None:
        return None
    import jax

    available = len(jax.devices())
    n = available if value == "all" else int(value) if value.isdigit() else 0
    if not 1 <= n <= available:
        raise SystemExit(f"--devices {value}: give a count from 1 to {available} (the local devices), or 'all'")
    return n


async def serve_forever(server: TTSServer) -> int:
    """Run until SIGTERM/SIGINT (exit status 0) or a failed model load (1), then shut down."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    status = 0

    async def watch_load():
        nonlocal status
        if not await server.worker.loaded:
            status = 1
            stop.set()

    watcher = loop.create_task(watch_load())
    await stop.wait()
    watcher.cancel()
    log = logging.getLogger("qwen3tts.server")
    log.info(json.dumps({"event": "shutdown", "reason": "model failed to load" if status else "signal"}))
    await server.shutdown()
    return status


def enable_compile_cache(path: str | None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (see --compile-cache); None when off.

    The warm-up compiles every prompt bucket and attention span: on an H100 that took over
    150 s on a fresh machine and under 40 s with this cache filled (benchmarks/LOAD.md).
    """
    import jax

    if path == "off":  # also overrides $JAX_COMPILATION_CACHE_DIR, which jax reads by itself
        jax.config.update("jax_enable_compilation_cache", False)
        return None

    from qwen3tts_jax import paths

    where = Path(path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or paths.xla_cache_dir())
    where.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(where))
    return where


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    cfg = config_from_args(args)
    cache = enable_compile_cache(args.compile_cache)
    logging.getLogger("qwen3tts.server").info(
        json.dumps({"event": "compile_cache", "dir": str(cache) if cache else None}))
    if args.model is None:
        try:
            from qwen3tts_jax.convert.demo import build_demo_checkpoint  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"no --model given and the demo checkpoint builder is unavailable ({exc}); "
                             "pass --model DIR or a hub id") from None

    def loader(device: int | None = None):  # on the device worker's thread, under its device
        from .backend import load_backend

        return load_backend(args.model, args.dtype, cfg.batch_slots)

    run(TTSServer(cfg, loader, model_name=args.model or "demo (random weights)"))


def run(server: TTSServer) -> None:
    """Serve until a signal or a failed load, then exit with `serve_forever`'s status."""
    status = asyncio.run(serve_forever(server))
    if any(t.is_alive() for t in server.worker_threads()):
        # A device worker still inside a load or a compile (it is not waited for): exiting
        # normally would tear the interpreter down under it, which XLA answers with an abort.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    main()
