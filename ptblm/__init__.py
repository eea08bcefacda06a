"""ptblm: word-level LSTM language models on the Penn Treebank (Zaremba et al. 2014)."""

__version__ = "0.1.0"
