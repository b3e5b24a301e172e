"""The OpenAI-compatible judge against a real HTTP server on 127.0.0.1 with scripted answers."""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from universality.report.judge import base
from universality.report.judge import openai as oai
from universality.report.judge.base import JudgeError

KEY = "sk-test-7f3a9c-never-print-me"


def completion(content: str, logprobs: list | None = None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return {"id": "x", "object": "chat.completion", "model": "scripted", "choices": [choice]}


class Scripted:
    """A chat-completions server: each request takes the next action of ``script``."""

    def __init__(self, script):
        self.script, self.requests, self.lock = list(script), [], threading.Lock()
        self.release = threading.Event()
        self.in_flight = self.peak = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep the test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    kind, value = outer.script.pop(0) if outer.script else ("json", completion("3"))
                if kind == "hang":
                    outer.release.wait(value)
                    return
                if kind == "slow":  # count requests in flight while this one waits
                    with outer.lock:
                        outer.in_flight += 1
                        outer.peak = max(outer.peak, outer.in_flight)
                    time.sleep(value[0])
                    with outer.lock:
                        outer.in_flight -= 1
                    kind, value = "json", value[1]
                if kind == "status":
                    self.send_response(value)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(b'{"error": "busy"}')
                    return
                data = (json.dumps(value) if kind == "json" else value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(oai, "BACKOFF", 0.01)
    monkeypatch.setenv("JUDGE_TEST_KEY", KEY)


def judge(server, **kw):
    opts = {"timeout": 5.0, "retries": 3, "concurrency": 2, **kw}
    return oai.OpenAIJudge(base_url=server.url, model="scripted-4o", api_key_env="JUDGE_TEST_KEY", **opts)


def lp(token, p):
    return {"token": token, "logprob": math.log(p)}


def test_well_formed_answer_with_logprobs_gives_the_expected_score():
    top = [lp("4", 0.6), lp("3", 0.3), lp(" 3", 0.05), lp("Sure", 0.05)]
    with Scripted([("json", completion("4", [{"token": "4", "logprob": math.log(0.6), "top_logprobs": top}]))]) as s:
        (a,) = judge(s).answer(["prompt one"])
        req = s.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "scripted-4o" and req["body"]["messages"] == [{"role": "user", "content": "prompt one"}]
    assert req["body"]["logprobs"] is True and req["body"]["temperature"] == 0
    # 4: 0.6, 3: 0.35 (" 3" pooled with "3"), renormalised over the digits
    assert a.source == "logprobs" and a.parsed and a.argmax == 4
    assert a.expected == pytest.approx((4 * 0.6 + 3 * 0.35) / 0.95) and a.digit_mass == pytest.approx(0.95)


def test_logprobs_absent_uses_the_parsed_number():
    with Scripted([("json", completion("Score: 2"))]) as s:
        (a,) = judge(s).answer(["p"])
    assert (a.source, a.expected, a.argmax, a.parsed) == ("text", 2.0, 2, True) and math.isnan(a.digit_mass)


def test_logprobs_without_digits_fall_back_to_the_text():
    top = [lp("The", 0.9), lp("A", 0.1)]
    with Scripted([("json", completion("The answer is 5", [{"token": "The", "logprob": math.log(0.9), "top_logprobs": top}]))]) as s:
        (a,) = judge(s).answer(["p"])
    assert a.source == "text" and a.argmax == 5


@pytest.mark.parametrize("reply", [completion("I cannot rate this feature."), {"unexpected": True}, "not json at all"])
def test_malformed_answers_are_unparseable_not_dropped(reply):
    kind = "raw" if isinstance(reply, str) else "json"
    with Scripted([(kind, reply)]) as s:
        (a,) = judge(s).answer(["p"])
    assert not a.parsed and a.source == "none" and math.isnan(a.expected) and a.argmax == 0 and a.raw


def test_429_then_success_is_retried(capsys):
    with Scripted([("status", 429), ("status", 503), ("json", completion("1"))]) as s:
        (a,) = judge(s).answer(["p"])
        assert len(s.requests) == 3
    assert a.argmax == 1
    assert "HTTP 429" in capsys.readouterr().err


def test_client_errors_are_not_retried():
    with Scripted([("status", 401)]) as s:
        with pytest.raises(JudgeError, match="HTTP 401"):
            judge(s).answer(["p"])
        assert len(s.requests) == 1


def test_a_hang_times_out_and_the_retry_succeeds():
    with Scripted([("hang", 30), ("json", completion("5"))]) as s:
        start = time.monotonic()
        (a,) = judge(s, timeout=0.5).answer(["p"])
        assert len(s.requests) == 2
    assert a.argmax == 5 and time.monotonic() - start < 20


def test_a_server_that_always_hangs_fails_naming_the_endpoint_not_the_key(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with Scripted([("hang", 30)] * 3) as s:
        with pytest.raises(JudgeError) as err:
            judge(s, timeout=0.3, retries=2).answer(["p"])
        assert len(s.requests) == 3
    assert s.url in str(err.value) and "3 attempts" in str(err.value)
    out = capsys.readouterr()
    for text in (str(err.value), repr(err.value), out.out, out.err, caplog.text):
        assert KEY not in text


def test_concurrency_limit_and_answers_in_prompt_order():
    with Scripted([("slow", (0.3, completion("3"))) for _ in range(6)]) as s:
        j = judge(s, concurrency=2)
        seen = []
        answers = j.answer([f"p{i}" for i in range(6)], on_answer=lambda i, a: seen.append(i))
        prompts = [r["body"]["messages"][0]["content"] for r in s.requests]
        peak = s.peak
    assert peak == 2 and sorted(prompts) == [f"p{i}" for i in range(6)]
    assert sorted(seen) == list(range(6)) and len(answers) == 6 and all(a.argmax == 3 for a in answers)


def test_the_key_is_never_in_identity_outputs_or_files(tmp_path, capsys):
    from universality.report.judge import scores

    with Scripted([("json", completion("2"))] * 2) as s:
        j = judge(s)
        cache = scores.AnswerCache(tmp_path / "cache.jsonl")
        feats = [{"layer": 0, "feature": 1, "mppc": 0.5, "bin": "[0.4, 0.6)", "max": 1.0,
                  "contexts": [{"tokens": ["a", "b"], "acts": [0.0, 1.0], "centre": 1, "window": 0}]}]
        table = scores.score_features(j, feats, {"complexity": "C", "monosemanticity": "M"}, cache, "h", "openai-x")
    table.to_csv(tmp_path / "L0.csv", index=False)
    out = capsys.readouterr()
    opts = {"kind": "openai", "model": "scripted-4o", "base_url": s.url, "api_key_env": "JUDGE_TEST_KEY"}
    for text in (json.dumps(j.identity), json.dumps(base.judge_identity(opts)), out.out, out.err,
                 (tmp_path / "cache.jsonl").read_text(), (tmp_path / "L0.csv").read_text()):
        assert KEY not in text
    assert "JUDGE_TEST_KEY" in json.dumps(j.identity)


def test_a_missing_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with Scripted([]) as s:
        with pytest.raises(JudgeError, match="JUDGE_TEST_KEY is not set"):
            judge(s).answer(["p"])
