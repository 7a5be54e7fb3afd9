"""The adequacy classifier: features, ONNX inference, model registry and hot reload.

The router uses only what is exported here.
"""

from tierwise.classifier.features import FEATURE_SPEC, FeatureSpec, embedding_input, prompt_features
from tierwise.classifier.manifest import Manifest, ManifestError, UtilityCalibration
from tierwise.classifier.model import DEFAULT_EMBEDDER_KEY, ClassifierModel, ModelRefused, load_model
from tierwise.classifier.registry import (
    ModelRegistry,
    NoModelServing,
    RegistryError,
    ReloadResult,
    ServingModel,
)

__all__ = [
    "DEFAULT_EMBEDDER_KEY",
    "FEATURE_SPEC",
    "ClassifierModel",
    "FeatureSpec",
    "Manifest",
    "ManifestError",
    "ModelRefused",
    "ModelRegistry",
    "NoModelServing",
    "RegistryError",
    "ReloadResult",
    "ServingModel",
    "UtilityCalibration",
    "embedding_input",
    "load_model",
    "prompt_features",
]
