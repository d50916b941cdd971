"""The Brock (PanCan) lung-nodule malignancy model's coefficients: one table for the synthetic cohort's
generator (:mod:`mstnet.synth.risk`) and the Brock reference method (``baselines/nondeep.py``).

McWilliams et al., "Probability of cancer in pulmonary nodules detected on first screening CT",
NEJM 2013: the parsimonious model (model 1b), plus the full model's spiculation coefficient (model 2b).
The logit is the intercept plus each coefficient times its covariate, with age, size and nodule count
centred as below::

    logit = intercept + age (age - 62) + female [female] + family_history [family history]
            + emphysema [emphysema] + size ((d / 10) ** -0.5 - 1.58113883) + upper_lobe [upper lobe]
            + part_solid [part-solid] + non_solid [non-solid] + nodule_count (count - 4)
            + spiculation [spiculated]

with d the nodule's diameter in mm.
"""

from __future__ import annotations

BROCK_COEFFICIENTS: dict[str, float] = {
    "intercept": -6.8071,
    "age": 0.0321,  # per year above BROCK_AGE_CENTRE
    "female": 0.5635,
    "family_history": 0.3013,
    "emphysema": 0.3462,
    "size": -5.6693,  # times ((d / 10) ** -0.5 - BROCK_SIZE_CENTRE)
    "upper_lobe": 0.7116,
    "part_solid": 0.3395,
    "non_solid": -0.3055,
    "nodule_count": -0.0803,  # per nodule above BROCK_NODULE_COUNT_CENTRE
    "spiculation": 0.7729,  # full model only
}
"""Brock (PanCan) coefficients, McWilliams et al. NEJM 2013."""

BROCK_AGE_CENTRE = 62.0
"""Age (years) at which the age term is 0."""
BROCK_SIZE_CENTRE = 1.58113883
"""``(d / 10) ** -0.5`` at d = 4 mm, where the size term is 0."""
BROCK_NODULE_COUNT_CENTRE = 4.0
"""Nodule count at which the count term is 0."""
