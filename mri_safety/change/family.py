"""How a new abnormality changes each contrast: the agreement of two contrasts' changes.

Used to score an extra contrast of a comparison (:mod:`mri_safety.change.compare`)
and to tell whether candidates of two comparisons of one visit can be one
abnormality (:mod:`mri_safety.change.grouping`).
"""

from __future__ import annotations

#: weighting family of each contrast, for the agreement of an extra contrast: a lesion that
#: lengthens T1 and T2 (oedema, demyelination, infarct, tumour) is brighter on every
#: T2-family image and darker on T1w; blood products are darker on T2/T2* and brighter on
#: T1w. So an extra contrast of the same family agrees when it changed with the same sign,
#: one of the other family when it changed with the opposite sign (a T1-dark lesion is
#: FLAIR-bright; tissue turned CSF is dark on T1w AND FLAIR and must not count as
#: agreement). ADC goes up in most lesions and down in acute infarcts: no fixed relation,
#: so an ADC extra never adds agreement (DWI judges ADC within the visit instead).
FAMILY: dict[str, str] = {"flair": "t2", "t2w": "t2", "pd": "t2", "dwi": "t2", "swi": "t2",
                          "t2starw": "t2", "t1w": "t1", "t1ce": "t1"}


def agreement_sign(main: str, extra: str) -> int | None:
    """Sign an ``extra`` contrast's change must have, relative to the ``main``
    contrast's change, to agree with it (:data:`FAMILY`); None: no fixed relation.

    >>> agreement_sign("flair", "t2w"), agreement_sign("t1w", "flair"), agreement_sign("dwi", "adc")
    (1, -1, None)
    """
    fm, fe = FAMILY.get(main), FAMILY.get(extra)
    if fm is None or fe is None:
        return None
    return 1 if fm == fe else -1
