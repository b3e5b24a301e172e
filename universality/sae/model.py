"""The ReLU sparse autoencoder (SAE) of the paper, its initialisation and its on-disk format.

Formulas (Wang et al. 2024, Sec. 3.3 and Appendix A.2; x is one activation vector in R^D)::

    f(x)  = ReLU(x @ W_enc + b_enc)                  W_enc [D, F], b_enc [F]
    x_hat = f(x) @ W_dec + b_dec                     W_dec [F, D], b_dec [D]
    loss  = mean_batch( ||x - x_hat||_2^2  +  l1 * sum_i f_i(x) * ||W_dec[i, :]||_2 )   decoder_norm
    loss  = mean_batch( ||x - x_hat||_2^2  +  l1 * sum_i f_i(x) )                         plain

Storage follows SAELens: ``W_dec`` is stored ``[F, D]``, so the paper's "decoder column i" is row
``W_dec[i]`` here. The squared error is summed over D and averaged over tokens (SAELens'
``StandardTrainingSAE`` uses the same convention, so an ``l1`` value means the same in both).

Penalty form (``l1_penalty``, :data:`universality.sae.config.L1_PENALTIES`): the paper's Sec. 3.3
text states "an L1 sparsity constraint on f(x)" (``plain``) and says nothing of the decoder's
norms during training; the default ``decoder_norm`` weights each f_i by its decoder row norm.
Decoder norms: we keep the decoder *unconstrained* and put its row norms into the sparsity penalty
(the formulation written in the design contract, Anthropic's April 2024 update, and SAELens'
standard SAE). With ``plain`` and an unconstrained decoder, the penalty can be lowered without
changing x_hat by shrinking f_i and growing ``W_dec[i]``; README "SAE recipe" has the measured
comparison of the two forms.
The alternative (unit-norm decoder rows re-projected after every step, plain L1 on f) describes
the same family of models, but needs a projection and a gradient correction every step and
cannot be reproduced by SAELens' trainer; the norm-weighted penalty is already invariant to the
rescaling ``f_i -> c f_i``, ``W_dec[i] -> W_dec[i] / c`` that the projection exists to remove.
:meth:`SAE.fold_decoder_norms` gives the unit-norm-decoder form of a trained SAE (same x_hat,
same sparsity pattern, ``f_i`` multiplied by ``||W_dec[i]||``) when one wants it.

Initialisation (Appendix A.2): every decoder row is drawn uniformly (entries ~ U(-1, 1)) and
normalised to 2-norm ``sqrt(D / F) = sqrt(1 / expansion)`` (so ``W_dec^T W_dec ~= I`` before the
ReLU); ``W_enc = W_dec^T``; both biases zero.

On disk (``save``/``load``): ``cfg.json`` + ``sae_weights.safetensors`` in the SAELens 6 layout,
``architecture: "standard"``, ``apply_b_dec_to_input: false`` (our encoder does not subtract
``b_dec``), ``normalize_activations: "none"``: the input normalisation used during training (a
shift and a scale) is folded into the weights before saving (as SAELens' own trainer folds its
scaling factor and its whitening) and kept for the record in ``metadata.input_normalization``.
A saved SAE therefore maps *raw* activations to features and reconstructions; the features are
identical to the unfolded ones.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from universality.core.store import StoreError, file_sha256, read_json, reading

#: File names of the SAELens layout.
WEIGHTS_FILENAME = "sae_weights.safetensors"
CFG_FILENAME = "cfg.json"
#: Written into ``metadata.sae_lens_version`` so SAELens >= 6 reads the file as the 6.x format
#: (without it SAELens runs its pre-6 config conversion and drops our metadata).
SAELENS_FORMAT_VERSION = "6.0.0"
_TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def paper_decoder_norm(d_in: int, d_sae: int) -> float:
    """Decoder row norm of Appendix A.2: ``sqrt(D / F)`` = ``sqrt(1 / expansion factor)``."""
    return math.sqrt(d_in / d_sae)


class SAE(nn.Module):
    """ReLU SAE ``[tokens, D] -> [tokens, F] -> [tokens, D]`` (float32 parameters by default)."""

    def __init__(self, d_in: int, d_sae: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        super().__init__()
        if d_in <= 0 or d_sae <= 0:
            raise ValueError(f"SAE sizes must be positive, got d_in={d_in}, d_sae={d_sae}")
        self.d_in, self.d_sae = int(d_in), int(d_sae)
        kw = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        #: Free-form metadata read from / written to ``cfg.json["metadata"]``.
        self.metadata: dict[str, Any] = {}

    # ------------------------------------------------------------------ init
    @classmethod
    def initialized(cls, d_in: int, d_sae: int, seed: int,
                    dec_init_norm: float | None = None) -> "SAE":
        """A new float32 SAE initialised as in Appendix A.2 from ``seed`` (deterministic)."""
        sae = cls(d_in, d_sae)
        sae.init_weights(seed, dec_init_norm)
        return sae

    @torch.no_grad()
    def init_weights(self, seed: int, dec_init_norm: float | None = None) -> None:
        """Uniform decoder rows normalised to ``dec_init_norm`` (default ``sqrt(D/F)``),
        ``W_enc = W_dec^T``, zero biases. Uses its own generator: global RNG state is untouched."""
        norm = paper_decoder_norm(self.d_in, self.d_sae) if dec_init_norm is None else float(dec_init_norm)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        w = torch.rand(self.d_sae, self.d_in, generator=gen, dtype=torch.float64) * 2.0 - 1.0
        w = w / w.norm(dim=1, keepdim=True) * norm
        self.W_dec.copy_(w.to(self.W_dec.dtype))
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # --------------------------------------------------------------- forward
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``ReLU(x @ W_enc + b_enc)``: ``[..., D] -> [..., F]``."""
        x = x.to(self.W_enc.dtype)
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``f @ W_dec + b_dec``: ``[..., F] -> [..., D]``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(x_hat, f)``."""
        f = self.encode(x)
        return self.decode(f), f

    def decoder_norms(self) -> torch.Tensor:
        """``||W_dec[i, :]||_2`` for every feature, ``[F]``."""
        return self.W_dec.norm(dim=1)

    def loss(self, x: torch.Tensor, l1: float, penalty: str = "decoder_norm") -> dict[str, torch.Tensor]:
        """Differentiable loss (autograd path; the trainer uses the fused :func:`loss_and_grads`).

        ``mse`` is the squared error summed over D, averaged over tokens; ``sparsity`` is
        ``mean_tokens(sum_i f_i ||W_dec[i]||)`` (``penalty="decoder_norm"``) or
        ``mean_tokens(sum_i f_i)`` (``"plain"``); ``loss = mse + l1 * sparsity``.
        """
        x = x.to(self.W_enc.dtype)
        x_hat, f = self(x)
        mse = (x_hat - x).pow(2).sum(dim=-1).mean()
        weight = _penalty_weights(self.W_dec, penalty)
        sparsity = (f if weight is None else f * weight).sum(dim=-1).mean()
        return {"loss": mse + l1 * sparsity, "mse": mse, "sparsity": sparsity}

    # ------------------------------------------------------ re-parametrising
    @torch.no_grad()
    def fold_input_normalization(self, shift: torch.Tensor | None, scale: float) -> "SAE":
        """In place: an SAE trained on ``scale * (x - shift)`` becomes one that reads raw ``x``.

        ``W_enc' = s W_enc``, ``b_enc' = b_enc - s shift @ W_enc``, ``W_dec' = W_dec / s``,
        ``b_dec' = b_dec / s + shift`` (computed in float64): the features are unchanged and the
        reconstruction comes out in raw units. ``shift=None`` is SAELens'
        ``fold_activation_norm_scaling_factor``. Returns ``self``.
        """
        s = float(scale)
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"activation scale must be a positive finite number, got {scale}")
        W_enc, b_enc = self.W_enc.double(), self.b_enc.double()
        W_dec, b_dec = self.W_dec.double(), self.b_dec.double()
        new_b_enc, new_b_dec = b_enc, b_dec / s
        if shift is not None:
            mu = torch.as_tensor(shift, dtype=torch.float64, device=W_enc.device).reshape(self.d_in)
            new_b_enc = b_enc - s * (mu @ W_enc)
            new_b_dec = new_b_dec + mu
        self.W_enc.copy_(W_enc * s)
        self.b_enc.copy_(new_b_enc)
        self.W_dec.copy_(W_dec / s)
        self.b_dec.copy_(new_b_dec)
        return self

    @torch.no_grad()
    def fold_decoder_norms(self) -> torch.Tensor:
        """In place: unit-norm decoder rows, ``f_i`` rescaled by ``||W_dec[i]||`` (same x_hat,
        same firing pattern). Returns the norms that were folded."""
        n = self.decoder_norms().clamp_min(1e-12)
        self.W_dec.div_(n[:, None])
        self.W_enc.mul_(n[None, :])
        self.b_enc.mul_(n)
        return n

    # ------------------------------------------------------------------- I/O
    def sae_lens_cfg(self, extra_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``cfg.json`` dictionary (SAELens 6 standard SAE, plus our metadata)."""
        metadata = {"sae_lens_version": SAELENS_FORMAT_VERSION, "written_by": "universality.sae"}
        metadata.update(self.metadata)
        metadata.update(extra_cfg or {})
        return {
            "architecture": "standard",
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": metadata,
        }

    @torch.no_grad()
    def save(self, path: str | os.PathLike, extra_cfg: dict[str, Any] | None = None) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` (float32) into directory ``path``.

        ``extra_cfg`` (JSON-serialisable) is merged into ``cfg["metadata"]``. Not atomic on its
        own: callers wrap the directory in :func:`universality.core.store.atomic_output`.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {n: getattr(self, n).detach().to("cpu", torch.float32).contiguous()
                   for n in _TENSOR_NAMES}
        save_file(tensors, str(path / WEIGHTS_FILENAME), metadata={"format": "pt"})
        # checked by load(): a changed byte in the weights is an error, not a different SAE
        cfg = self.sae_lens_cfg({**(extra_cfg or {}), "weights_sha256": file_sha256(path / WEIGHTS_FILENAME, 64)})
        (path / CFG_FILENAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "SAE":
        """Read a directory written by :meth:`save` (or any SAELens standard ReLU SAE whose
        config has ``apply_b_dec_to_input: false`` and ``normalize_activations: "none"``).
        The returned SAE is for inference: ``requires_grad`` is off."""
        path = Path(path)
        for name in (CFG_FILENAME, WEIGHTS_FILENAME):
            if not (path / name).exists():
                raise FileNotFoundError(f"SAE directory {path} has no {name}")
        cfg = read_json(path / CFG_FILENAME)
        if not isinstance(cfg, dict) or not {"d_in", "d_sae"} <= set(cfg):
            raise StoreError(f"{path / CFG_FILENAME}: not an SAE config (needs d_in and d_sae)")
        want = (cfg.get("metadata") or {}).get("weights_sha256")
        if want is not None and file_sha256(path / WEIGHTS_FILENAME, 64) != want:
            raise StoreError(f"{path / WEIGHTS_FILENAME}: sha256 differs from weights_sha256 in {CFG_FILENAME} "
                             "(the weights were changed or corrupted): delete the SAE and rerun train_sae")
        if cfg.get("architecture", "standard") != "standard":
            raise ValueError(f"{path}: architecture {cfg.get('architecture')!r} is not 'standard'")
        if cfg.get("apply_b_dec_to_input", False):
            raise ValueError(f"{path}: apply_b_dec_to_input=true is not the paper's encoder")
        if cfg.get("normalize_activations", "none") not in ("none", None):
            raise ValueError(f"{path}: normalize_activations={cfg['normalize_activations']!r} "
                             "must be folded into the weights ('none')")
        with reading(path / WEIGHTS_FILENAME):
            tensors = load_file(str(path / WEIGHTS_FILENAME), device="cpu")
        missing = [n for n in _TENSOR_NAMES if n not in tensors]
        if missing:
            raise KeyError(f"{path / WEIGHTS_FILENAME} lacks tensors {missing}")
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        expect = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        sae = cls(d_in, d_sae, device=device)
        with torch.no_grad():
            for n in _TENSOR_NAMES:
                t = tensors[n]
                if tuple(t.shape) != expect[n]:
                    raise ValueError(f"{path}: {n} has shape {tuple(t.shape)}, expected {expect[n]}")
                if not bool(torch.isfinite(t).all()):
                    raise StoreError(f"{path / WEIGHTS_FILENAME}: {n} has NaN/inf values")
                getattr(sae, n).copy_(t.to(torch.float32))
        sae.metadata = dict(cfg.get("metadata") or {})
        return sae.requires_grad_(False).eval()


def _penalty_weights(W_dec: torch.Tensor, penalty: str) -> torch.Tensor | None:
    """Per-feature weight of f_i in the sparsity penalty: ``||W_dec[i]||`` [F], or None (plain: 1)."""
    if penalty == "decoder_norm":
        return W_dec.norm(dim=1)
    if penalty == "plain":
        return None
    raise ValueError(f"l1_penalty must be 'decoder_norm' or 'plain', got {penalty!r}")


def loss_and_grads(W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                   x: torch.Tensor, l1: float, buffers: dict[str, torch.Tensor] | None = None,
                   penalty: str = "decoder_norm",
                   ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...], torch.Tensor]:
    """Loss and hand-derived gradients of :meth:`SAE.loss` in one fused pass (no autograd graph).

    With ``e = x_hat - x``, ``B`` tokens, ``n_i = ||W_dec[i]||`` and ``g = 2 e / B``::

        dL/db_dec = sum_b g                dL/dW_dec = f^T g + (l1/B) * (sum_b f_bi) * W_dec[i] / n_i
        dL/df     = g W_dec^T + (l1/B) n   dL/dpre   = dL/df * [pre > 0]
        dL/dW_enc = x^T dL/dpre            dL/db_enc = sum_b dL/dpre

    ``penalty="plain"`` (sparsity ``sum_i f_i``) sets ``n_i = 1`` in ``dL/df`` and drops the
    second term of ``dL/dW_dec``.

    ``buffers`` (optional dict, filled on first use) holds the two ``[B, F]`` work arrays so a
    training loop does not allocate (and page-fault) 2 x B x F floats every step.
    Returns ``(terms, (gW_enc, gb_enc, gW_dec, gb_dec), f)`` where ``terms`` has ``loss``,
    ``mse``, ``sparsity`` (0-d tensors) and ``f`` is the feature activation matrix (a view of
    a buffer: valid until the next call with the same buffers).
    """
    B, F = x.shape[0], W_enc.shape[1]
    if buffers is None:
        buffers = {}
    pre = buffers.get("pre")
    if pre is None or pre.shape != (B, F) or pre.dtype != x.dtype:
        pre = buffers["pre"] = torch.empty(B, F, dtype=x.dtype, device=x.device)
        buffers["dpre"] = torch.empty(B, F, dtype=x.dtype, device=x.device)
    dpre = buffers["dpre"]

    torch.addmm(b_enc, x, W_enc, out=pre)
    f = pre.relu_()                                   # f lives in the `pre` buffer
    e = torch.addmm(b_dec, f, W_dec).sub_(x)          # x_hat - x, [B, D]
    n = _penalty_weights(W_dec, penalty)              # [F], or None (plain)
    fsum = f.sum(dim=0)                               # [F]
    mse = e.pow(2).sum() / B
    sparsity = (fsum.sum() if n is None else torch.dot(fsum, n)) / B
    loss = mse + l1 * sparsity

    g = e.mul_(2.0 / B)                               # dL/dx_hat, reuses e's storage
    gb_dec = g.sum(dim=0)
    gW_dec = torch.mm(f.t(), g)
    if n is None:
        torch.mm(g, W_dec.t(), out=dpre).add_(l1 / B)    # dL/df
    else:
        gW_dec.addcmul_(W_dec, (fsum * (l1 / B) / n.clamp_min(1e-12)).unsqueeze(1))
        torch.addmm(n.mul(l1 / B), g, W_dec.t(), out=dpre)   # dL/df
    torch.ops.aten.threshold_backward.grad_input(dpre, f, 0, grad_input=dpre)  # * [pre > 0]
    gW_enc = torch.mm(x.t(), dpre)
    gb_enc = dpre.sum(dim=0)
    return {"loss": loss, "mse": mse, "sparsity": sparsity}, (gW_enc, gb_enc, gW_dec, gb_dec), f
