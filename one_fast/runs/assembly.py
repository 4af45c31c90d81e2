"""From a run's config to its network, method and (for kd) frozen teacher: one place for all.

The trainer, and every command that rebuilds a saved run (export, evaluation, analysis), call
:func:`build_model` with the run's :class:`~one_fast.config.TrainConfig`, so a checkpoint's
``model`` state always loads into the network it was saved from; :func:`run_dataset` and
:func:`autocast_dtype` likewise give them the run's data and evaluation precision, and
:func:`run_costs` the cost the run prints and records.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import (
    ARCH_OPTION_FIELDS,
    TrainConfig,
    config_from_dict,
    flag_name,
    validate_model_fields,
)
from ..costs import inference_flops, model_costs
from ..data import ImageDataset, load_dataset
from ..engine.checkpoint import load_checkpoint
from ..methods import METHODS, Method, StudentWithTeacher, create_method
from ..models import ARCHS, BranchedNetwork, create_model


def arch_options(config: TrainConfig) -> dict[str, object]:
    """The arch options the config sets (``None`` = the arch's default is left out)."""
    return {name: getattr(config, name) for name in ARCH_OPTION_FIELDS
            if getattr(config, name) is not None}


def image_size(config: TrainConfig) -> int:
    """--image-size, or the arch's own input size (32 for the CIFAR archs, 224 for ImageNet)."""
    return config.image_size if config.image_size is not None else ARCHS[config.arch].image_size


def run_dataset(config: TrainConfig, download: bool = False) -> ImageDataset:
    """The dataset a run trains on, loaded as the trainer loads it.

    Args:
        config: the run's settings (``dataset``, ``data_dir``, ``synthetic_classes``,
            ``svhn_extra``; synthetic images take the arch's input size).
        download: fetch the dataset when it is not in ``data_dir``.

    Returns:
        The :class:`~one_fast.data.ImageDataset` (its training split's statistics normalise
        both splits).

    Raises:
        DatasetNotFoundError: not in ``data_dir`` and not downloaded.
    """
    return load_dataset(config.dataset, config.data_dir, download,
                        synthetic_classes=config.synthetic_classes,
                        svhn_extra=config.svhn_extra, synthetic_image_size=image_size(config))


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run trains and evaluates in on ``device``.

    Args:
        config: the run's settings; ``amp`` None means bf16 on CUDA, float32 elsewhere.
        device: where the network runs.

    Returns:
        ``torch.bfloat16``, or None for plain float32.

    Raises:
        ValueError: ``amp`` is neither bf16 nor none, naming --amp.
    """
    amp = config.amp if config.amp is not None else (
        "bf16" if torch.device(device).type == "cuda" else "none")
    if amp not in ("bf16", "none"):
        raise ValueError(f"--amp must be bf16 or none, got {amp!r}")
    return torch.bfloat16 if amp == "bf16" else None


def build_model(config: TrainConfig, num_classes: int,
                num_branches: int | None = None) -> BranchedNetwork:
    """The network a run's config describes (batched branches, freshly initialised).

    Args:
        config: the run's settings: ``arch``, its options (``depth``, ``width`` ...; ``None``
            takes the arch's default), ``num_branches``, ``shared_stages``, ``share_stem``,
            ``gate``.
        num_classes: classifier outputs per branch (the dataset's class count).
        num_branches: overrides ``config.num_branches`` (e.g. 1 for the deployable student).

    Returns:
        A :class:`~one_fast.models.network.BranchedNetwork`.

    Raises:
        ValueError: an option the arch does not take or an invalid value, naming the flag.
    """
    validate_model_fields(config)
    m = config.num_branches if num_branches is None else num_branches
    common = {"gate": config.gate, "share_stem": config.share_stem}
    if config.shared_stages is not None:
        common["shared_stages"] = config.shared_stages
    try:
        return create_model(config.arch, num_classes=num_classes, num_branches=m,
                            layout=METHODS[config.method].layout, **common,
                            **arch_options(config))
    except ValueError as err:
        given = " ".join(f"{flag_name(k)} {v}" for k, v in
                         {**arch_options(config), **common}.items()
                         if not isinstance(v, bool))
        raise ValueError(f"--arch {config.arch} ({given}): {err}") from None


def build_method(config: TrainConfig, backend: str = "reference") -> Method:
    """The training method the config names, with its settings.

    ``--kl-weight 0`` turns distillation off (the KL terms are then not computed at all);
    ``--temperature`` unset takes the method's own default.
    """
    return create_method(config.method, temperature=config.temperature,
                         distill=config.kl_weight > 0, detach_teacher=config.detach_teacher,
                         backend=backend)


def load_teacher(config: TrainConfig, num_classes: int,
                 device: torch.device | str = "cpu") -> tuple[nn.Module, Method, TrainConfig]:
    """The frozen teacher of a kd run: the network saved in ``config.teacher``'s run folder.

    The teacher is rebuilt from its own run's config through :func:`build_model` and its
    checkpoint loaded strictly.

    Returns:
        (teacher network in eval mode with frozen parameters, its training method, its config).

    Raises:
        ValueError: no --teacher, or a teacher trained on other data, naming the flag.
        FileNotFoundError, CheckpointError: no readable checkpoint there.
    """
    if not config.teacher:
        raise ValueError("--method kd needs --teacher RUN_DIR (a finished one_fast run)")
    try:
        state = load_checkpoint(config.teacher, map_location=device)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"--teacher {config.teacher}: {err}") from None
    stored = dict(state["config"])
    teacher_config = config_from_dict({k: tuple(v) if isinstance(v, list) else v
                                       for k, v in stored.items()})
    if teacher_config.dataset != config.dataset:
        raise ValueError(f"--teacher {config.teacher} was trained on --dataset "
                         f"{teacher_config.dataset}, this run is on {config.dataset}")
    teacher = build_model(teacher_config, num_classes)
    try:
        teacher.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"--teacher {config.teacher}: its checkpoint does not fit the network "
                         f"its config describes ({str(err).splitlines()[0]})") from None
    teacher.to(device).requires_grad_(False).eval()
    return teacher, build_method(teacher_config), teacher_config


def training_module(config: TrainConfig, student: nn.Module, num_classes: int,
                    device: torch.device | str) -> nn.Module:
    """What the training step calls: the student (set up for its method's step, e.g. OKDDip's
    network also returning the peers' targets), or for kd the student with its teacher."""
    if config.method != "kd":
        METHODS[config.method].prepare_training(student)
        return student
    teacher, teacher_method, _ = load_teacher(config, num_classes, device)
    output: str | int = config.teacher_output
    if output != "ensemble":
        output = int(output)
    return StudentWithTeacher(student, teacher, output, teacher_method)


def describe_model(config: TrainConfig) -> str:
    """``ResNet-32 (basic)``-style name of the configured network, for the run's first line."""
    options = arch_options(config)
    shown = ", ".join(f"{k} {v}" for k, v in options.items())
    return f"{config.arch}" + (f" ({shown})" if shown else "")



def run_costs(config: TrainConfig, num_classes: int,
              input_shape: tuple[int, ...], teacher: nn.Module | None = None
              ) -> tuple[dict[str, object], str]:
    """FLOPs per image and parameters of the run's network (counted on the meta device).

    The loss is the method's reference formulation (the fused kernels do the same work, which
    counts 0 FLOPs: no matmuls). For kd the training FLOPs are the student's; the frozen
    teacher's forward per image is counted separately (``teacher_flops``).

    Returns:
        The record stored in the run's first metrics record (``Costs.to_dict()``, plus
        ``teacher_flops`` for kd), and the line printed at the start of the run.
    """
    method = build_method(config)

    def loss_fn(logits, gate, y):
        return method.loss(method.standin_outputs(logits, gate), y, 1.0).loss

    costs = model_costs(lambda m: build_model(config, num_classes, num_branches=m),
                        config.num_branches, input_shape, loss_fn=loss_fn)
    record, line = costs.to_dict(), costs.describe()
    if teacher is not None:
        record["teacher_flops"] = inference_flops(teacher, input_shape)
        line += (f"; the frozen teacher's forward adds {record['teacher_flops']:.3g} per "
                 "training image")
    return record, line
