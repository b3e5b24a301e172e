"""A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server...).

``POST {base_url}/chat/completions`` with the prompt as one user message, temperature 0, a few
answer tokens and ``logprobs`` requested. Where the reply carries top logprobs, the score is read
from the probabilities of "1".."5" at the first non-blank answer token; else from the digit in
the text; else the answer is unparseable (kept, counted). Standard library only (urllib).

The API key is read from the environment variable named by ``api_key_env`` when a request is
made and goes only into the Authorization header: it is never stored on the judge, in an
answer, an error message or a log line. Timeouts, connection errors, HTTP 429 and 5xx are retried
with exponential backoff (``Retry-After`` honoured, capped); other HTTP errors fail at once. At
most ``concurrency`` requests are in flight.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from universality.report.judge.base import DIGITS, Answer, JudgeError, from_probabilities, from_text

#: Answer tokens asked for ("just a number"), top logprobs per token (OpenAI allows up to 20).
MAX_TOKENS = 8
TOP_LOGPROBS = 10
#: First backoff (s) and its cap; attempt n waits BACKOFF * 2**n.
BACKOFF, BACKOFF_CAP = 0.5, 30.0


def from_logprobs(content: list[dict], raw: str) -> Answer | None:
    """The digit probabilities at the first answer token that is not blank (" 3" and "3" pooled)."""
    for position in content or []:
        if not str(position.get("token", "")).strip():
            continue
        probs = {d: 0.0 for d in DIGITS}
        for alt in position.get("top_logprobs") or [position]:
            t = str(alt.get("token", "")).strip()
            if t in probs and alt.get("logprob") is not None:
                probs[t] += math.exp(float(alt["logprob"]))
        return from_probabilities(probs, raw, "logprobs")
    return None


def parse_reply(body: dict) -> Answer:
    """An :class:`Answer` from a chat-completions response body (malformed bodies: unparseable)."""
    try:
        choice = body["choices"][0]
        raw = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return Answer(expected=math.nan, argmax=0, raw=json.dumps(body)[:500], parsed=False, source="none")
    logprobs = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    answer = from_logprobs(logprobs, raw) if logprobs else None
    return answer or from_text(raw)


class OpenAIJudge:
    """Chat completions over HTTP; ``identity`` names the endpoint and model, never the key."""

    def __init__(self, base_url: str, model: str, api_key_env: str, concurrency: int = 4,
                 timeout: float = 60.0, retries: int = 5):
        if not base_url or not model:
            raise JudgeError("judge.kind 'openai' needs judge.base_url and judge.model")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.concurrency, self.timeout, self.retries = max(1, int(concurrency)), float(timeout), int(retries)
        self.identity = {"kind": "openai", "model": model, "base_url": base_url, "api_key_env": api_key_env}

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key is None:
                raise JudgeError(f"judge.api_key_env: the environment variable {self.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, prompt: str) -> dict:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": MAX_TOKENS, "logprobs": True,
                           "top_logprobs": TOP_LOGPROBS}).encode()
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            text = resp.read().decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"unparseable_body": text[:500]}

    def one(self, prompt: str) -> Answer:
        """One prompt, retried on timeouts, connection errors, 429 and 5xx."""
        for attempt in range(self.retries + 1):
            wait = min(BACKOFF * 2 ** attempt, BACKOFF_CAP)
            try:
                return parse_reply(self._request(prompt))
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    raise JudgeError(f"{self.url}: HTTP {e.code} {e.reason} (not retried)") from None
                after = e.headers.get("Retry-After") if e.headers else None
                if after and after.strip().replace(".", "", 1).isdigit():
                    wait = min(float(after), BACKOFF_CAP)
                problem = f"HTTP {e.code}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                problem = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt == self.retries:
                raise JudgeError(f"{self.url}: no answer after {self.retries + 1} attempts (last: {problem})")
            print(f"judge: {self.url}: {problem}; retry {attempt + 1}/{self.retries} in {wait:.1f} s", file=sys.stderr)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def answer(self, prompts: list[str], on_answer=None) -> list[Answer]:
        """Every prompt, at most ``concurrency`` at a time; ``on_answer(i, a)`` in this thread."""
        out: list[Answer | None] = [None] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.one, p): i for i, p in enumerate(prompts)}
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    out[i] = fut.result()
                    if on_answer:
                        on_answer(i, out[i])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return out
