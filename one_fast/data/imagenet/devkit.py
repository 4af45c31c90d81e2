"""The ILSVRC2012 devkit: class names, the validation ground truth, and sorting val/ by class.

Two sources are understood:

* the official devkit (ILSVRC2012_devkit_t12.tar.gz, or its extracted folder): data/meta.mat
  maps ILSVRC2012_ID (1..1000) to wnid and words; data/ILSVRC2012_validation_ground_truth.txt
  holds one ILSVRC2012_ID per line, line i being ILSVRC2012_val_{i:08d}.JPEG;
* Kaggle's files: LOC_synset_mapping.txt ("<wnid> <words>" per line) and LOC_val_solution.csv
  ("ImageId,PredictionString" with the wnid first in the prediction string).

meta.mat is read with scipy (a dependency of scikit-learn); no torchvision is needed.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptDatasetError, DatasetNotFoundError

DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_FOLDER = "ILSVRC2012_devkit_t12"
META_MAT = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
KAGGLE_VAL_SOLUTION = "LOC_val_solution.csv"


def parse_meta_mat(raw: bytes, where: str) -> dict[int, tuple[str, str]]:
    """meta.mat's leaf synsets: {ILSVRC2012_ID: (wnid, words)}.

    Args:
        raw: the file's bytes.
        where: its name, for error messages.

    Raises:
        CorruptDatasetError: not a MATLAB file with a `synsets` struct array holding the fields
            ILSVRC2012_ID, WNID, words and num_children.
    """
    from scipy.io import loadmat

    try:
        synsets = loadmat(io.BytesIO(raw), squeeze_me=True)["synsets"]
        fields = ("ILSVRC2012_ID", "WNID", "words", "num_children")
        columns = [synsets[f] for f in fields]
    except Exception as e:  # scipy raises many types for damaged files; KeyError/ValueError
        raise CorruptDatasetError(f"{where} is not the devkit's meta.mat ({e})") from e
    # Entries without children are the 1000 classes; the rest are WordNet ancestors.
    return {int(i): (str(w), str(words)) for i, w, words, children in
            zip(*columns, strict=True) if int(children) == 0}


def parse_ground_truth(text: str, where: str) -> list[int]:
    """ILSVRC2012_validation_ground_truth.txt → ILSVRC2012_IDs, entry i for image i + 1."""
    try:
        return [int(line) for line in text.split()]
    except ValueError as e:
        raise CorruptDatasetError(f"{where}: expected one integer class id per line ({e})") from e


def parse_val_solution(text: str, where: str) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv → {image file name: wnid}."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise CorruptDatasetError(f"{where}: expected the header ImageId,PredictionString")
    out = {}
    for line, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[1].split():
            raise CorruptDatasetError(f"{where}, line {line}: expected ImageId,<wnid> ...")
        out[f"{row[0].strip()}.JPEG"] = row[1].split()[0]
    return out


def _read_synset_mapping(path: Path) -> dict[str, str]:
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, words = line.strip().partition(" ")
        if wnid:
            names[wnid] = words.strip() or wnid
    return names


@dataclass(frozen=True)
class Devkit:
    """What the devkit says about the validation images and the classes.

    Attributes:
        source: where it was read from.
        val_wnids: {validation image file name: wnid}.
        class_names: {wnid: words} (may be empty when only a val solution file was found).
    """

    source: Path
    val_wnids: dict[str, str] = field(repr=False)
    class_names: dict[str, str] = field(repr=False)


def _devkit_member(devkit: Path, member: str) -> bytes:
    """A file of the devkit, from its folder or straight from the .tar.gz."""
    if devkit.is_dir():
        path = devkit / member
        if not path.is_file():
            raise DatasetNotFoundError(f"devkit folder {devkit} lacks {member}")
        return path.read_bytes()
    try:
        with tarfile.open(devkit, "r:*") as tar:
            for info in tar:
                if info.isfile() and info.name.endswith(member):
                    return tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorruptDatasetError(f"{devkit} is not a readable tar archive ({e})") from e
    raise DatasetNotFoundError(f"devkit archive {devkit} lacks {member}")


def read_devkit(devkit: str | os.PathLike) -> Devkit:
    """Read the official devkit (its .tar.gz or extracted folder) or Kaggle's LOC_val_solution.csv.

    Args:
        devkit: ILSVRC2012_devkit_t12.tar.gz, the ILSVRC2012_devkit_t12 folder, or a
            LOC_val_solution.csv (class names then come from LOC_synset_mapping.txt beside it,
            when present).

    Returns:
        Devkit.

    Raises:
        DatasetNotFoundError: the path or a needed member is missing.
        CorruptDatasetError: a member cannot be parsed, or the ground truth names a class id
            that meta.mat lacks.
    """
    path = Path(devkit).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"devkit {path} does not exist")
    if path.suffix.lower() == ".csv":
        val = parse_val_solution(path.read_text(encoding="utf-8"), str(path))
        mapping = path.parent / KAGGLE_SYNSETS
        names = _read_synset_mapping(mapping) if mapping.is_file() else {}
        return Devkit(path, val, names)
    synsets = parse_meta_mat(_devkit_member(path, META_MAT), f"{path}: {META_MAT}")
    where = f"{path}: {GROUND_TRUTH}"
    ids = parse_ground_truth(_devkit_member(path, GROUND_TRUTH).decode("ascii", "replace"), where)
    unknown = sorted(set(ids) - set(synsets))
    if unknown:
        raise CorruptDatasetError(f"{where} names class ids missing from meta.mat: {unknown[:5]}")
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": synsets[c][0] for i, c in enumerate(ids, start=1)}
    return Devkit(path, val, {wnid: words for wnid, words in synsets.values()})


def find_devkit(root: Path) -> Path | None:
    """The devkit in an ImageNet folder (archive, folder or Kaggle CSV), if there is one."""
    for name in (DEVKIT_ARCHIVE, DEVKIT_FOLDER, KAGGLE_VAL_SOLUTION):
        if (root / name).exists():
            return root / name
    return None


def find_class_names(root: Path) -> dict[str, str]:
    """{wnid: words} from LOC_synset_mapping.txt or the devkit's meta.mat in `root` ({} if
    neither is there or readable: class names are cosmetic, the wnid stands in)."""
    mapping = root / KAGGLE_SYNSETS
    if mapping.is_file():
        return _read_synset_mapping(mapping)
    for candidate in (root / DEVKIT_FOLDER, root / DEVKIT_ARCHIVE):
        if candidate.exists():
            try:
                synsets = parse_meta_mat(_devkit_member(candidate, META_MAT), str(candidate))
            except (DatasetNotFoundError, CorruptDatasetError):
                return {}
            return {wnid: words for wnid, words in synsets.values()}
    return {}


@dataclass(frozen=True)
class ValPreparation:
    """What `prepare_val_folder` did.

    Attributes:
        moved: images moved into class folders by this call.
        already_sorted: images found in their class folder already (an earlier run).
        missing: images the ground truth lists that are in neither place (sorted names).
    """

    moved: int
    already_sorted: int
    missing: tuple[str, ...]


def prepare_val_folder(val_dir: str | os.PathLike, val_wnids: dict[str, str]) -> ValPreparation:
    """Move the flat validation images into val/<wnid>/ folders.

    Every loose image name is checked against the ground truth before anything moves; each
    move is one rename (atomic on a filesystem), so an interrupted run leaves every image
    either loose or sorted, and running again finishes the job.

    Args:
        val_dir: the folder ILSVRC2012_img_val.tar was extracted into.
        val_wnids: {image file name: wnid}, e.g. `read_devkit(...).val_wnids`.

    Returns:
        ValPreparation.

    Raises:
        DatasetNotFoundError: `val_dir` does not exist.
        CorruptDatasetError: loose images the ground truth does not list (nothing is moved).
    """
    val = Path(val_dir).expanduser()
    if not val.is_dir():
        raise DatasetNotFoundError(f"validation folder {val} does not exist: extract "
                                   f"ILSVRC2012_img_val.tar into it first")
    with os.scandir(val) as entries:
        loose = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    unknown = [name for name in loose if name not in val_wnids]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise CorruptDatasetError(f"{val}: {len(unknown)} files the ground truth does not list "
                                  f"({shown}); nothing was moved")
    for wnid in sorted({val_wnids[name] for name in loose}):
        (val / wnid).mkdir(exist_ok=True)
    for name in loose:
        os.replace(val / name, val / val_wnids[name] / name)
    loose_set = set(loose)
    already, missing = 0, []
    for name, wnid in val_wnids.items():
        if name in loose_set:
            continue
        if (val / wnid / name).is_file():
            already += 1
        else:
            missing.append(name)
    return ValPreparation(len(loose), already, tuple(sorted(missing)))
