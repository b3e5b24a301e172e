"""Training the toy model zoo, and the two checks that say a toy model learned something.

The recipe (documented in the README): AdamW with linear warm-up and cosine decay on windows of
the train token set, plus, in every step, ``induction_rows`` short synthetic rows
``[BOS] R R R ...`` (R random tokens, a log-uniform period per row) scored on the copies only.
A small model trained on code alone for a few minutes shows no induction at all, and a few long
repeated rows per batch did not change that within 600 steps; many short rows per step make the
copying circuit's phase change arrive within a few hundred steps (measured in the README).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from universality.data import corpus
from universality.models import registry as models
from universality.core.device import device_of
from universality.zoo.config import recipe_plan

IGNORE = -100


def synthetic_repeats(rng: np.random.Generator, n: int, max_len: int, vocab: int, bos: int):
    """``n`` rows ``[BOS] R R R ...`` of ``max_len`` tokens and labels masking the first copy.

    Returns (ids [n, max_len] int64, labels [n, max_len] int64, IGNORE where not scored).
    """
    ids = np.empty((n, max_len), dtype=np.int64)
    labels = np.full((n, max_len), IGNORE, dtype=np.int64)
    for r in range(n):
        # Log-uniform periods: short ones give many copies per row (a strong early signal),
        # long ones teach the long distances the circuit experiments probe.
        period = int(np.exp(rng.uniform(np.log(8), np.log((max_len - 1) // 2 + 1))))
        seq = rng.integers(1, vocab, size=period)
        body = np.resize(seq, max_len - 1)
        ids[r, 0] = bos
        ids[r, 1:] = body
        # Label at position p is the token at p+1. The copies start at position 1 + period; their
        # first token is not predictable by copying, the rest are.
        labels[r, period + 1 : max_len - 1] = ids[r, period + 2 :]
    return ids, labels


def natural_rows(tokens: corpus.TokenSet, rows: np.ndarray, max_len: int):
    """Windows of the token set padded to ``max_len`` (pad = BOS, unscored)."""
    ids = tokens.padded(rows, max_len)
    labels = np.full((len(rows), max_len), IGNORE, dtype=np.int64)
    for i, n in enumerate(tokens.lengths()[np.asarray(rows, dtype=np.int64)]):
        labels[i, : n - 1] = ids[i, 1:n]
    return ids, labels


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats over scored positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE)


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` down to ``0.1 lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def phase_lr(step: int, warm: int, text_steps: int, lr: float, warmup: int) -> float:
    """Learning rate of ``step`` in the two-phase recipe.

    The synthetic warm-up (steps ``< warm``) runs at a constant ``lr`` after its linear warm-up;
    the text phase restarts the schedule (warm-up, cosine over its own ``text_steps``). One
    cosine over both phases left a long warm-up's text phase at about a third of ``lr``:
    measured on the default Mamba (800 warm-up steps), the restart alone takes its eval loss
    from 5.67 to 5.31; text windows in the warm-up (``induction_warmup_text_rows``) do the rest,
    3.45 (README: the recipe).
    """
    if step < warm:
        return lr * min(1.0, (step + 1) / max(1, warmup))
    return lr_at(step - warm, text_steps, lr, warmup)


def train(spec: dict, training: dict, train_tokens: corpus.TokenSet, max_len: int, vocab: int):
    """Train one toy model; return (model, history). Deterministic given ``spec['seed']``.

    The first ``induction_warmup_steps`` steps see ``induction_warmup_rows`` synthetic rows of
    ``induction_warmup_len`` tokens (defaults: ``induction_rows``, ``induction_len``; a
    model's own recipe may change them, see ``config.model_training``) and
    ``induction_warmup_text_rows`` natural windows (default 0); every later step sees
    ``batch_size`` natural windows of ``max_len`` tokens plus ``induction_rows`` synthetic rows
    of ``induction_len`` tokens, and its loss is the sum of the two mean losses. Natural
    steps continue until ``train_tokens`` natural tokens are seen. ``train_tokens: 0`` takes no
    step at all (neither warm-up nor text): the model is returned as initialised (the
    random-initialisation control).
    """
    seed = spec["seed"]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = models.build_config(spec, vocab, max_len, train_tokens.bos_id)
    model = models.build_model(config).train()
    plan = recipe_plan(spec, training, max_len)
    batch, n_synth, synth_len = plan["batch"], plan["synth_rows"], plan["synth_len"]
    warm, warm_rows, warm_len, warm_text = plan["warm"], plan["warm_rows"], plan["warm_len"], plan["warm_text"]
    text_steps, steps = plan["text_steps"], plan["steps"]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": training["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=training["lr"], betas=(0.9, 0.95),
    )
    full = np.flatnonzero(train_tokens.lengths() >= max_len // 2)
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"train {spec['arch']}", unit="step", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = phase_lr(step, warm, text_steps, training["lr"], training["warmup_steps"])
        loss = loss_text = loss_copy = torch.zeros(())
        text_rows = batch if step >= warm else warm_text
        if text_rows:
            ids, labels = natural_rows(train_tokens, rng.choice(full, text_rows), max_len)
            loss_text = lm_loss(models.logits_of(model, torch.from_numpy(ids)), torch.from_numpy(labels))
            loss = loss + loss_text
        rows, length = (warm_rows, warm_len) if step < warm else (n_synth, synth_len)
        if rows:
            ids, labels = synthetic_repeats(rng, rows, length, vocab, train_tokens.bos_id)
            loss_copy = lm_loss(models.logits_of(model, torch.from_numpy(ids)), torch.from_numpy(labels))
            loss = loss + loss_copy
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training {spec['arch']} seed {seed}: loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - t0
            text_done = max(0, step + 1 - warm)
            seen = (min(step + 1, warm) * (warm_len * warm_rows + warm_text * max_len)
                    + text_done * (synth_len * n_synth + batch * max_len))
            rec = {"step": step, "loss_text": round(loss_text.item(), 4) if text_rows else None,
                   "loss_copy": round(loss_copy.item(), 4) if rows else None,
                   "tokens": seen, "seconds": round(elapsed, 2), "tokens_per_s": round(seen / elapsed, 1)}
            history.append(rec)
            bar.set_postfix(text=rec["loss_text"], copy=rec["loss_copy"], tok_s=rec["tokens_per_s"])
    return model.eval(), history


@torch.no_grad()
def eval_loss(model, tokens: corpus.TokenSet, max_len: int, max_tokens: int | None = None,
              batch: int = 16, max_windows: int | None = None) -> float:
    """Mean next-token loss (nats) over the token set's first windows, in order, until
    ``max_tokens`` scored tokens are reached (whole batches) or ``max_windows`` windows are read."""
    total, count, w = 0.0, 0, 0
    dev = device_of(model)  # the model's device: batches go where the model is
    last = min(len(tokens), max_windows or len(tokens))
    while (max_tokens is None or count < max_tokens) and w < last:
        rows = np.arange(w, min(w + batch, last))
        w = rows[-1] + 1
        ids, labels = natural_rows(tokens, rows, max_len)
        logits = models.logits_of(model, torch.from_numpy(ids).to(dev))
        lab = torch.from_numpy(labels).to(dev)
        n = int((lab != IGNORE).sum())
        total += lm_loss(logits, lab).item() * n
        count += n
    return total / count


@torch.no_grad()
def induction_losses(model, vocab: int, bos: int, length: int = 64, prompts: int = 32, seed: int = 1234):
    """Mean loss (nats) on the first and on the second copy of ``[BOS] R R``, |R| = ``length``.

    Induction shows as a second-copy loss far below the first (which sits near ln(vocab)).
    """
    g = np.random.default_rng(seed)
    r = g.integers(1, vocab, size=(prompts, length))
    ids = torch.from_numpy(np.concatenate([np.full((prompts, 1), bos), r, r], axis=1)).to(device_of(model))
    logits = models.logits_of(model, ids)
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    nll = -logp  # nll[:, p] scores token p+1
    first = nll[:, 1:length].mean().item()          # tokens 2..L of the first copy
    second = nll[:, length + 1 : 2 * length].mean().item()  # tokens 2..L of the second copy
    return {"first_copy": first, "second_copy": second, "ln_vocab": math.log(vocab), "length": length}


#: |R| of the induction check: the headline length, then every length of the sweep that fits.
INDUCTION_LENGTH = 64
INDUCTION_SWEEP = (8, 16, 32, 64)


def evaluate(model, eval_tokens: corpus.TokenSet, max_len: int, vocab: int, max_tokens: int) -> dict:
    """Eval loss against the unigram entropy of the same tokens, and the induction check:
    ``induction`` at |R| = 64 (or the longest that fits) and ``induction_by_length`` for the
    sweep (a recurrent model with a fixed-size state may copy short sequences but not long ones)."""
    loss = eval_loss(model, eval_tokens, max_len, max_tokens)
    fits = (max_len - 1) // 2  # both copies must fit the context the model was trained on
    headline = min(INDUCTION_LENGTH, fits)
    lengths = sorted({n for n in INDUCTION_SWEEP if n <= fits} | {headline})
    by_length = {n: induction_losses(model, vocab, eval_tokens.bos_id, length=n) for n in lengths}
    return {
        "eval_loss_nats": loss,
        "unigram_entropy_nats": float(eval_tokens.attrs["unigram_entropy_nats"]),
        "induction": by_length[headline],
        "induction_by_length": [by_length[n] for n in INDUCTION_SWEEP if n <= fits],
    }


def save_tokenizer(tokenizer_json: str, out_dir) -> None:
    """Save the shared tokenizer beside the weights, so the folder loads like a hub snapshot."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token=corpus.BOS_TOKEN,
                                  eos_token=corpus.BOS_TOKEN, pad_token=corpus.BOS_TOKEN)
    tok.save_pretrained(str(out_dir))
