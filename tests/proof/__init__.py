"""Proof of the system under load, faults, restarts and hostile input (soak, chaos, fuzz, security).

Short forms run in `make test`; long forms under `make soak`, `make chaos` and `make fuzz`
(RENOGY_PROOF=long). Figures of the long forms are recorded in docs/benchmarks.md.
"""
