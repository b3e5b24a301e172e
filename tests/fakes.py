"""Stand-ins shared by several test folders (import as ``from tests.fakes import ...``)."""
import numpy as np

from universality.data import corpus


class FakeTokens:
    """What zoo.train and the evaluations read of a token set: windows of ``length`` tokens, BOS = 0
    first; random ids in [1, vocab), or counting up from a random start (learnable text)."""

    def __init__(self, n_windows, length, vocab, seed=0, counting=False):
        rng = np.random.default_rng(seed)
        if counting:  # learnable text: each window counts up from a random start
            body = lambda: (rng.integers(0, vocab - 1) + np.arange(length - 1)) % (vocab - 1) + 1
        else:
            body = lambda: rng.integers(1, vocab, length - 1)
        self.ids = np.concatenate([np.r_[0, body()] for _ in range(n_windows)])
        self.offsets = np.arange(n_windows + 1) * length
        self.bos_id = 0
        self.attrs = {"unigram_entropy_nats": 1.0}

    def __len__(self):
        return len(self.offsets) - 1

    def window(self, w):
        return self.ids[self.offsets[w] : self.offsets[w + 1]]

    def lengths(self):
        return np.diff(self.offsets)

    padded = corpus.TokenSet.padded
