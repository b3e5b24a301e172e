"""One sentence per architecture comparing how each implements induction, from the summaries.

Inputs are the per-model summaries of :func:`universality.circuits.ssm_paths.summarise_mamba`,
:func:`universality.circuits.heads.summarise_neox` and
:func:`universality.circuits.wkv_paths.summarise_rwkv` (+ ``model``); each sentence names the key
component, where the effect sits and the full corruption's effect, all changes of B's logit at the
final [A] (patched - clean, means over distances), under [A][B']...[A] unless stated.
"""
from __future__ import annotations

from universality.circuits.induction import A_, B_

__all__ = ["comparison"]


def _share(s: dict, key: int) -> float:
    return s["state"]["share"][str(key)]


def comparison(mamba: dict | None, neox: dict | None, rwkv: dict | None) -> list[str]:
    """Sentences for the analysed architectures (None: not analysed, no sentence)."""
    out = []
    if mamba:
        k = mamba["key_layer"]
        out.append(f"Mamba ({mamba['model']}): the SSM state of layer {k} read at the final [A] carries B "
                   f"({mamba['state_logit_diff_by_layer'][str(k)]:+.2f}, key in {_share(mamba, k):.0%} of resamples); "
                   f"B enters it through the SSM input c at {mamba['ssm_in_peak_position']} "
                   f"({mamba['ssm_in_logit_diff_by_position'][mamba['ssm_in_peak_position']]:+.2f}); "
                   f"full corruption {mamba['corrupt_logit_diff']:+.2f}.")
    if neox:
        i, p = neox["induction_head"], neox["previous_token_head"]
        full = neox["corrupt_logit_diff"].get(B_, float("nan"))
        out.append(f"GPT-NeoX ({neox['model']}): induction head {i['name']} (patch {i['logit_diff'].get(B_, float('nan')):+.2f}) "
                   f"reads B at B1 by attention, after previous-token head {p['name']} "
                   f"(patch {p['logit_diff'].get(A_, float('nan')):+.2f} under [A'][B]...[A]); full corruption {full:+.2f}.")
    if rwkv:
        k, pos = rwkv["key_layer"], rwkv["kv_in_peak_position"][B_]
        kv = rwkv["kv_in_logit_diff_by_position"][B_]["kv"]
        out.append(f"RWKV ({rwkv['model']}): the WKV state of layer {k} read at the final [A] carries B "
                   f"({rwkv['state_logit_diff_by_layer'][str(k)]:+.2f}, key in {_share(rwkv, k):.0%} of resamples); "
                   f"B is written into it by k/v at {pos} ({kv[pos]:+.2f}; at B1 {kv.get('B1', float('nan')):+.2f}, "
                   f"B1+1 {kv.get('B1+1', float('nan')):+.2f}); full corruption {rwkv['corrupt_logit_diff']:+.2f}.")
    return out
