"""Training configuration: one dataclass, a comment per field, flags generated from it, presets.

Every field of :class:`TrainConfig` is a ``python -m one_fast.train`` flag (``--field-name``);
its comment is the flag's help, and :func:`option` beside it declares the ``--help`` group and
the meaningful range (checked by :func:`validate_config`, with an error naming the flag). A new
field needs nothing else: its flag, help, grouping and range check come from that one place.
``--preset`` (default: the dataset's own) fills the fields a recipe fixes; flags given
explicitly override the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
from dataclasses import dataclass, fields
from typing import Any

from .methods import METHODS
from .models.factory import ARCHS

# --help sections, in order: (group name, title).
GROUPS = (
    ("data", "data"),
    ("model", "model"),
    ("method", "method (one, baseline, kd, dml, ensemble) and its loss"),
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


def option(default: Any, group: str, *, within: Range | None = None,
           choices: tuple[str, ...] | None = None, arch_option: bool = False) -> Any:
    """A :class:`TrainConfig` field with its ``--help`` group and allowed values.

    Args:
        default: the value without preset or flag.
        group: one of :data:`GROUPS`' names.
        within: numeric range every value (or every element of a tuple) must lie in.
        choices: allowed strings (``None`` stays allowed where the default is ``None``).
        arch_option: the field is an option of some archs (``ARCHS[arch].options``): default
            ``None`` (= the arch's own default), help listed per arch, refused by archs that do
            not take it.
    """
    return dataclasses.field(default=default,
                             metadata={"group": group, "within": within, "choices": choices,
                                       "arch_option": arch_option})


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the embedded digits run."""

    # Dataset: digits (embedded, scikit-learn's handwritten digits, 1,437 training images),
    # cifar10, cifar100, svhn (need their files in --data-dir, or --download), synthetic
    # (CIFAR-100-shaped random images for timing the GPU path: nothing to learn, so accuracy
    # stays at chance; on a CPU one ResNet-32 epoch of it takes minutes), or imagenet
    # (ILSVRC2012 JPEGs in --data-dir, decoded by NVIDIA DALI: pip install -e ".[imagenet]").
    dataset: str = option("digits", "data",
                          choices=("digits", "cifar10", "cifar100", "svhn", "synthetic",
                                   "imagenet"))
    # Folder holding the CIFAR "python version" archives (or their extracted folders), the
    # SVHN files, or the ImageNet folder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG; see python -m
    # one_fast.prepare_imagenet).
    data_dir: str = option("data", "data")
    # ImageNet: DALI CPU threads per process (default: this process's CPUs divided among the
    # processes on the node).
    data_threads: int | None = option(None, "data", within=AT_LEAST_1)
    # ImageNet: batches the input pipeline prepares ahead of the training step.
    prefetch: int = option(3, "data", within=AT_LEAST_1)
    # Fetch the official CIFAR archive into --data-dir (MD5-checked) if it is missing.
    download: bool = option(False, "data")
    # Classes of the synthetic dataset (other datasets fix their own).
    synthetic_classes: int = option(100, "data", within=Range(2))
    # Add SVHN's 531,131-image "extra" split to its training split (as the ONE authors do).
    svhn_extra: bool = option(False, "data")
    # Input height and width (default: the arch's own, 32 or 224): ImageNet's crop size and
    # the synthetic dataset's image size; the other datasets' images must have this size.
    image_size: int | None = option(None, "data", within=Range(8))
    # Network architecture (CIFAR: resnet, wrn, resnext29, densenet_bc; ImageNet: resnet18,
    # resnext50_32x4d); its options are the flags below, each taken by some archs only.
    arch: str = option("resnet", "model", choices=tuple(ARCHS))
    # Depth of the network.
    depth: int | None = option(None, "model", within=Range(2), arch_option=True)
    # Residual block.
    block: str | None = option(None, "model", choices=("basic", "bottleneck"),
                               arch_option=True)
    # Widening factor.
    width: int | None = option(None, "model", within=AT_LEAST_1, arch_option=True)
    # Dropout probability.
    dropout: float | None = option(None, "model", within=Range(0, 1, high_open=True),
                                   arch_option=True)
    # Groups of the grouped convolutions.
    cardinality: int | None = option(None, "model", within=AT_LEAST_1, arch_option=True)
    # Channels per group in the first stage.
    base_width: int | None = option(None, "model", within=AT_LEAST_1, arch_option=True)
    # First stage's output channels / 64.
    widen_factor: int | None = option(None, "model", within=AT_LEAST_1, arch_option=True)
    # Growth rate k.
    growth_rate: int | None = option(None, "model", within=AT_LEAST_1, arch_option=True)
    # m, the number of branches (or of independent members for dml and ensemble).
    num_branches: int = option(3, "model", within=AT_LEAST_1)
    # Stages in the shared trunk (default: all but the last, the paper's ONE; fewer are the
    # less-shared ablations).
    shared_stages: int | None = option(None, "model", within=Range(0, 3))
    # Share the stem; --no-share-stem with --shared-stages 0 makes the branches fully
    # independent networks (still gated and distilled from their ensemble under ONE).
    share_stem: bool = option(True, "model")
    # Learn the gate; --no-gate weights branches uniformly (the "no gate" ablation).
    gate: bool = option(True, "model")
    # Training method: one (ONE), baseline (one network, plain CE), kd (a student distilled
    # from --teacher), dml (Deep Mutual Learning peers), ensemble (m independent networks).
    method: str = option("one", "method", choices=tuple(METHODS))
    # kd: the run folder of the frozen teacher (any method's finished run on the same data).
    teacher: str | None = option(None, "method")
    # kd: what the teacher teaches with: ensemble (its ensemble's logits) or a branch index.
    teacher_output: str = option("ensemble", "method")
    # Temperature T of the distillation terms (default: the method's, one 3, kd 4, dml 1).
    temperature: float | None = option(None, "method", within=POSITIVE)
    # Weight of the KL terms after ramp-up (0: no distillation, the KL terms are not computed).
    kl_weight: float = option(1.0, "method", within=NON_NEGATIVE)
    # Epochs of KL-weight ramp-up by exp(-5(1-t)^2) as in the ONE authors' code; 0 disables it.
    rampup: int = option(0, "method", within=NON_NEGATIVE)
    # Stop the KL gradient at the ensemble teacher (the authors' choice).
    detach_teacher: bool = option(True, "method")
    # Epochs to train.
    epochs: int = option(12, "optimisation", within=AT_LEAST_1)
    # Images per step on each process (the global batch is this times the number of processes).
    batch_size: int = option(64, "optimisation", within=AT_LEAST_1)
    # Peak SGD learning rate.
    lr: float = option(0.1, "optimisation", within=POSITIVE)
    # SGD momentum.
    momentum: float = option(0.9, "optimisation", within=Range(0, 1, high_open=True))
    # Use Nesterov momentum.
    nesterov: bool = option(False, "optimisation")
    # L2 weight decay (applied to every parameter, as in the ONE authors' code).
    weight_decay: float = option(1e-4, "optimisation", within=NON_NEGATIVE)
    # Epochs at which the learning rate is multiplied by --lr-decay (comma-separated, increasing,
    # at most --epochs; "" for none). Scaled with --epochs when only --epochs is given.
    lr_milestones: tuple[int, ...] = option((8, 11), "optimisation", within=AT_LEAST_1)
    # Factor applied to the learning rate at each milestone.
    lr_decay: float = option(0.1, "optimisation", within=Range(0, 1, low_open=True))
    # Seed for initialisation, data order and augmentation.
    seed: int = option(0, "optimisation", within=NON_NEGATIVE)
    # Use the fused ONE loss (Triton or native kernel); otherwise the pure-PyTorch reference.
    fused: bool = option(False, "speed")
    # torch.compile model+loss and the optimizer step (default: on for CUDA, off for CPU).
    compile: bool | None = option(None, "speed")
    # Replay each training step as one CUDA graph (default: on for CUDA without DDP).
    cuda_graphs: bool | None = option(None, "speed")
    # Autocast precision for the network: bf16 or none (default: bf16 on CUDA, none on CPU).
    amp: str | None = option(None, "speed", choices=("bf16", "none"))
    # channels_last memory format for images and weights (default: on for CUDA).
    channels_last: bool | None = option(None, "speed")
    # Device: auto, cpu, cuda, cuda:N.
    device: str = option("auto", "speed")
    # Convert BatchNorm to SyncBatchNorm under DDP.
    sync_bn: bool = option(False, "speed")
    # Run folder for checkpoints, metrics.jsonl and the plot (one run per folder).
    out_dir: str = option("runs/digits", "output")
    # Continue the run saved in this folder: its settings are reused, flags given override
    # them (e.g. --epochs to train longer); it continues in that folder unless --out-dir is set.
    resume: str | None = option(None, "output")
    # Replace the run already in --out-dir (otherwise a new run there is refused).
    overwrite: bool = option(False, "output")
    # Evaluate on the test split every this many epochs (and always after the last epoch).
    eval_every: int = option(1, "output", within=AT_LEAST_1)
    # Also write TensorBoard scalars (needs the tensorboard package).
    tensorboard: bool = option(False, "output")
    # Show a progress bar per epoch.
    progress: bool = option(True, "output")


# The fields that are options of some archs (None: the arch's default).
ARCH_OPTION_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.metadata["arch_option"])
# Model- and data-shaping fields a checkpoint must agree on before it can be resumed.
MODEL_FIELDS = ("dataset", "svhn_extra", "image_size", "arch", *ARCH_OPTION_FIELDS,
                "num_branches", "shared_stages", "share_stem", "gate", "synthetic_classes",
                "method")
# Fields that say where and how this invocation runs, never taken from a resumed checkpoint.
INVOCATION_FIELDS = ("resume", "overwrite", "out_dir", "progress", "device", "data_threads",
                     "prefetch")

PRESETS: dict[str, dict[str, object]] = {
    # Finishes in about two minutes on 2 CPU cores and reaches >90% ensemble accuracy.
    "digits": dict(dataset="digits", depth=8, block="basic", epochs=12, batch_size=64,
                   lr_milestones=(8, 11), rampup=0, out_dir="runs/digits"),
    # The ONE authors' CIFAR recipe (ResNet-32, m=3, 300 epochs, batch 128, SGD 0.1, x0.1 at
    # 150 and 225, wd 1e-4, T=3, KL ramp-up over 80 epochs).
    "cifar100": dict(dataset="cifar100", depth=32, block="basic", epochs=300, batch_size=128,
                     lr_milestones=(150, 225), rampup=80, out_dir="runs/cifar100"),
    "cifar10": dict(dataset="cifar10", depth=32, block="basic", epochs=300, batch_size=128,
                    lr_milestones=(150, 225), rampup=80, out_dir="runs/cifar10"),
    # ImageNet ONE ResNet-18, m=3, the last stage branched: 90 epochs, batch 256 (--batch-size
    # is per process: give 256/K to K processes), SGD lr 0.1 momentum 0.9 (no Nesterov), x0.1
    # at epochs 30 and 60, weight decay 1e-4. This is torchvision's reference ResNet recipe
    # (references/classification/train.py; checked) and the setting issue #16 names. Not
    # confirmed against the ONE paper itself (its implementation-details text could not be
    # read here): whether it uses Nesterov momentum, milestones at 50%/75% of training, branches
    # the last two blocks rather than the last stage, or ramps the KL weight up on ImageNet
    # (this preset does not). --arch resnext50_32x4d trains the paper's ResNeXt-50 row.
    "imagenet": dict(dataset="imagenet", arch="resnet18", num_branches=3, epochs=90,
                     batch_size=256, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
                     lr_milestones=(30, 60), lr_decay=0.1, rampup=0, out_dir="runs/imagenet"),
    # The ONE authors' SVHN recipe: their cifar_one.py trains on train+extra without
    # augmentation, batch 128, SGD 0.1 momentum 0.9; the 40 epochs come from the paper. Their
    # code does not fix the milestones or the weight decay for SVHN: 20/30 are CIFAR's 150/225
    # at the same fractions of the run, wd stays CIFAR's 1e-4. The KL ramp-up is scaled the
    # same way (80 of 300 epochs -> 11 of 40), as --epochs 40 would scale the CIFAR recipe:
    # the paper's loss has the KL weight at 1 after the ramp, and a fixed 80-epoch ramp over a
    # 40-epoch run would end at exp(-5 (1 - 39/80)^2) = 0.27, never training that loss.
    "svhn": dict(dataset="svhn", svhn_extra=True, depth=32, block="basic", epochs=40,
                 batch_size=128, lr_milestones=(20, 30), rampup=11, out_dir="runs/svhn"),
    # CIFAR-100-shaped random data: throughput runs, no accuracy to expect.
    "synthetic": dict(dataset="synthetic", depth=32, block="basic", epochs=2, batch_size=128,
                      lr_milestones=(), rampup=0, out_dir="runs/synthetic"),
}


def flag_name(name: str) -> str:
    """``lr_milestones`` -> ``--lr-milestones``."""
    return "--" + name.replace("_", "-")


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


def validate_config(config: TrainConfig) -> None:
    """Reject values outside each field's declared range, and inconsistent combinations.

    Raises:
        ValueError: naming the flag, the value and what is allowed.
    """
    for f in fields(TrainConfig):
        value, flag = getattr(config, f.name), flag_name(f.name)
        within, choices = f.metadata.get("within"), f.metadata.get("choices")
        if value is None and f.default is None:
            continue
        if choices is not None and value not in choices:
            raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        if within is not None:
            for item in value if isinstance(value, tuple) else (value,):
                if item not in within:
                    raise ValueError(f"{flag} must be {within}, got {_show(value)}")
    milestones = config.lr_milestones
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"--lr-milestones must be strictly increasing, got {_show(milestones)}")
    if milestones and milestones[-1] > config.epochs:
        raise ValueError(f"--lr-milestones {_show(milestones)} go beyond --epochs "
                         f"{config.epochs}; the learning rate would never decay there")
    if config.device != "auto" and config.device.split(":")[0] not in ("cpu", "cuda") or (
            config.device.startswith("cuda:") and not config.device[5:].isdigit()):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    validate_model_fields(config)


def validate_model_fields(config: TrainConfig) -> None:
    """Check that the arch, its options and the method agree; ValueError naming the flag."""
    takes = ARCHS[config.arch].options
    for name in ARCH_OPTION_FIELDS:
        value = getattr(config, name)
        if value is not None and name not in takes:
            taken = [flag_name(k) for k in ARCH_OPTION_FIELDS if k in takes]
            raise ValueError(f"{flag_name(name)} {_show(value)} is not taken by --arch "
                             f"{config.arch} (its options: {', '.join(taken) or 'none'})")
    most = takes["shared_stages"].default  # every stage but the last: the paper's ONE
    if config.shared_stages is not None and config.shared_stages > most:
        raise ValueError(f"--shared-stages must be in [0, {most}] for --arch {config.arch}, got "
                         f"{config.shared_stages}")
    if not config.share_stem and config.shared_stages != 0:
        raise ValueError("--no-share-stem needs --shared-stages 0 (a per-branch stem cannot "
                         "feed a shared stage)")
    METHODS[config.method]().check(num_branches=config.num_branches,
                                   shared_stages=config.shared_stages,
                                   share_stem=config.share_stem, gate=config.gate)
    if config.method == "kd" and not config.teacher:
        raise ValueError("--method kd needs --teacher RUN_DIR (a finished one_fast run on the "
                         "same dataset)")
    if config.teacher and config.method != "kd":
        raise ValueError(f"--teacher is only used by --method kd (this run is --method "
                         f"{config.method})")
    if config.teacher_output != "ensemble" and not config.teacher_output.isdigit():
        raise ValueError(f"--teacher-output must be ensemble or a branch index (0, 1, ...), got "
                         f"{config.teacher_output!r}")


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or '""'
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(
        value, float) else str(value)


def _parse_milestones(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--lr-milestones expects comma-separated epochs, got {text!r}") from err


def _show_default(f: dataclasses.Field, value: object) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    return _show(value)


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`TrainConfig` field, plus ``--preset``.

    Args:
        preset: the preset whose values ``--help`` shows as defaults (default: digits).

    Returns:
        The parser; flags not given are absent from the parsed namespace.
    """
    shown = {f.name: f.default for f in fields(TrainConfig)}
    shown.update(PRESETS.get(preset or TrainConfig.dataset, {}))
    parser = argparse.ArgumentParser(
        prog="python -m one_fast.train",
        description="Train a ONE (On-the-fly Native Ensemble) network. Defaults shown are the "
                    f"{preset or TrainConfig.dataset!r} preset's; give --dataset or --preset "
                    "before --help to see another's.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, metavar="NAME",
                        help=f"recipe filling every flag not given: {', '.join(sorted(PRESETS))} "
                             "(default: the one named like --dataset)")
    helps = field_comments()
    sections = {name: parser.add_argument_group(title) for name, title in GROUPS}
    for f in fields(TrainConfig):
        kind = str(f.type)
        text = f"{helps.get(f.name, '')} (default: {_show_default(f, shown[f.name])})"
        if f.metadata["arch_option"]:
            text = _arch_option_help(f.name, shown[f.name])
        kwargs: dict[str, object] = dict(default=argparse.SUPPRESS, help=text)
        if kind.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"tuple": _parse_milestones, "int": int, "float": float}.get(
                kind.split("[")[0].split(" ")[0], str)
            kwargs["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}" if f.metadata.get(
                "choices") else f.name.split("_")[-1].upper()
        sections[f.metadata["group"]].add_argument(flag_name(f.name), **kwargs)
    return parser


def _arch_option_help(name: str, preset_value: object) -> str:
    """Which archs take option ``name``, each with its own help and default."""
    per_arch = [f"{arch}: {spec.options[name].help} (default {_show(spec.options[name].default)})"
                for arch, spec in ARCHS.items() if name in spec.options]
    preset = f"; this preset: {_show(preset_value)}" if preset_value is not None else ""
    return f"taken by {'; '.join(per_arch)}{preset}"


def _preset_of(argv: list[str] | None) -> str | None:
    """The --preset (or --dataset) named in argv, to show that preset's defaults in --help."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    pre.add_argument("--dataset")
    known, _ = pre.parse_known_args(argv)
    return known.preset or known.dataset


def parse_flags(argv: list[str] | None = None) -> dict[str, object]:
    """The flags given on the command line (only those), plus "preset" if given."""
    parser = build_parser(_preset_of(argv))
    return {k: v for k, v in vars(parser.parse_args(argv)).items()
            if k != "preset" or v is not None}


def scale_schedule(values: dict[str, object], given: dict[str, object],
                   preset: dict[str, object]) -> list[str]:
    """Scale the preset's LR milestones and KL ramp-up when only ``--epochs`` was given.

    ``--epochs 50`` on a 300-epoch recipe moves its milestones 150,225 to 25,38 (the same
    fractions of the run) instead of leaving them beyond the run's end. Changes ``values`` in
    place.

    Returns:
        One line per scaled setting, saying what changed and how to choose it instead.
    """
    epochs, base = values["epochs"], preset.get("epochs")
    if "epochs" not in given or not base or epochs == base:
        return []
    notes = []
    milestones = preset.get("lr_milestones", ())
    if "lr_milestones" not in given and milestones:
        scaled = tuple(sorted({min(epochs, max(1, round(m * epochs / base))) for m in milestones}))
        values["lr_milestones"] = scaled
        notes.append(f"--epochs {epochs}: LR milestones scaled from the preset's "
                     f"{_show(milestones)} (of {base} epochs) to {_show(scaled)}; set "
                     "--lr-milestones to choose them")
    rampup = preset.get("rampup", 0)
    if "rampup" not in given and rampup:
        values["rampup"] = max(1, round(rampup * epochs / base))
        notes.append(f"--epochs {epochs}: KL ramp-up scaled from the preset's {rampup} epochs to "
                     f"{values['rampup']}; set --rampup to choose it")
    return notes


def config_from_flags(given: dict[str, object],
                      base: dict[str, object] | None = None) -> tuple[TrainConfig, list[str]]:
    """Build the config from the flags given and a base (a preset, or a resumed run's config).

    Args:
        given: :func:`parse_flags` output.
        base: values the flags override; default: the preset named by --preset or --dataset,
            whose schedule is then scaled to --epochs (:func:`scale_schedule`).

    Returns:
        The validated config and notes for the user (one line each).

    Raises:
        ValueError: an unknown preset or a value out of range, naming the flag.
    """
    given = dict(given)
    preset_name = given.pop("preset", None) or given.get("dataset", TrainConfig.dataset)
    notes: list[str] = []
    if base is None:
        if preset_name not in PRESETS:
            raise ValueError(f"--dataset {preset_name!r}: expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset_name]
        if given.get("arch", "resnet") != preset.get("arch", "resnet"):
            # The preset's arch options describe its own arch (a ResNet): another --arch starts
            # from that arch's defaults.
            preset = {k: v for k, v in preset.items() if k not in ARCH_OPTION_FIELDS}
        values = {**preset, **given}
        notes = scale_schedule(values, given, PRESETS[preset_name])
    else:
        values = {**base, **given}
    apply_method_requirements(values, given)
    if given.get("resume") and "out_dir" not in given:
        values["out_dir"] = run_dir_of(str(given["resume"]))
    config = TrainConfig(**values)
    validate_config(config)
    if config.rampup > config.epochs:
        notes.append(f"warning: --rampup {config.rampup} is longer than --epochs "
                     f"{config.epochs}: the KL weight never reaches --kl-weight "
                     f"{config.kl_weight:g}")
    return config, notes


def apply_method_requirements(values: dict[str, object], given: dict[str, object]) -> None:
    """Set the model fields the method fixes (``required_model``) unless given as flags.

    ``--method dml`` alone gives fully independent members (``--shared-stages 0
    --no-share-stem --no-gate``); a flag given explicitly that contradicts the method is an
    error naming it (e.g. ``--method baseline --num-branches 3``). Changes ``values`` in place.
    """
    cls = METHODS.get(str(values.get("method", TrainConfig.method)))
    if cls is None:  # validate_config names the bad --method
        return
    method = cls()
    method.check(**{k: v for k, v in given.items() if k in method.required_model})
    values.update(method.required_model)


def run_dir_of(path: str) -> str:
    """The run folder of a ``--resume`` argument (the folder itself, or a checkpoint's folder)."""
    import os

    return os.path.dirname(path) or "." if path.endswith(".pt") else path


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags: preset values first, then every flag given on the command line."""
    parser_error = None
    try:
        return config_from_flags(parse_flags(argv))[0]
    except ValueError as err:
        parser_error = str(err)
    build_parser().error(parser_error)
    raise AssertionError("unreachable")  # parser.error exits


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


__all__ = ["ARCH_OPTION_FIELDS", "GROUPS", "INVOCATION_FIELDS", "MODEL_FIELDS", "PRESETS",
           "Range", "TrainConfig", "apply_method_requirements", "build_parser",
           "config_from_args", "config_from_dict", "config_from_flags", "config_to_dict",
           "field_comments", "flag_name", "option", "parse_flags", "run_dir_of",
           "scale_schedule", "validate_config", "validate_model_fields"]
