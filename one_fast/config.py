"""Training configuration: one dataclass, a comment per field, flags generated from it, presets.

Every field of :class:`TrainConfig` is a ``python -m one_fast.train`` flag (``--field-name``);
its comment is the flag's help. ``--preset`` (default: the dataset's own) fills the fields a
recipe fixes; flags given explicitly override the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from dataclasses import dataclass, fields


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the embedded digits run."""

    # Dataset: digits (embedded, scikit-learn's handwritten digits), cifar10, cifar100, synthetic.
    dataset: str = "digits"
    # Folder holding the CIFAR "python version" archives (or their extracted folders).
    data_dir: str = "data"
    # Fetch the official CIFAR archive into --data-dir (MD5-checked) if it is missing.
    download: bool = False
    # Classes of the synthetic dataset (other datasets fix their own).
    synthetic_classes: int = 100
    # ResNet depth: 6n+2 for basic blocks (20, 32, 56, 110), 9n+2 for bottleneck (164).
    depth: int = 8
    # Residual block: basic or bottleneck.
    block: str = "basic"
    # m, the number of branches (1 trains the plain baseline network).
    num_branches: int = 3
    # Stages in the shared trunk: 2 is the paper's ONE; 1 and 0 are the less-shared ablations.
    shared_stages: int = 2
    # Learn the gate; --no-gate weights branches uniformly (the "no gate" ablation).
    gate: bool = True
    # Epochs to train.
    epochs: int = 12
    # Images per step on each process (the global batch is this times the number of processes).
    batch_size: int = 64
    # Peak SGD learning rate.
    lr: float = 0.1
    # SGD momentum.
    momentum: float = 0.9
    # Use Nesterov momentum.
    nesterov: bool = False
    # L2 weight decay (applied to every parameter, as in the ONE authors' code).
    weight_decay: float = 1e-4
    # Epochs at which the learning rate is multiplied by --lr-decay (comma-separated).
    lr_milestones: tuple[int, ...] = (8, 11)
    # Factor applied to the learning rate at each milestone.
    lr_decay: float = 0.1
    # Temperature T of the KL distillation terms.
    temperature: float = 3.0
    # Weight of the KL terms after ramp-up.
    kl_weight: float = 1.0
    # Epochs of KL-weight ramp-up by exp(-5(1-t)^2) as in the ONE authors' code; 0 disables it.
    rampup: int = 0
    # Stop the KL gradient at the ensemble teacher (the authors' choice).
    detach_teacher: bool = True
    # Use the fused ONE loss (Triton on CUDA); otherwise the pure-PyTorch reference loss.
    fused: bool = False
    # torch.compile model+loss and the optimizer step (default: on for CUDA, off for CPU).
    compile: bool | None = None
    # Replay each training step as one CUDA graph (default: on for CUDA without DDP).
    cuda_graphs: bool | None = None
    # Autocast precision for the network: bf16 or none (default: bf16 on CUDA, none on CPU).
    amp: str | None = None
    # channels_last memory format for images and weights (default: on for CUDA).
    channels_last: bool | None = None
    # Evaluate on the test split every this many epochs (and always after the last epoch).
    eval_every: int = 1
    # Device: auto, cpu, cuda, cuda:N.
    device: str = "auto"
    # Seed for initialisation, data order and augmentation.
    seed: int = 0
    # Run folder for checkpoints, metrics.jsonl and the plot.
    out_dir: str = "runs/digits"
    # Continue the run saved in this folder (same model settings required).
    resume: str | None = None
    # Also write TensorBoard scalars (needs the tensorboard package).
    tensorboard: bool = False
    # Convert BatchNorm to SyncBatchNorm under DDP.
    sync_bn: bool = False
    # Show a progress bar per epoch.
    progress: bool = True


# Model-shaping fields a checkpoint must agree on before it can be resumed.
MODEL_FIELDS = ("dataset", "depth", "block", "num_branches", "shared_stages", "gate",
                "synthetic_classes")

PRESETS: dict[str, dict[str, object]] = {
    # Finishes in about two minutes on 2 CPU cores and reaches >90% ensemble accuracy.
    "digits": dict(dataset="digits", depth=8, epochs=12, batch_size=64, lr_milestones=(8, 11),
                   rampup=0, out_dir="runs/digits"),
    # The ONE authors' CIFAR recipe (ResNet-32, m=3, 300 epochs, batch 128, SGD 0.1, x0.1 at
    # 150 and 225, wd 1e-4, T=3, KL ramp-up over 80 epochs).
    "cifar100": dict(dataset="cifar100", depth=32, epochs=300, batch_size=128,
                     lr_milestones=(150, 225), rampup=80, out_dir="runs/cifar100"),
    "cifar10": dict(dataset="cifar10", depth=32, epochs=300, batch_size=128,
                    lr_milestones=(150, 225), rampup=80, out_dir="runs/cifar10"),
    # CIFAR-100-shaped random data: throughput runs, no accuracy to expect.
    "synthetic": dict(dataset="synthetic", depth=32, epochs=2, batch_size=128,
                      lr_milestones=(), rampup=0, out_dir="runs/synthetic"),
}


def field_comments() -> dict[str, str]:
    """The comment above each field in the source: the flag's help text."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(TrainConfig).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
        elif ":" in text and not text.startswith(("class", '"""', "@")) and pending:
            comments[text.split(":")[0]] = " ".join(pending)
            pending = []
        else:
            pending = []
    return comments


def _parse_milestones(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--lr-milestones expects comma-separated epochs, got {text!r}") from err


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`TrainConfig` field, plus ``--preset``."""
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.train",
        description="Train a ONE (On-the-fly Native Ensemble) network.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="recipe to start from (default: the preset named like --dataset)")
    helps = field_comments()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        kwargs: dict[str, object] = dict(default=argparse.SUPPRESS, help=helps.get(f.name, ""))
        if kind.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("tuple"):
            kwargs["type"] = _parse_milestones
        elif kind.startswith("int"):
            kwargs["type"] = int
        elif kind.startswith("float"):
            kwargs["type"] = float
        else:
            kwargs["type"] = str
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags: preset values first, then every flag given on the command line."""
    args = vars(build_parser().parse_args(argv))
    preset_name = args.pop("preset", None) or args.get("dataset", TrainConfig.dataset)
    if preset_name not in PRESETS:
        raise SystemExit(f"--dataset {preset_name!r}: expected one of {sorted(PRESETS)}")
    values = {**PRESETS[preset_name], **args}
    return TrainConfig(**values)


def config_to_dict(config: TrainConfig) -> dict[str, object]:
    """Plain-Python dict of a config (tuples become lists) for JSON and checkpoints."""
    values = dataclasses.asdict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def config_from_dict(values: dict[str, object]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error naming them."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config fields: {unknown}")
    fixed = {k: tuple(v) if k == "lr_milestones" else v for k, v in values.items()}
    return TrainConfig(**fixed)


__all__ = ["MODEL_FIELDS", "PRESETS", "TrainConfig", "build_parser", "config_from_args",
           "config_from_dict", "config_to_dict", "field_comments"]
