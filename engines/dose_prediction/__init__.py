"""Knowledge-based 3D dose prediction for head-and-neck patients (2.5D U-Net, OpenKBP-trained).

From a planning CT, its targets with their prescription levels, its organs at risk and the body,
predict the dose (Gy) a clinical IMRT plan would deliver, voxel by voxel on the CT grid. Scored
as the OpenKBP challenge does (Babier et al., Med. Phys. 48 (2021) 5549-5561): the dose score and
the DVH score (:mod:`.scores`). No gRPC, Ray or storage here.
"""

from .inputs import OAR_CHANNELS, N_LEVELS, build_inputs
from .package import DosePackageError, load_dose_package, save_dose_package
from .predict import model_spacing, predict_dose, predict_patient_dose, prediction_options
from .scores import dose_score, dvh_metrics, dvh_score

__all__ = [
    "OAR_CHANNELS", "N_LEVELS", "build_inputs", "DosePackageError", "load_dose_package", "save_dose_package",
    "predict_dose", "predict_patient_dose", "prediction_options", "model_spacing", "dose_score", "dvh_metrics", "dvh_score",
]
