# Helpers of rules/data.smk (documents, tokenizer, tokens, activations).
from universality.workflow.config import token_budget


def token_budget_param(wildcards):
    """``{config key: scored tokens}`` the token set ``{split}`` must hold (JSON)."""
    return as_param(token_budget(config, wildcards.split))
