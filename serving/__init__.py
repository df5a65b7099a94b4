"""HTTP serving of SadTalker: configuration, job store, render worker, validation, metrics.

Everything here is plain Python (no BentoML import), so it is unit-testable; `service.py` at the
repository root is the thin BentoML layer on top.
"""
