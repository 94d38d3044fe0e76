"""A local judge that knows the demo world: an OpenAI-compatible chat-completions server on 127.0.0.1.

    with world_judge(seed=0) as url:           # "http://127.0.0.1:PORT/v1", an ephemeral port
        judge_files(a, b, out, base_url=url, config=JudgeConfig(model=WORLD_JUDGE_MODEL))

    python -m mbc_jax.judge.world_server --seed 0     # serve until Ctrl-C; prints the URL

It answers `POST /v1/chat/completions` requests carrying the paper's Figure 4 prompt (the default
`templates/figure4_judge_prompt.txt`): it reads the user instruction and the two responses out of
the rendered prompt, grades each response by the world's facts and the task's rule
(`mbc_jax.demo.grader.WorldGrader`), and replies in the Figure 4 verdict format: a short
explanation, then [[A]] (Assistant A, the response shown first, is better), [[B]], or [[C]] for a
tie (grades within `TIE_MARGIN`, or a prompt that is not one of the world's tasks). Its verdict
depends only on the two responses, never on their order or length as such, so both `--orders`
protocols of `mbc-jax judge` run against it. A prompt that is not the Figure 4 prompt is answered
HTTP 400. It is for the demo world only: real data needs a real LLM judge (the default, the
paper's gpt-4). Standard library only; one thread per request.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mbc_jax.demo.grader import WorldGrader

WORLD_JUDGE_MODEL = "mbc-demo-world-judge"
TIE_MARGIN = 0.05  # grades closer than this are a tie
_PROMPT_RE = re.compile(
    r"\[User Instruction\]\n(?P<instruction>.*?)\n\n"
    r"\[The Start of Assistant A's Response\]\n(?P<a>.*?)\n\[The End of Assistant A's Response\]\n\n"
    r"\[The Start of Assistant B's Response\]\n(?P<b>.*?)\n\[The End of Assistant B's Response\]\s*\Z",
    re.DOTALL)


class PromptError(ValueError):
    """The request does not carry a Figure 4 judging prompt."""


def parse_prompt(messages: list[dict]) -> tuple[str, str, str]:
    """(instruction, response shown first, response shown second) from the Figure 4 user message."""
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise PromptError("no user message with text content")
    m = _PROMPT_RE.search(users[-1])
    if not m:
        raise PromptError("the user message is not the Figure 4 judging prompt ([User Instruction], "
                          "[The Start of Assistant A's Response], ...)")
    return m["instruction"], m["a"], m["b"]


def verdict(grader: WorldGrader, instruction: str, first: str, second: str) -> str:
    """The judge's reply: each response's grade and reason, then [[A]], [[B]] or [[C]]."""
    a, b = grader.grade(instruction, first), grader.grade(instruction, second)
    if a is None or b is None:
        return "The instruction is not one of the demo world's tasks, so I cannot judge it by its facts. [[C]]"
    text = (f"Assistant A {a.reason} (grade {a.score:.2f}). Assistant B {b.reason} (grade {b.score:.2f}). ")
    if abs(a.score - b.score) < TIE_MARGIN:
        return text + "They are equally good. [[C]]"
    return text + ("Assistant A is better. [[A]]" if a.score > b.score else "Assistant B is better. [[B]]")


class WorldJudgeServer:
    """The server; `start()` binds 127.0.0.1 on an ephemeral port, `stop()` shuts it down."""

    def __init__(self, seed: int = 0, host: str = "127.0.0.1", port: int = 0):
        self.grader = WorldGrader(seed)
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                server._post(self)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    server._send(self, 200, {"object": "list", "data": [
                        {"id": WORLD_JUDGE_MODEL, "object": "model", "owned_by": "mbc-jax"}]})
                else:
                    server._send(self, 404, {"error": {"message": f"no route {self.path}"}})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> WorldJudgeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="world-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        if not handler.path.rstrip("/").endswith("/chat/completions"):
            return self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
        try:
            body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)))
            instruction, first, second = parse_prompt(body.get("messages") or [])
        except (json.JSONDecodeError, PromptError, AttributeError) as e:
            return self._send(handler, 400, {"error": {"message": f"world judge: {e}", "type": "invalid_request"}})
        text = verdict(self.grader, instruction, first, second)
        with self._lock:
            self.requests += 1
            n = self.requests
        self._send(handler, 200, {
            "id": f"world-judge-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or WORLD_JUDGE_MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })


@contextmanager
def world_judge(seed: int = 0) -> Iterator[str]:
    """Serve the world judge of `seed` on 127.0.0.1 for the block; yields its base URL (".../v1")."""
    server = WorldJudgeServer(seed).start()
    try:
        yield server.url
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mbc_jax.judge.world_server", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="the demo world's seed (the suite's; default 0)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = p.parse_args(argv)
    server = WorldJudgeServer(args.seed, port=args.port)
    print(f"world judge (seed {args.seed}) at {server.url}; model name {WORLD_JUDGE_MODEL}; Ctrl-C stops it",
          flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
