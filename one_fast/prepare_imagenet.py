"""`python -m one_fast.prepare_imagenet DIR`: sort ImageNet's flat validation folder into class
folders using the devkit's ground truth, then check the whole layout.

DIR/val must hold the extracted ILSVRC2012_img_val.tar (50,000 loose JPEGs); the ground truth is
read from --devkit, or found in DIR: ILSVRC2012_devkit_t12.tar.gz (read in place), its extracted
ILSVRC2012_devkit_t12/ folder, or Kaggle's LOC_val_solution.csv. Moves are renames, so an
interrupted run is finished by running it again. No torchvision needed.

`--check` changes nothing: it reports whether DIR is a complete layout (what is missing and
the step that makes it if not) and where class names come from (the devkit's words, Kaggle's
LOC_synset_mapping.txt, or the wnids themselves), with or without a devkit. A val/ that is
already sorted needs no devkit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .data.errors import CorruptDatasetError, DatasetNotFoundError
from .data.imagenet.devkit import (
    DEVKIT_ARCHIVE,
    DEVKIT_FOLDER,
    KAGGLE_SYNSETS,
    KAGGLE_VAL_SOLUTION,
    find_class_names,
    find_devkit,
    prepare_val_folder,
    read_devkit,
)
from .data.imagenet.layout import find_imagenet


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m one_fast.prepare_imagenet",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="the ImageNet folder (holding val/)")
    parser.add_argument("--devkit", type=Path, default=None,
                        help=f"{DEVKIT_ARCHIVE}, its folder, or {KAGGLE_VAL_SOLUTION} "
                             f"(default: looked up in DATA_DIR)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing: report whether DATA_DIR is a complete layout, "
                             "what is missing, and where class names come from (no devkit "
                             "needed)")
    return parser


def check(data_dir: Path) -> tuple[list[str], bool]:
    """The lines ``--check`` prints about DATA_DIR, and whether its layout is complete."""
    names = find_class_names(data_dir)
    devkit = find_devkit(data_dir)
    try:
        layout = find_imagenet(data_dir)
    except DatasetNotFoundError as err:
        lines, ready = [f"layout: not complete: {err}"], False
    else:
        lines, ready = [f"layout: ImageNet at {data_dir}: {layout.num_classes} classes, "
                        f"{len(layout.train)} train / {len(layout.val)} val images: ready"], True
        unnamed = sum(w not in names for w in layout.wnids)
        if unnamed:
            lines.append(f"class names: {unnamed} of {layout.num_classes} classes are named by "
                         f"their wnid (no name for them in a devkit meta.mat or "
                         f"{KAGGLE_SYNSETS} in {data_dir})")
    if devkit is None:
        lines.append(f"devkit: none in {data_dir} (needed only to sort a flat val/: "
                     f"{DEVKIT_ARCHIVE}, its {DEVKIT_FOLDER}/ folder or Kaggle's "
                     f"{KAGGLE_VAL_SOLUTION})")
    else:
        lines.append(f"devkit: {devkit}")
    return lines, ready


def prepare(data_dir: Path, devkit: Path | None) -> list[str]:
    """Sort DATA_DIR/val and return the lines to print; raises the data errors."""
    devkit = devkit or find_devkit(data_dir)
    if devkit is None:
        lines, ready = check(data_dir)
        if ready:  # val/ is sorted already: there is nothing a devkit would do
            return ["val/ is already sorted into class folders: nothing to move", *lines]
        raise DatasetNotFoundError(
            f"no devkit in {data_dir} to sort val/ with: put {DEVKIT_ARCHIVE} (from "
            f"image-net.org), its {DEVKIT_FOLDER}/ folder or Kaggle's {KAGGLE_VAL_SOLUTION} "
            f"there, or pass --devkit; `python -m one_fast.prepare_imagenet {data_dir} --check` "
            f"reports what else is missing")
    kit = read_devkit(devkit)
    result = prepare_val_folder(data_dir / "val", kit.val_wnids)
    lines = [f"val: {result.moved} images moved into class folders, {result.already_sorted} "
             f"already sorted (ground truth: {kit.source})"]
    if result.missing:
        lines.append(f"warning: {len(result.missing)} images of the ground truth are missing "
                     f"from {data_dir / 'val'} (first: {result.missing[0]}); re-extract "
                     f"ILSVRC2012_img_val.tar into it and run this again")
    try:
        layout = find_imagenet(data_dir)
    except DatasetNotFoundError as err:
        lines.append(f"layout not complete yet: {err}")
    else:
        lines.append(f"ImageNet at {data_dir}: {layout.num_classes} classes, "
                     f"{len(layout.train)} train / {len(layout.val)} val images: ready")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    data_dir = args.data_dir.expanduser()
    if args.check:
        lines, ready = check(data_dir)
        print("\n".join(lines))
        return 0 if ready else 1
    try:
        lines = prepare(data_dir, args.devkit)
    except (DatasetNotFoundError, CorruptDatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
