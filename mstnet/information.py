"""Names of information sets: what an experiment's inputs carry about the outcome.

An information set is the number of scans a model sees (the latest ``scans`` of each
patient; 0 = no images), whether it sees the clinical record (demographics, history and
screening results), and whether it also sees the radiologist's reads of the nodule
(clinical columns whose source is ``read``). Every registered experiment names its set, and
the synthetic cohort's ``oracle.json`` holds the Bayes-optimal AUC of each, so every table
row can show the ceiling of exactly the inputs it sees.

Keys read ``scans2+clinical``, ``scans1``, ``clinical+reads``, ``scans1+clinical+reads``.
"""

from __future__ import annotations

MAX_SCANS = 3
"""The most scans an information set names (the synthetic cohorts have three rounds)."""


def information_key(scans: int, clinical: bool, reads: bool = False) -> str:
    """The key of the set of ``scans`` latest scans, with or without the clinical record and the reads.

    Raises:
        ValueError: a negative scan count, or a set that sees nothing.
    """
    if scans < 0:
        raise ValueError(f"scans must be 0 or more, got {scans}")
    parts = ([f"scans{scans}"] if scans else []) + (["clinical"] if clinical else []) + (["reads"] if reads else [])
    if not parts:
        raise ValueError("an information set must see scans, the clinical record or the reads")
    return "+".join(parts)


def parse_information_key(key: str) -> tuple[int, bool, bool]:
    """``(scans, clinical, reads)`` of a key made by :func:`information_key`.

    Raises:
        ValueError: not such a key.
    """
    scans, clinical, reads = 0, False, False
    for part in key.split("+"):
        if part.startswith("scans") and part[5:].isdigit() and int(part[5:]) > 0 and scans == 0:
            scans = int(part[5:])
        elif part == "clinical" and not clinical:
            clinical = True
        elif part == "reads" and not reads:
            reads = True
        else:
            raise ValueError(f"{key!r} is not an information key (e.g. 'scans2+clinical', 'clinical+reads')")
    if information_key(scans, clinical, reads) != key:
        raise ValueError(f"{key!r} is not an information key; write it as {information_key(scans, clinical, reads)!r}")
    return scans, clinical, reads


INFORMATION_KEYS: tuple[str, ...] = tuple(
    information_key(scans, clinical, reads)
    for scans in range(MAX_SCANS + 1) for clinical in (False, True) for reads in (False, True)
    if scans or clinical or reads
)
"""Every information set up to :data:`MAX_SCANS` scans (15 keys)."""
