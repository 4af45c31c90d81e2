"""The training configuration as data: one dataclass whose fields carry their own description.

Every field of :class:`TrainConfig` is a ``python -m one_fast.train`` flag (``--field-name``).
:func:`option` stores, in the field's ``metadata``, everything said about it: the help text,
the ``--help`` group, the meaningful range or choices (checked by
:func:`one_fast.config.checks.validate_config`, with an error naming the flag) and whether it is
an option of some archs only. A new field needs nothing else: the command line
(:mod:`one_fast.cli.train_flags`) and the checks read it from there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from ..methods import METHODS
from ..models.factory import ARCHS

# --help sections, in order: (group name, title).
GROUPS = (
    ("data", "data"),
    ("model", "model"),
    ("method", "method (one, baseline, kd, dml, ensemble, cl_ilr, okddip) and its loss"),
    ("optimisation", "optimisation"),
    ("speed", "speed (defaults: on for CUDA, off on the CPU)"),
    ("output", "output and run folder"),
)


@dataclass(frozen=True)
class Range:
    """An interval of allowed values; ``None`` bounds are open-ended. NaN is never inside."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is excluded
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")


POSITIVE = Range(0, low_open=True)  # > 0
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)


def option(default: Any, group: str, help: str, *, within: Range | None = None,
           choices: tuple[str, ...] | None = None, arch_option: bool = False) -> Any:
    """A :class:`TrainConfig` field with its help, ``--help`` group and allowed values.

    Args:
        default: the value without preset or flag.
        group: one of :data:`GROUPS`' names.
        help: the flag's help text (``--help`` appends the default).
        within: numeric range every value (or every element of a tuple) must lie in.
        choices: allowed strings (``None`` stays allowed where the default is ``None``).
        arch_option: the field is an option of some archs (``ARCHS[arch].options``): default
            ``None`` (= the arch's own default), help listed per arch, refused by archs that do
            not take it.
    """
    return dataclasses.field(default=default,
                             metadata={"group": group, "help": help, "within": within,
                                       "choices": choices, "arch_option": arch_option})


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the embedded digits run."""

    dataset: str = option(
        "digits", "data",
        "Dataset: digits (embedded, scikit-learn's handwritten digits, 1,437 training images), "
        "cifar10, cifar100, svhn (need their files in --data-dir, or --download), synthetic "
        "(CIFAR-100-shaped random images for timing the GPU path: nothing to learn, so accuracy "
        "stays at chance; on a CPU one ResNet-32 epoch of it takes minutes), or imagenet "
        "(ILSVRC2012 JPEGs in --data-dir, decoded by NVIDIA DALI: pip install -e "
        "\".[imagenet]\").",
        choices=("digits", "cifar10", "cifar100", "svhn", "synthetic", "imagenet"))
    data_dir: str = option(
        "data", "data",
        "Folder holding the CIFAR \"python version\" archives (or their extracted folders), the "
        "SVHN files, or the ImageNet folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG; see python "
        "-m one_fast.prepare_imagenet).")
    data_threads: int | None = option(
        None, "data",
        "ImageNet: DALI CPU threads per process (default: this process's CPUs divided among "
        "the processes on the node).", within=AT_LEAST_1)
    prefetch: int = option(
        3, "data", "ImageNet: batches the input pipeline prepares ahead of the training step.",
        within=AT_LEAST_1)
    download: bool = option(
        False, "data",
        "Fetch the official CIFAR archive into --data-dir (MD5-checked) if it is missing.")
    synthetic_classes: int = option(
        100, "data", "Classes of the synthetic dataset (other datasets fix their own).",
        within=Range(2))
    svhn_extra: bool = option(
        False, "data",
        "Add SVHN's 531,131-image \"extra\" split to its training split (as the ONE authors do).")
    image_size: int | None = option(
        None, "data",
        "Input height and width (default: the arch's own, 32 or 224): ImageNet's crop size and "
        "the synthetic dataset's image size; the other datasets' images must have this size.",
        within=Range(8))
    arch: str = option(
        "resnet", "model",
        "Network architecture (CIFAR: resnet, wrn, resnext29, densenet_bc; ImageNet: resnet18, "
        "resnext50_32x4d); its options are the flags below, each taken by some archs only. Or "
        "your own network: module:PACKAGE.MODULE:FACTORY, an importable function building it "
        "(e.g. module:torchvision.models:resnet18), with --branch-at and --arch-kwargs.",
        choices=tuple(ARCHS))
    branch_at: str | None = option(
        None, "model",
        "--arch module:...: the submodule where the branches start (e.g. layer4): the model up "
        "to it is the shared trunk, it and the rest are copied per branch.")
    arch_kwargs: str | None = option(
        None, "model",
        "--arch module:...: the factory's keyword arguments as a JSON object, e.g. "
        "'{\"num_classes\": 10}'.")
    depth: int | None = option(None, "model", "Depth of the network.", within=Range(2),
                               arch_option=True)
    block: str | None = option(None, "model", "Residual block.",
                               choices=("basic", "bottleneck"), arch_option=True)
    width: int | None = option(None, "model", "Widening factor.", within=AT_LEAST_1,
                               arch_option=True)
    dropout: float | None = option(None, "model", "Dropout probability.",
                                   within=Range(0, 1, high_open=True), arch_option=True)
    cardinality: int | None = option(None, "model", "Groups of the grouped convolutions.",
                                     within=AT_LEAST_1, arch_option=True)
    base_width: int | None = option(None, "model", "Channels per group in the first stage.",
                                    within=AT_LEAST_1, arch_option=True)
    widen_factor: int | None = option(None, "model", "First stage's output channels / 64.",
                                      within=AT_LEAST_1, arch_option=True)
    growth_rate: int | None = option(None, "model", "Growth rate k.", within=AT_LEAST_1,
                                     arch_option=True)
    num_branches: int = option(
        3, "model", "m, the number of branches (or of independent members for dml and "
        "ensemble).", within=AT_LEAST_1)
    shared_stages: int | None = option(
        None, "model",
        "Stages in the shared trunk (default: all but the last, the paper's ONE; fewer are the "
        "less-shared ablations).", within=Range(0, 3))
    share_stem: bool = option(
        True, "model",
        "Share the stem; --no-share-stem with --shared-stages 0 makes the branches fully "
        "independent networks (still gated and distilled from their ensemble under ONE).")
    gate: bool = option(
        True, "model", "Learn the gate; --no-gate weights branches uniformly (the \"no gate\" "
        "ablation).")
    method: str = option(
        "one", "method",
        "Training method: one (ONE), baseline (one network, plain CE), kd (a student distilled "
        "from --teacher), dml (Deep Mutual Learning peers), ensemble (m independent networks), "
        "cl_ilr (CL-ILR: a tree of branches, each distilled from the others' mean), okddip "
        "(OKDDip: m-1 peers with attention-weighted targets and a leader, the student).",
        choices=tuple(METHODS))
    teacher: str | None = option(
        None, "method",
        "kd: the run folder of the frozen teacher (any method's finished run on the same data).")
    teacher_output: str = option(
        "ensemble", "method",
        "kd: what the teacher teaches with: ensemble (its ensemble's logits) or a branch index.")
    temperature: float | None = option(
        None, "method",
        "Temperature T of the distillation terms (default: the method's, one 3, kd 4, dml 1, "
        "cl_ilr 2, okddip 3).",
        within=POSITIVE)
    kl_weight: float = option(
        1.0, "method",
        "Weight of the KL terms after ramp-up (0: no distillation, the KL terms are not "
        "computed).", within=NON_NEGATIVE)
    rampup: int = option(
        0, "method",
        "Epochs of KL-weight ramp-up by exp(-5(1-t)^2) as in the ONE authors' code; 0 disables "
        "it.", within=NON_NEGATIVE)
    detach_teacher: bool = option(
        True, "method", "Stop the KL gradient at the ensemble teacher (the authors' choice).")
    epochs: int = option(12, "optimisation", "Epochs to train.", within=AT_LEAST_1)
    batch_size: int = option(
        64, "optimisation",
        "Images per step on each process (the global batch is this times the number of "
        "processes).", within=AT_LEAST_1)
    lr: float = option(0.1, "optimisation", "Peak SGD learning rate.", within=POSITIVE)
    momentum: float = option(0.9, "optimisation", "SGD momentum.",
                             within=Range(0, 1, high_open=True))
    nesterov: bool = option(False, "optimisation", "Use Nesterov momentum.")
    weight_decay: float = option(
        1e-4, "optimisation",
        "L2 weight decay (applied to every parameter, as in the ONE authors' code).",
        within=NON_NEGATIVE)
    lr_milestones: tuple[int, ...] = option(
        (8, 11), "optimisation",
        "Epochs at which the learning rate is multiplied by --lr-decay (comma-separated, "
        "increasing, at most --epochs; \"\" for none). Scaled with --epochs when only --epochs "
        "is given.", within=AT_LEAST_1)
    lr_decay: float = option(
        0.1, "optimisation", "Factor applied to the learning rate at each milestone.",
        within=Range(0, 1, low_open=True))
    lr_schedule: str = option(
        "step", "optimisation",
        "Learning-rate schedule: step (times --lr-decay at each of --lr-milestones) or cosine "
        "(per epoch from --lr down to 0 over --epochs: winycg/MCL-OKD's SGDR with T_0 = the "
        "run's epochs; --lr-milestones and --lr-decay are not read).",
        choices=("step", "cosine"))
    seed: int = option(0, "optimisation",
                       "Seed for initialisation, data order and augmentation.",
                       within=NON_NEGATIVE)
    fused: bool = option(
        False, "speed",
        "Use the fused ONE loss (Triton or native kernel); otherwise the pure-PyTorch "
        "reference.")
    compile: bool | None = option(
        None, "speed",
        "torch.compile model+loss and the optimizer step (default: on for CUDA, off for CPU).")
    cuda_graphs: bool | None = option(
        None, "speed",
        "Replay each training step as one CUDA graph (default: on for CUDA without DDP).")
    amp: str | None = option(
        None, "speed",
        "Autocast precision for the network: bf16 or none (default: bf16 on CUDA, none on "
        "CPU).", choices=("bf16", "none"))
    channels_last: bool | None = option(
        None, "speed", "channels_last memory format for images and weights (default: on for "
        "CUDA).")
    device: str = option("auto", "speed", "Device: auto, cpu, cuda, cuda:N.")
    sync_bn: bool = option(False, "speed", "Convert BatchNorm to SyncBatchNorm under DDP.")
    out_dir: str = option(
        "runs/digits", "output",
        "Run folder for checkpoints, metrics.jsonl and the plot (one run per folder).")
    resume: str | None = option(
        None, "output",
        "Continue the run saved in this folder: its settings are reused, flags given override "
        "them (e.g. --epochs to train longer); it continues in that folder unless --out-dir is "
        "set.")
    overwrite: bool = option(
        False, "output", "Replace the run already in --out-dir (otherwise a new run there is "
        "refused).")
    eval_every: int = option(
        1, "output",
        "Evaluate on the test split every this many epochs (and always after the last epoch).",
        within=AT_LEAST_1)
    tensorboard: bool = option(
        False, "output", "Also write TensorBoard scalars (needs the tensorboard package).")
    progress: bool = option(True, "output", "Show a progress bar per epoch.")


# The fields that are options of some archs (None: the arch's default).
ARCH_OPTION_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata["arch_option"])
# Model- and data-shaping fields a checkpoint must agree on before it can be resumed.
MODEL_FIELDS = ("dataset", "svhn_extra", "image_size", "arch", "branch_at", "arch_kwargs",
                *ARCH_OPTION_FIELDS,
                "num_branches", "shared_stages", "share_stem", "gate", "synthetic_classes",
                "method")
# Fields that say where and how this invocation runs, never taken from a resumed checkpoint.
INVOCATION_FIELDS = ("resume", "overwrite", "out_dir", "progress", "device", "data_threads",
                     "prefetch")
# Fields that do not change what a run computes: two configs differing only here describe the
# same experiment (the table runner matches a run folder to its plan on every other field, and
# the config hash in run.json leaves these out).
INCIDENTAL_FIELDS = (*INVOCATION_FIELDS, "data_dir", "download", "tensorboard", "eval_every")
# What --resume may change: the incidental fields, and the length of the run with the schedule
# scaled from it. Any other difference from the checkpoint's config is refused.
RESUMABLE_FIELDS = (*INCIDENTAL_FIELDS, "epochs", "lr_milestones", "rampup")


def flag_name(name: str) -> str:
    """``lr_milestones`` -> ``--lr-milestones``."""
    return "--" + name.replace("_", "-")


def show_value(value: object) -> str:
    """A value as a user types it: tuples comma-separated ("" when empty), floats with %g."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or '""'
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(
        value, float) else str(value)


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


__all__ = ["ARCH_OPTION_FIELDS", "AT_LEAST_1", "GROUPS", "INCIDENTAL_FIELDS",
           "INVOCATION_FIELDS", "MODEL_FIELDS", "RESUMABLE_FIELDS",
           "NON_NEGATIVE", "POSITIVE", "Range", "TrainConfig", "config_from_dict",
           "config_to_dict", "flag_name", "option", "show_value"]
