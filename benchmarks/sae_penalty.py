"""Recipe comparison (not a speed benchmark): the two sparsity-penalty forms on one real layer.

    python benchmarks/sae_penalty.py ACTS_STORE [--expansion 8 --tokens 400000 --l1 1,2,4]

``ACTS_STORE`` is one resid layer store of a pipeline run (e.g. the micro preset's
``results-micro/activations/neox-s0/resid/L1.zarr``); its ``segments`` attrs give the training
and held-out rows. For every l1 in ``--l1`` and both ``l1_penalty`` forms (``decoder_norm``, the
default; ``plain``, the paper's Sec. 3.3 text) one SAE is trained with the default config's
recipe (``SAETrainConfig`` with the given expansion, tokens, lr 2e-3, batch 256) and evaluated
on the held-out rows. Prints one row per run: explained variance, mean L0, dead and dense share,
and the mean decoder row norm (plain L1 with a free decoder can trade f_i for ||W_dec[i]||).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from universality.sae.config import SAETrainConfig
from universality.sae.model import SAE
from universality.sae.train import train_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=400_000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--l1", default="1,2,4")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = SAETrainConfig(expansion=args.expansion, train_tokens=args.tokens, lr=args.lr, checkpoint_every=0)
    print(f"{'penalty':<13}{'l1':>5}{'EV':>8}{'L0':>8}{'dead':>8}{'dense':>8}{'|W_dec[i]|':>12}{'wall s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for l1 in (float(v) for v in args.l1.split(",")):
            for penalty in ("decoder_norm", "plain"):
                out = Path(tmp) / f"{penalty}-{l1}"
                m = train_sae(args.store, out, base.replace(l1=l1, l1_penalty=penalty), progress=False)
                # the saved SAE has the input scale folded in: report norms on the normalised input
                scale = SAE.load(out).metadata["input_normalization"]["scale"]
                norm = float(SAE.load(out).decoder_norms().mean()) * scale
                print(f"{penalty:<13}{l1:>5g}{m['explained_variance']:>8.3f}{m['mean_l0']:>8.1f}"
                      f"{m['dead_fraction']:>8.1%}{m['dense_fraction']:>8.1%}{norm:>12.3f}"
                      f"{m['training']['wall_s']:>8.1f}")


if __name__ == "__main__":
    main()
