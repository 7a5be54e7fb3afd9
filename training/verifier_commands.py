"""Command functions ``cache train-verifier``, ``cache train-cross-encoder`` and ``cache eval``
(registered on the ``tierwise`` CLI).

Heavy imports (torch via the embedder, LightGBM, FAISS) happen inside the bodies, so
importing this module to build the CLI costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tierwise.cache.onnx_embedder import DEFAULT_DIR as DEFAULT_ONNX_DIR
from tierwise.training.cross_encoder_choice import NEAR_MISS_LIMIT

if TYPE_CHECKING:
    from rich.console import Console

    from tierwise.cache.embedder import SentenceEmbedder

DEFAULT_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qqp" / "pairs.jsonl.gz"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[1] / "cache" / "models" / "verifier"


# Options the training commands share.
PairsOption = Annotated[Path, typer.Option(help="labelled pairs (.jsonl or .jsonl.gz of {a, b, label})")]
CacheDirOption = Annotated[
    Path | None, typer.Option(help="embedding cache directory (default ~/.cache/tierwise)")
]
PrecisionOption = Annotated[
    float, typer.Option(help="validation precision the chosen point must hold with 95% confidence")
]


def _cache_dir(path: Path | None) -> Path:
    from tierwise.training.verifier_data import default_cache_dir

    return path if path is not None else default_cache_dir()


def _training_inputs(
    pairs: Path, device: str, cache_dir: Path | None
) -> tuple[Console, SentenceEmbedder, Path]:
    """The training commands' stderr console, once the pairs file is known to exist (else exit 2); the
    sentence embedder on ``device``; the embedding cache directory."""
    from rich.console import Console

    from tierwise.cache.embedder import SentenceEmbedder

    console = Console(stderr=True)
    if not pairs.exists():
        console.print(f"[red]error:[/red] pairs file {pairs} not found")
        raise typer.Exit(2)
    return console, SentenceEmbedder(device=device), _cache_dir(cache_dir)


def train_verifier(
    pairs: PairsOption = DEFAULT_PAIRS,
    out: Annotated[Path, typer.Option(help="model directory to write")] = SHIPPED_MODEL_DIR,
    cache_dir: CacheDirOption = None,
    precision_target: PrecisionOption = 0.90,
    traps: Annotated[bool, typer.Option(help="add the training share of the hand-written traps")] = True,
    seed: Annotated[int, typer.Option(help="LightGBM seed")] = 0,
    device: Annotated[str, typer.Option(help="embedding device: auto, cpu, cuda")] = "auto",
) -> None:
    """Train the cache verifier on the train split, choose its defaults on validation, score test once."""
    import json

    from tierwise.training.verifier import train_verifier_model

    console, embedder, embedding_cache = _training_inputs(pairs, device, cache_dir)
    report = train_verifier_model(
        pairs,
        out,
        embedder,
        embedding_cache,
        use_traps=traps,
        precision_target=precision_target,
        seed=seed,
        log=console.print,
    )
    typer.echo(json.dumps(report, indent=2, sort_keys=True))


def train_cross_encoder(
    pairs: PairsOption = DEFAULT_PAIRS,
    model_dir: Annotated[
        Path, typer.Option(help="trained verifier directory to add the cross-encoder to")
    ] = SHIPPED_MODEL_DIR,
    cache_dir: CacheDirOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="passes over the train split")] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 4e-5,
    max_pairs: Annotated[
        int | None, typer.Option(min=1, help="fine-tune on at most this many train pairs")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="skip fine-tuning: fine-tuned weights saved by an earlier run")
    ] = None,
    noise_self_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="share of train questions also paired with a noisy copy of itself"
        ),
    ] = 0.0,
    noise_pair_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of train pairs repeated with noise on one side")
    ] = 0.0,
    precision_target: PrecisionOption = 0.90,
    near_miss_limit: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="share of the independent traps' validation near-misses the chosen setting may serve",
        ),
    ] = NEAR_MISS_LIMIT,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda (fine-tuning and embedding)")] = "auto",
) -> None:
    """Fine-tune a cross-encoder, add it to a verifier, re-choose the defaults on validation, test once."""
    import json

    from tierwise.cache.verifier_model import VerifierModelError
    from tierwise.training.cross_encoder import FineTuning, attach_cross_encoder

    console, embedder, embedding_cache = _training_inputs(pairs, device, cache_dir)
    settings = FineTuning(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        max_pairs=max_pairs,
        noise_self_share=noise_self_share,
        noise_pair_share=noise_pair_share,
    )
    try:
        report = attach_cross_encoder(
            model_dir,
            pairs,
            embedder,
            embedding_cache,
            settings=settings,
            weights=weights,
            device=device,
            precision_target=precision_target,
            near_miss_limit=near_miss_limit,
            log=console.print,
        )
    except VerifierModelError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report, indent=2, sort_keys=True))


def _parse_thresholds(text: str) -> list[float]:
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"thresholds must be comma-separated numbers, got {text!r}") from None
    if not values or not all(-1.0 <= value <= 1.0 for value in values):
        raise typer.BadParameter("thresholds must be one or more numbers in [-1, 1]")
    return values


def eval_cache(
    pairs: Annotated[Path, typer.Option(help="labelled pairs (.jsonl/.jsonl.gz; a/b: text or message list)")],
    mode: Annotated[str, typer.Option(help="pairs: each pair alone; corpus: every a in one cache")] = "pairs",
    thresholds: Annotated[
        str, typer.Option(help="comma-separated cosine thresholds")
    ] = "0.80,0.85,0.88,0.90,0.92,0.95",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write precision/recall curves (PNG) here")] = None,
    model: Annotated[Path, typer.Option(help="verifier model directory")] = SHIPPED_MODEL_DIR,
    split: Annotated[
        str,
        typer.Option(
            help="test (the pairs the shipped verifier never trained or chose on), validation, train, "
            "or all (a file that is not QQP's, e.g. the traps; on QQP, all includes the training pairs)"
        ),
    ] = "test",
    sample: Annotated[
        int | None, typer.Option(help="evaluate this many pairs, chosen by a hash of the text")
    ] = None,
    cache_dir: CacheDirOption = None,
    device: Annotated[str, typer.Option(help="embedding device: auto, cpu, cuda")] = "auto",
    embedder_kind: Annotated[
        str,
        typer.Option(
            "--embedder",
            help="torch (sentence-transformers) or onnx (the export in --onnx-dir); each keeps its own "
            "embedding cache, so the two can be compared",
        ),
    ] = "torch",
    onnx_dir: Annotated[
        Path, typer.Option(help="embedder onnx: the directory `tierwise cache export-embedder` wrote")
    ] = DEFAULT_ONNX_DIR,
) -> None:
    """Serve metrics of the semantic cache (cosine-only vs guarded verifier) through the real cache path."""
    import asyncio
    import json

    from rich.console import Console

    from tierwise.cache.embedder import SentenceEmbedder, TextEmbedder
    from tierwise.cache.onnx_embedder import OnnxEmbedder, OnnxEmbedderError
    from tierwise.cache.verification import CosineOnlyVerifier
    from tierwise.cache.verifier_guarded import GuardedVerifier
    from tierwise.cache.verifier_model import VerifierModel, VerifierModelError
    from tierwise.training.eval_cache import Mode, evaluate_cache, plot_curves, read_eval_pairs, select_pairs
    from tierwise.training.verifier_data import DiskCachedEmbedder, EmbeddingDiskCache

    console = Console(stderr=True)
    if mode not in ("pairs", "corpus"):
        raise typer.BadParameter(f"mode must be pairs or corpus, got {mode!r}")
    eval_mode: Mode = "pairs" if mode == "pairs" else "corpus"
    levels = _parse_thresholds(thresholds)
    try:
        chosen = select_pairs(read_eval_pairs(pairs), split, sample)
        verifier_model = VerifierModel(model)
    except (OSError, ValueError, VerifierModelError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if embedder_kind not in ("torch", "onnx"):
        raise typer.BadParameter(f"--embedder must be torch or onnx, got {embedder_kind!r}")
    vectors_dir = _cache_dir(cache_dir)
    inner: TextEmbedder
    if embedder_kind == "onnx":
        try:
            inner = OnnxEmbedder(onnx_dir, device)
        except OnnxEmbedderError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        # Both backends report one vector space key; their cached vectors must not stand in for each other.
        vectors_dir = vectors_dir / "onnx"
    else:
        inner = SentenceEmbedder(device=device)
    embedder = DiskCachedEmbedder(inner, EmbeddingDiskCache(vectors_dir, inner.info))
    console.print(
        f"evaluating {len(chosen)} pairs of the {split} split in {mode} mode at thresholds {levels}"
    )
    report = asyncio.run(
        evaluate_cache(
            chosen,
            embedder,
            {
                "cosine": CosineOnlyVerifier,
                "guarded": lambda threshold: GuardedVerifier(verifier_model, min_cosine=threshold),
            },
            levels,
            eval_mode,
        )
    )
    defaults = verifier_model.manifest
    default_run = asyncio.run(
        evaluate_cache(
            chosen,
            embedder,
            {"guarded": lambda _: GuardedVerifier(verifier_model)},
            [defaults.min_cosine],
            eval_mode,
        )
    )
    report["default"] = {
        "similarity_threshold": defaults.min_cosine,
        "probability_threshold": defaults.threshold,
        **default_run["thresholds"][0]["guarded"],
    }
    report["split"] = split
    report["embedder"] = embedder_kind
    _print_table(console, report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        plot_curves(report, plot)


def _print_table(console: object, report: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    assert isinstance(console, Console)
    table = Table(
        title=f"{report['split']} split, {report['mode']} mode, {report['pairs']} pairs "
        f"({report['positives']} label 1)"
    )
    for column in ("threshold", "verifier", "precision", "recall", "wrong-serve", "served"):
        table.add_column(column, justify="right")
    rows = report["thresholds"]
    assert isinstance(rows, list)
    for row in rows:
        for name in ("cosine", "guarded"):
            m = row[name]
            table.add_row(
                f"{row['threshold']:.2f}",
                name,
                f"{m['precision']:.3f}",
                f"{m['recall']:.3f}",
                f"{m['wrong_serve_rate']:.3f}",
                str(m["served"]),
            )
    default = report["default"]
    assert isinstance(default, dict)
    table.add_row(
        f"{default['similarity_threshold']:.2f}",
        "guarded (defaults)",
        f"{default['precision']:.3f}",
        f"{default['recall']:.3f}",
        f"{default['wrong_serve_rate']:.3f}",
        str(default["served"]),
    )
    Console().print(table)
