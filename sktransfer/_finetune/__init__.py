"""Fine-tuning a pretrained CNN as a scikit-learn classifier.

One module a job: the public estimator (:mod:`.estimator`), the skorch net
behind it (:mod:`.net`), the phases of a fit as callbacks (:mod:`.phases`),
the new head (:mod:`.head`), freezing and training modes (:mod:`.freeze`),
running a network from a stored activation (:mod:`.cut`) and keeping those
activations (:mod:`.rows`), what keys a shared plan or stored rows
(:mod:`.fingerprint`), what skorch is fed (:mod:`.feeding`), datasets and
batches (:mod:`.data`, with CUDA read-ahead in :mod:`.loader`), devices
(:mod:`.device`) and sample weights (:mod:`.weighting`); each fit draws its
random numbers from generators of its own (:mod:`sktransfer._randomness`).
docs/architecture.md tells a fit's flow.
"""

from .estimator import FineTuneClassifier

__all__ = ["FineTuneClassifier"]
