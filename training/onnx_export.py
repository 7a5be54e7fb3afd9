"""One ONNX graph per model version: feature vector in, P(adequate) per tier out.

The graph holds the embedding projection (fitted on the training split) and
the LightGBM trees, converted with onnxmltools. Training computes the projected
inputs by running the projection part of this same graph, so the trees see
bit-identical inputs in training and in serving.

Two layouts of the trees:

- per tier: one binary model per tier, all reading the projected vector;
- joint: one binary model reading the projected vector plus a one-hot tier
  indicator; the graph repeats each row once per tier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from tierwise.classifier.features import FeatureSpec
from tierwise.classifier.manifest import ONNX_INPUT, ONNX_OUTPUT

TARGET_OPSET = 15  # the highest default-domain opset onnxmltools' LightGBM converter supports
ML_OPSET = 1
PROJECTED = "projected"


@dataclass(frozen=True)
class Projection:
    """``(embedding - mean) @ components``: the top principal directions of the training embeddings."""

    mean: npt.NDArray[np.float32]  # (embedding_dim,)
    components: npt.NDArray[np.float32]  # (embedding_dim, k)

    @property
    def size(self) -> int:
        return int(self.components.shape[1])


def fit_projection(embeddings: npt.NDArray[np.float32], components: int) -> Projection:
    """PCA by SVD; each direction's sign is fixed (largest loading positive) so refits agree."""
    data = np.asarray(embeddings, dtype=np.float64)
    mean = data.mean(axis=0)
    _, _, vt = np.linalg.svd(data - mean, full_matrices=False)
    basis = vt[: min(components, vt.shape[0])].T
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
    basis = basis * np.where(signs == 0, 1.0, signs)
    return Projection(mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32))


def _const(name: str, value: npt.ArrayLike, dtype: type = np.int64) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _shared_constants() -> list[TensorProto]:
    return [_const("axis_1", [1]), _const("col_1", [1]), _const("col_2", [2])]


def projection_nodes(
    spec: FeatureSpec, projection: Projection | None
) -> tuple[list[onnx.NodeProto], list[TensorProto], int]:
    """Nodes turning ``features`` into ``projected``: (nodes, initializers, projected width).

    They use the ``_shared_constants`` every model adds.
    """
    statistics = spec.size - spec.embedding_dim
    if projection is None:
        return [helper.make_node("Identity", [ONNX_INPUT], [PROJECTED])], [], spec.size
    nodes = [
        helper.make_node("Slice", [ONNX_INPUT, "emb_start", "emb_end", "axis_1"], ["embedding"]),
        helper.make_node("Slice", [ONNX_INPUT, "emb_end", "all_end", "axis_1"], ["statistics"]),
        helper.make_node("Sub", ["embedding", "pca_mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "pca_components"], ["reduced"]),
        helper.make_node("Concat", ["reduced", "statistics"], [PROJECTED], axis=1),
    ]
    initializers = [
        _const("emb_start", [0]),
        _const("emb_end", [spec.embedding_dim]),
        _const("all_end", [spec.size]),
        numpy_helper.from_array(projection.mean.reshape(1, -1).astype(np.float32), "pca_mean"),
        numpy_helper.from_array(projection.components.astype(np.float32), "pca_components"),
    ]
    return nodes, initializers, projection.size + statistics


def _lightgbm_graph(booster: lgb.Booster, width: int, prefix: str) -> onnx.GraphProto:
    """The converted booster with every name prefixed; input ``{prefix}input``, output ``{prefix}probabilities``."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    converted = convert_lightgbm(
        booster,
        initial_types=[("input", FloatTensorType([None, width]))],
        zipmap=False,
        target_opset=TARGET_OPSET,
    )
    prefixed = onnx.compose.add_prefix(converted, prefix)
    return prefixed.graph


def _model(
    nodes: list[onnx.NodeProto], initializers: list[TensorProto], spec: FeatureSpec, outputs: int, name: str
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.FLOAT, [None, spec.size])],
        [helper.make_tensor_value_info(ONNX_OUTPUT, TensorProto.FLOAT, [None, outputs])],
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", TARGET_OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="tierwise-training",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def projection_model(spec: FeatureSpec, projection: Projection | None) -> onnx.ModelProto:
    """The projection part alone (output ``p_adequate`` holds the projected vector)."""
    nodes, initializers, width = projection_nodes(spec, projection)
    nodes.append(helper.make_node("Identity", [PROJECTED], [ONNX_OUTPUT]))
    return _model(nodes, initializers + _shared_constants(), spec, width, "tierwise-projection")


def per_tier_model(
    spec: FeatureSpec, projection: Projection | None, boosters: Sequence[lgb.Booster]
) -> onnx.ModelProto:
    nodes, initializers, width = projection_nodes(spec, projection)
    columns = []
    initializers += _shared_constants()
    for i, booster in enumerate(boosters):
        prefix = f"tier{i}_"
        sub = _lightgbm_graph(booster, width, prefix)
        nodes.append(helper.make_node("Identity", [PROJECTED], [f"{prefix}input"]))
        nodes.extend(sub.node)
        initializers.extend(sub.initializer)
        nodes.append(
            helper.make_node("Slice", [f"{prefix}probabilities", "col_1", "col_2", "axis_1"], [f"{prefix}p"])
        )
        columns.append(f"{prefix}p")
    nodes.append(helper.make_node("Concat", columns, [ONNX_OUTPUT], axis=1))
    return _model(nodes, initializers, spec, len(boosters), "tierwise-adequacy-per-tier")


def joint_model(
    spec: FeatureSpec, projection: Projection | None, booster: lgb.Booster, tiers: int
) -> onnx.ModelProto:
    """Each row repeated once per tier, with the tier's one-hot indicator appended, through one booster."""
    nodes, initializers, width = projection_nodes(spec, projection)
    sub = _lightgbm_graph(booster, width + tiers, "joint_")
    nodes += [
        helper.make_node("Unsqueeze", [PROJECTED, "axis_1"], ["row_3d"]),  # (N, 1, w)
        helper.make_node("Tile", ["row_3d", "tile_repeats"], ["rows_per_tier"]),  # (N, T, w)
        helper.make_node("Shape", ["rows_per_tier"], ["tiled_shape"]),
        helper.make_node("Slice", ["tiled_shape", "zero", "two", "zero"], ["batch_and_tiers"]),
        helper.make_node("Concat", ["batch_and_tiers", "tier_count"], ["one_hot_shape"], axis=0),
        helper.make_node("Expand", ["one_hot", "one_hot_shape"], ["one_hot_rows"]),  # (N, T, T)
        helper.make_node("Concat", ["rows_per_tier", "one_hot_rows"], ["joint_rows"], axis=2),
        helper.make_node("Reshape", ["joint_rows", "flat_shape"], ["joint_input"]),  # (N*T, w+T)
    ]
    nodes.extend(sub.node)
    initializers.extend(sub.initializer)
    nodes += [
        helper.make_node("Slice", ["joint_probabilities", "col_1", "col_2", "axis_1"], ["joint_p"]),
        helper.make_node("Reshape", ["joint_p", "per_row_shape"], [ONNX_OUTPUT]),  # (N, T)
    ]
    initializers += [
        _const("tile_repeats", [1, tiers, 1]),
        _const("zero", [0]),
        _const("two", [2]),
        _const("tier_count", [tiers]),
        numpy_helper.from_array(np.eye(tiers, dtype=np.float32).reshape(1, tiers, tiers), "one_hot"),
        _const("flat_shape", [-1, width + tiers]),
        _const("per_row_shape", [-1, tiers]),
        *_shared_constants(),
    ]
    return _model(nodes, initializers, spec, tiers, "tierwise-adequacy-joint")


def run_model(model: onnx.ModelProto, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Run ``model`` on CPU (training-time use: projections and parity checks)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (output,) = session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(features, dtype=np.float32)})
    return np.asarray(output, dtype=np.float32)
