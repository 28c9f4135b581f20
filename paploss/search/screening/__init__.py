"""Screening of candidate losses before any proxy training (AutoLoss-Zero style).

* :mod:`~paploss.search.screening.batch`: the fixed prediction batch, recorded once per search
  from a randomly initialised detector.
* :mod:`~paploss.search.screening.rejection`: the loss-rejection protocol (does a candidate teach
  the random detector's predictions anything?).
* :mod:`~paploss.search.screening.linear`: the protocol over a fresh linear predictor on a
  trained detector's recorded features, scored on held-out images (``predictions: linear``).
* :mod:`~paploss.search.screening.equivalence`: the gradient-equivalence check (fingerprints;
  duplicates reuse the reward of their first equivalent).
* :mod:`~paploss.search.screening.screener`: the :class:`Screener` that combines the two, and the
  candidate's head losses both evaluate.
* :mod:`~paploss.search.screening.graph_fingerprint`: gradient-equivalence fingerprints and
  validity of loss graphs on fixed probes (pure PyTorch).
* :mod:`~paploss.search.screening.graph_screener`: the :class:`GraphScreener` of loss-graph
  candidates (validity, equivalence, then the same rejection protocol).
* :mod:`~paploss.search.screening.candidates`: the screening of a search's rounds as the
  controller runs it, kept in the journal (duplicates, rejections, fingerprints on resume), and
  :func:`build_screener`, the screener of a search space's candidates.

The names below load from their modules on first access (the screening needs torch and
Detectron2). The settings are :class:`paploss.search.settings.ScreeningSettings`; the early stop
of invalid trainings is :class:`paploss.engine.hooks.InvalidTrainingHook`.
"""

from paploss.utils.lazy import lazy_exports

_LAZY = {
    "HeadBatch": "batch",
    "build_screening_batches": "batch",
    "load_images": "batch",
    "candidate_head_losses": "screener",
    "RejectionResult": "rejection",
    "RejectionProtocol": "rejection",
    "LinearPredictor": "linear",
    "LinearRejectionProtocol": "linear",
    "rejection_protocol": "linear",
    "GradientProbes": "equivalence",
    "Fingerprint": "equivalence",
    "gradient_fingerprint": "equivalence",
    "EquivalenceRegistry": "equivalence",
    "ScreeningDecision": "screener",
    "Screener": "screener",
    "GraphProbes": "graph_fingerprint",
    "GraphFingerprint": "graph_fingerprint",
    "graph_fingerprint": "graph_fingerprint",
    "GraphScreener": "graph_screener",
    "graph_head_loss": "graph_screener",
    "CandidateScreening": "candidates",
    "build_screener": "candidates",
    "ScreeningSetupError": "candidates",
    "duplicate_of": "candidates",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
