"""The data layer: cohorts (:mod:`.cohort`), image I/O (:mod:`.io`), sources that turn folders into
cohorts (:mod:`.sources`), validation (:mod:`.validate`), preprocessing (:mod:`.transforms`),
clinical encoding (:mod:`.clinical`) and the PyTorch dataset (:mod:`.dataset`).

Submodules are imported on use; this package imports nothing so that ``mstnet.data.cohort``
stays light.
"""
