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
    arch_kwargs,
    config_from_dict,
    flag_name,
    validate_model_fields,
)
from ..costs import inference_flops, model_costs
from ..data import ImageDataset, load_dataset
from ..engine.checkpoint import load_checkpoint
from ..methods import METHODS, Method, StudentWithTeacher, create_method
from ..models import ARCHS, BranchedNetwork, OwnBranchedNetwork, create_model
from ..models.own import create_own_model, is_own_arch

# Input size of a user's own network on ImageNet and synthetic data (torchvision's models').
OWN_IMAGE_SIZE = 224


def arch_options(config: TrainConfig) -> dict[str, object]:
    """The arch options the config sets (``None`` = the arch's default is left out)."""
    return {name: getattr(config, name) for name in ARCH_OPTION_FIELDS
            if getattr(config, name) is not None}


def image_size(config: TrainConfig) -> int:
    """--image-size, or the arch's own input size (32 for the CIFAR archs, 224 for ImageNet and
    for a network of your own)."""
    if config.image_size is not None:
        return config.image_size
    return OWN_IMAGE_SIZE if is_own_arch(config.arch) else ARCHS[config.arch].image_size


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


def _build_own_model(config: TrainConfig, num_classes: int | None,
                     m: int) -> OwnBranchedNetwork:
    """A ``--arch module:...`` network, checked to give one logit per class (if known)."""
    network = create_own_model(config.arch, branch_at=config.branch_at,
                               arch_kwargs=arch_kwargs(config), num_branches=m,
                               gate=config.gate, share_stem=config.share_stem)
    if None not in (num_classes, network.num_classes) and network.num_classes != num_classes:
        raise ValueError(f"--arch {config.arch}: the network gives {network.num_classes} "
                         f"logits, the dataset has {num_classes} classes; set the model's "
                         f"output size, e.g. --arch-kwargs '{{\"num_classes\": {num_classes}}}'")
    return network


def build_model(config: TrainConfig, num_classes: int | None,
                num_branches: int | None = None) -> BranchedNetwork | OwnBranchedNetwork:
    """The network a run's config describes (batched branches, freshly initialised).

    Args:
        config: the run's settings: ``arch``, its options (``depth``, ``width`` ...; ``None``
            takes the arch's default), ``num_branches``, ``shared_stages``, ``share_stem``,
            ``gate``.
        num_classes: classifier outputs per branch (the dataset's class count); None to check
            the settings before the dataset is known (a built-in arch is then built with 2).
        num_branches: overrides ``config.num_branches`` (e.g. 1 for the deployable student).

    Returns:
        A :class:`~one_fast.models.network.BranchedNetwork`, or for ``--arch module:...`` the
        user's network made a ONE network (:func:`one_fast.models.branch`).

    Raises:
        ValueError: an option the arch does not take or an invalid value, a factory that does
            not import, a --branch-at that names no submodule, naming the flag.
    """
    validate_model_fields(config)
    m = config.num_branches if num_branches is None else num_branches
    if is_own_arch(config.arch):
        return _build_own_model(config, num_classes, m)
    num_classes = 2 if num_classes is None else num_classes
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
    if is_own_arch(config.arch):
        where = f"branched at {config.branch_at}" if config.share_stem else "nothing shared"
        return f"{config.arch}({', '.join(f'{k}={v!r}' for k, v in arch_kwargs(config).items())})" \
            f" {where}"
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
