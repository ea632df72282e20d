"""Quality control: protocol conformance against baseline, image quality
metrics (MRIQC definitions) and the usable / review / unusable verdict.

Settings: ``configs/qc.yaml`` via :func:`load_qc_config`.
"""

from mri_safety.qc.assess import METRICS, MetricValue, QualityMetrics, assess_image, assess_nifti
from mri_safety.qc.config import QCConfig, QCConfigError, load_qc_config
from mri_safety.qc.protocol import Deviation, ProtocolComparison, compare_protocol
from mri_safety.qc.verdict import Verdict, qc_verdict

__all__ = [
    "METRICS",
    "Deviation",
    "MetricValue",
    "ProtocolComparison",
    "QCConfig",
    "QCConfigError",
    "QualityMetrics",
    "Verdict",
    "assess_image",
    "assess_nifti",
    "compare_protocol",
    "load_qc_config",
    "qc_verdict",
]
