"""The adequacy classifier: features, ONNX inference, model registry and hot reload.

The router uses only what is exported here.
"""

from classifier.features import FEATURE_SPEC, FeatureSpec, embedding_input, prompt_features
from classifier.manifest import Manifest, ManifestError, UtilityCalibration
from classifier.model import DEFAULT_EMBEDDER_KEY, ClassifierModel, ModelRefused, load_model
from classifier.registry import ModelRegistry, NoModelServing, RegistryError, ReloadResult, ServingModel

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
