"""``module:PACKAGE.MODULE:FACTORY`` archs: a user's network built by an importable function.

    create_own_model("module:torchvision.models:resnet18", branch_at="layer4",
                     arch_kwargs={"num_classes": 10}, num_branches=3)

The network records how it was built (``net.arch``, ``net.arch_options``), so a run's config,
an exported file's description or :func:`one_fast.export.extract_branch` can build it again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from torch import nn

from .build import branch
from .network import OwnBranchedNetwork

OWN_PREFIX = "module:"
_FORM = "module:PACKAGE.MODULE:FACTORY (e.g. module:torchvision.models:resnet18)"


def is_own_arch(arch: object) -> bool:
    """Whether ``arch`` names a user's factory (``module:...``) rather than a built-in arch."""
    return isinstance(arch, str) and arch.startswith(OWN_PREFIX)


def import_factory(arch: str) -> Callable[..., nn.Module]:
    """The function ``arch`` (``module:PACKAGE.MODULE:FACTORY``) names, imported.

    Raises:
        ValueError: a malformed name, a module that does not import or a name it lacks, naming
            --arch.
    """
    path, _, name = arch[len(OWN_PREFIX):].partition(":") if is_own_arch(arch) else ("", "", "")
    if not path or not name:
        raise ValueError(f"--arch {arch!r}: a network of your own is named {_FORM}")
    try:
        module = importlib.import_module(path)
    except Exception as err:  # ImportError, or whatever the module raises on import
        raise ValueError(f"--arch {arch}: cannot import {path!r} ({type(err).__name__}: "
                         f"{err}); is it on PYTHONPATH?") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--arch {arch}: module {path!r} has no function or class {name!r}")
    return factory


def build_own_model(arch: str, arch_kwargs: Mapping[str, object] | None = None) -> nn.Module:
    """The user's network: ``FACTORY(**arch_kwargs)`` (the student's class, unbranched).

    Raises:
        ValueError: the factory cannot be imported, rejects the arguments or builds no
            ``nn.Module``, naming --arch / --arch-kwargs.
    """
    factory = import_factory(arch)
    try:
        model = factory(**dict(arch_kwargs or {}))
    except TypeError as err:
        raise ValueError(f"--arch {arch} --arch-kwargs {dict(arch_kwargs or {})}: {err}") \
            from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"--arch {arch}: the factory returned {type(model).__name__}, not an "
                         f"nn.Module")
    return model


def create_own_model(arch: str, *, branch_at: str | None,
                     arch_kwargs: Mapping[str, object] | None = None, num_branches: int = 3,
                     gate: bool = True, share_stem: bool = True) -> OwnBranchedNetwork:
    """``branch(FACTORY(**arch_kwargs), at=branch_at, ...)``, each branch drawn from its own call.

    Args:
        arch: ``module:PACKAGE.MODULE:FACTORY``.
        branch_at: the submodule where the branches start (None with ``share_stem=False``).
        arch_kwargs: keyword arguments of the factory.
        num_branches: m.
        gate: the ONE gate (False: uniform weights).
        share_stem: False: m whole copies, nothing shared.

    Returns:
        The network, with ``arch`` and ``arch_options`` (``branch_at``, ``arch_kwargs``,
        ``gate``, ``share_stem``) recorded.

    Raises:
        ValueError: as :func:`build_own_model` and :func:`one_fast.models.branch`, naming the
            flag.
    """
    kwargs = dict(arch_kwargs or {})
    if share_stem and not branch_at:
        children = ", ".join(n for n, _ in build_own_model(arch, kwargs).named_children())
        raise ValueError(f"--arch {arch} needs --branch-at NAME, the submodule where the "
                         f"branches start; the model's top-level children: {children}")
    try:
        network = branch(lambda: build_own_model(arch, kwargs), at=branch_at if share_stem
                         else None, num_branches=num_branches, gate="one" if gate else None,
                         share_stem=share_stem)
    except ValueError as err:
        if "at=" in str(err):
            raise ValueError(f"--branch-at {branch_at}: {err}") from None
        raise
    network.arch = arch
    network.arch_options = {"branch_at": branch_at, "arch_kwargs": kwargs, "gate": gate,
                            "share_stem": share_stem}
    return network
