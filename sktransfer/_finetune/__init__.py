"""Fine-tuning a pretrained CNN as a scikit-learn classifier.

One job a module: the estimator (:mod:`.estimator`), its skorch net
(:mod:`.net`), a fit's phases as callbacks (:mod:`.phases`), the new head
(:mod:`.head`), freezing (:mod:`.freeze`), running a network from a stored
activation (:mod:`.cut`), keeping those (:mod:`.rows`) and what keys them
(:mod:`.fingerprint`), what skorch is fed (:mod:`.feeding`, :mod:`.data`,
:mod:`.loader`), devices (:mod:`.device`), weights (:mod:`.weighting`); each
fit's own generators: :mod:`sktransfer._randomness`. docs/architecture.md
tells a fit's flow.
"""

from .estimator import FineTuneClassifier

__all__ = ["FineTuneClassifier"]
