"""``python -m one_fast.train``'s flags, generated from :class:`~one_fast.config.TrainConfig`.

One flag per field (``--field-name``), its help and ``--help`` group from the field's metadata,
booleans as ``--x``/``--no-x``, and the defaults shown as the chosen preset sets them
(``--dataset cifar100 --help`` shows the CIFAR recipe's).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import fields

from ..config import GROUPS, PRESETS, TrainConfig, config_from_flags, flag_name, show_value
from ..methods import readers
from ..models import ARCHS


def _parse_milestones(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--lr-milestones expects comma-separated epochs, got {text!r}") from err


def _show_default(value: object) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    return show_value(value)


def _arch_option_help(name: str, preset_value: object) -> str:
    """Which archs take option ``name``, each with its own help and default."""
    per_arch = [f"{arch}: {spec.options[name].help} "
                f"(default {show_value(spec.options[name].default)})"
                for arch, spec in ARCHS.items() if name in spec.options]
    preset = f"; this preset: {show_value(preset_value)}" if preset_value is not None else ""
    return f"taken by {'; '.join(per_arch)}{preset}"


def _flag_kwargs(f: dataclasses.Field, shown: object) -> dict[str, object]:
    """argparse keyword arguments of the field's flag (type from its annotation)."""
    meta = f.metadata
    text = (_arch_option_help(f.name, shown) if meta["arch_option"]
            else f"{meta['help']} (default: {_show_default(shown)})")
    read_by = readers(f.name)
    if read_by is not None:
        text += f" Read by --method {', '.join(sorted(read_by))} only."
    kwargs: dict[str, object] = dict(default=argparse.SUPPRESS, help=text)
    kind = str(f.type)
    if kind.startswith("bool"):
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    kwargs["type"] = {"tuple": _parse_milestones, "int": int, "float": float}.get(
        kind.split("[")[0].split(" ")[0], str)
    kwargs["metavar"] = ("{" + ",".join(meta["choices"]) + "}" if meta.get("choices")
                         else f.name.split("_")[-1].upper())
    return kwargs


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
    sections = {name: parser.add_argument_group(title) for name, title in GROUPS}
    for f in fields(TrainConfig):
        sections[f.metadata["group"]].add_argument(flag_name(f.name),
                                                   **_flag_kwargs(f, shown[f.name]))
    return parser


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


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags: preset values first, then every flag given on the command line; a bad value
    exits with argparse's one-line error (status 2)."""
    try:
        return config_from_flags(parse_flags(argv))[0]
    except ValueError as err:
        build_parser().error(str(err))
        raise  # parser.error exits


__all__ = ["build_parser", "config_from_args", "parse_flags"]
