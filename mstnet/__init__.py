"""MST-Net benchmark and ablation suite.

Layers (each imports only the ones before it): ``mstnet.data`` and ``mstnet.synth`` (cohorts),
``mstnet.models`` (networks, no data access), ``mstnet.metrics`` (pure functions),
``mstnet.experiments`` (composes data, models and metrics; writes result files),
``mstnet.reporting`` (reads result files only), ``mstnet.commands`` (the CLI).
"""

__version__ = "0.1.0"
