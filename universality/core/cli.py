"""Run a script's click command from a Snakemake ``script:`` directive.

Each script in ``scripts/`` is a thin click command that also runs stand-alone. Under Snakemake
its options are filled by name from the rule's ``input``, ``output``, ``params`` and
``wildcards`` (``--train-tokens`` <- ``input.train_tokens``) and ``--threads``, so rules stay
declarative and the same command can be called by hand with the same arguments.
"""
from __future__ import annotations

import contextlib
import sys

import click


def _lookup(smk, key: str):
    for section in ("input", "output", "params", "wildcards"):
        named = getattr(smk, section)
        if key in named.keys():
            return named[key]
    if key == "threads":
        return smk.threads
    return None


def run(command: click.Command, smk) -> None:
    """Call ``command`` with options taken from the Snakemake job ``smk``; log to ``smk.log[0]``."""
    args: list[str] = []
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        value = _lookup(smk, param.name)
        if value is None:
            continue
        if isinstance(value, (list, tuple)):  # a named list of files (Snakemake's Namedlist)
            value = " ".join(map(str, value))
        args += [param.opts[0], str(value)]
    log = smk.log[0] if len(smk.log) else None
    with contextlib.ExitStack() as stack:
        if log:
            handle = stack.enter_context(open(log, "w"))
            stack.enter_context(contextlib.redirect_stdout(handle))
            stack.enter_context(contextlib.redirect_stderr(handle))
        print(f"$ {command.name} {' '.join(args)}", file=sys.stderr)
        clean_outputs(list(smk.output))
        command.main(args, standalone_mode=False)


def clean_outputs(outputs: list[str]) -> None:
    """Remove what killed earlier attempts left beside this job's outputs (``<out>.tmp-<PID>``
    of dead PIDs; at paper scale these are whole activation stores)."""
    from universality.core.store import clean_stale_temporaries

    for out in outputs:
        for gone in clean_stale_temporaries(out):
            print(f"removed stale temporary {gone} (its writer is gone)", file=sys.stderr)


def entry(command: click.Command, namespace: dict) -> None:
    """The scripts' ``__main__``: Snakemake job if ``snakemake`` is defined, else the CLI."""
    if "snakemake" in namespace:
        run(command, namespace["snakemake"])
    else:
        command()
