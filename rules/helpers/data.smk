# Helpers of rules/data.smk (documents, tokenizer, tokens, activations).
from universality.workflow.config import token_budget


def token_budget_param(wildcards):
    """``{split: {config key: scored tokens}}`` the token sets must hold (JSON)."""
    return as_param({split: token_budget(config, split) for split in ("train", "eval")})


#: Keys of the `tokenizer` section that change the token sets but not the tokenizer itself.
TOKEN_SET_KEYS = ("documents",)


def tokenizer_param():
    """The `tokenizer` section without :data:`TOKEN_SET_KEYS` (the tokenizer rule's param), so
    that switching the document handling re-tokenises without retraining the BPE."""
    return as_param({k: v for k, v in config["tokenizer"].items() if k not in TOKEN_SET_KEYS})
