"""The paper's tables as configurations of ordinary training runs, with the paper's figures.

A table is a list of :class:`Configuration` s; each is one ``python -m one_fast.train`` command
(trained once per seed) and yields one or two rows of the table: the deployable student
(branch 0) and, for methods with an ensemble, the ensemble (ONE-E, or the m-Net average).

Paper figures are top-1 test error (%) from Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly
Native Ensemble", NeurIPS 2018; every figure below names the paper's table it comes from. A cell
is left empty wherever no figure has been checked -- no figure is filled in from memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The two backbones of the paper's CIFAR experiments. The authors' "ResNet-110" is, in their
# code, 18 bottleneck blocks per stage: the 164-layer bottleneck ResNet.
BACKBONES: dict[str, dict[str, object]] = {
    "resnet32": {"depth": 32, "block": "basic", "label": "ResNet-32"},
    "resnet110": {"depth": 164, "block": "bottleneck",
                  "label": "ResNet-110 (bottleneck 164)"},
    # winycg/MCL-OKD's "ResNet-110": 12 bottleneck blocks per stage, 110 layers (1,170,868
    # parameters at m = 1 with 100 classes, its 1.17M).
    "resnet110b": {"depth": 110, "block": "bottleneck",
                   "label": "ResNet-110 (bottleneck, 12 per stage)"},
}

# Top-1 error (%) on CIFAR-100, keyed (backbone, method, output). Source: the paper's main
# results table (CIFAR-10/100 and SVHN, "Error rate (%)"): baseline, ONE and ONE-E; the
# CIFAR-10 and SVHN columns are not carried (not checked), so those cells stay empty.
MAIN_CIFAR100 = {
    ("resnet32", "baseline", "student"): 31.18,
    ("resnet32", "one", "student"): 26.61,
    ("resnet32", "one", "ensemble"): 24.63,
    ("resnet110", "baseline", "student"): 25.33,
    ("resnet110", "one", "student"): 21.62,
}
# Source: the paper's branch-number study (ResNet-32, CIFAR-100), m = 1..5; m = 1 is the plain
# network, so ONE and ONE-E coincide there.
BRANCHES_CIFAR100_RESNET32 = {
    1: {"student": 31.18, "ensemble": 31.18},
    2: {"student": 27.28, "ensemble": 25.94},
    3: {"student": 26.68, "ensemble": 24.63},
    4: {"student": 26.80, "ensemble": 24.67},
    5: {"student": 26.47, "ensemble": 24.65},
}
# Source: the paper's component analysis (ResNet-110, CIFAR-100): the student's error of the
# full model and of ONE without online distillation; no sharing / no gate not carried.
ABLATION_CIFAR100_RESNET110 = {
    ("full", "student"): 21.62,
    ("no_distill", "student"): 24.73,
}

# Top-1 error (%) on CIFAR-100 under winycg/MCL-OKD's protocol (the okd preset), keyed
# (backbone, method, output). Source: the README of github.com/winycg/MCL-OKD (its results
# table: "baseline | DML | CL-ILR | ONE | OKDDip | MCL-OKD", each "error (ensemble error)").
OKD_CIFAR100 = {
    ("resnet32", "baseline", "student"): 28.91,
    ("resnet32", "dml", "student"): 24.92, ("resnet32", "dml", "ensemble"): 22.97,
    ("resnet32", "cl_ilr", "student"): 25.40, ("resnet32", "cl_ilr", "ensemble"): 24.03,
    ("resnet32", "one", "student"): 25.74, ("resnet32", "one", "ensemble"): 24.03,
    ("resnet32", "okddip", "student"): 25.76, ("resnet32", "okddip", "ensemble"): 23.73,
    ("resnet110b", "baseline", "student"): 23.62,
    ("resnet110b", "dml", "student"): 21.51, ("resnet110b", "dml", "ensemble"): 19.12,
    ("resnet110b", "cl_ilr", "student"): 21.16, ("resnet110b", "cl_ilr", "ensemble"): 18.66,
    ("resnet110b", "one", "student"): 22.19, ("resnet110b", "one", "ensemble"): 20.23,
    ("resnet110b", "okddip", "student"): 21.05, ("resnet110b", "okddip", "ensemble"): 19.40,
}
# MCL-OKD itself (not a one_fast method): carried beside the table as a reference only.
OKD_CIFAR100_MCL_OKD = {"resnet32": (24.52, 22.00), "resnet110b": (20.39, 18.29)}

STUDENT, ENSEMBLE = "student", "ensemble"
# Which metrics key of the trainer's test accuracies each output reads.
OUTPUT_METRIC = {STUDENT: "branch_0", ENSEMBLE: "ensemble"}


@dataclass(frozen=True)
class Row:
    """One line of a table: an output of a configuration, and the paper's figure for it.

    Attributes:
        label: what the line shows, e.g. "ONE-E".
        output: "student" (branch 0) or "ensemble".
        paper: the paper's top-1 error (%), or None where none is carried.
        metric: the test-accuracy key the row reads when not :data:`OUTPUT_METRIC`'s (e.g.
            "branch_3": OKDDip's student is its leader, the last branch).
    """

    label: str
    output: str
    paper: float | None = None
    metric: str | None = None


@dataclass(frozen=True)
class Configuration:
    """One training setting, run once per seed.

    Attributes:
        name: unique within the table; also the run folder's name.
        dataset: the trainer's --dataset.
        backbone: a key of :data:`BACKBONES`.
        method: the trainer's --method (one, baseline, kd, dml, ensemble).
        num_branches: m (members for dml/ensemble; 1 for baseline and kd).
        rows: the lines this configuration gives in the table.
        shared_stages, gate, share_stem: the network's sharing (ONE: 2, True, True).
        kl_weight: --kl-weight when not the trainer's default (0: no online distillation).
        teacher: name of the configuration whose run (same seed) is this one's --teacher.
        teacher_output: the trainer's --teacher-output ("ensemble" or a branch index) when the
            teacher's default (its ensemble) does not exist, e.g. "0" for a baseline teacher.
        preset: the trainer's --preset when not the dataset's own (e.g. "okd").
        extra: more trainer flags of this configuration (e.g. ``("--temperature", "2")``).
    """

    name: str
    dataset: str
    backbone: str
    method: str
    num_branches: int
    rows: tuple[Row, ...]
    shared_stages: int = 2
    gate: bool = True
    share_stem: bool = True
    kl_weight: float | None = None
    teacher: str | None = None
    teacher_output: str | None = None
    preset: str | None = None
    extra: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.dataset} {BACKBONES[self.backbone]['label']}"

    def train_flags(self) -> list[str]:
        """The trainer flags of this configuration (only settings that differ from ONE's
        defaults are spelled out, besides dataset, backbone and m).

        Returns:
            e.g. ``["--dataset", "cifar100", "--depth", "32", "--block", "basic",
            "--num-branches", "3"]``; ``--teacher`` is added by the runner.
        """
        backbone = BACKBONES[self.backbone]
        flags = ["--preset", self.preset] if self.preset else []
        flags += ["--dataset", self.dataset]
        if self.method != "one":
            flags += ["--method", self.method]
        flags += ["--depth", str(backbone["depth"]), "--block", str(backbone["block"]),
                  "--num-branches", str(self.num_branches)]
        if self.shared_stages != 2:
            flags += ["--shared-stages", str(self.shared_stages)]
        if not self.gate:
            flags.append("--no-gate")
        if not self.share_stem:
            flags.append("--no-share-stem")
        if self.kl_weight is not None:
            flags += ["--kl-weight", f"{self.kl_weight:g}"]
        if self.teacher_output is not None:
            flags += ["--teacher-output", self.teacher_output]
        return flags + list(self.extra)


@dataclass(frozen=True)
class Table:
    """A table of the paper: its configurations in the order they must run.

    Attributes:
        name: the command's TABLE argument.
        title: the heading of TABLE.md.
        configurations: teachers come before the configurations that name them.
        costs: show training/test FLOPs and parameters per row.
        notes: lines printed under the table (choices made, figures not carried).
    """

    name: str
    title: str
    configurations: tuple[Configuration, ...]
    costs: bool = False
    notes: tuple[str, ...] = field(default=())

    def only(self, names: list[str]) -> Table:
        """The table restricted to the configurations named (and the teachers they need).

        Raises:
            ValueError: a name that is not one of the table's configurations (naming --only).
        """
        known = {c.name: c for c in self.configurations}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"--only: {', '.join(unknown)} not in table {self.name!r} "
                             f"(it has: {', '.join(known)})")
        wanted = set(names)
        for name in names:
            teacher = known[name].teacher
            while teacher is not None:
                wanted.add(teacher)
                teacher = known[teacher].teacher
        kept = tuple(c for c in self.configurations if c.name in wanted)
        return Table(self.name, self.title, kept, self.costs, self.notes)


def _paper(dataset: str, figures: dict, key: object, expected_dataset: str = "cifar100"):
    return figures.get(key) if dataset == expected_dataset else None


def _baseline(dataset: str, backbone: str, figures: dict | None = None,
              name: str | None = None) -> Configuration:
    paper = _paper(dataset, figures or {}, (backbone, "baseline", STUDENT))
    return Configuration(name or f"{dataset}-{backbone}-baseline", dataset, backbone,
                         "baseline", 1, (Row("baseline", STUDENT, paper),))


def _one(dataset: str, backbone: str, figures: dict | None = None, m: int = 3,
         name: str | None = None) -> Configuration:
    figures = figures or {}
    rows = (Row("ONE", STUDENT, _paper(dataset, figures, (backbone, "one", STUDENT))),
            Row("ONE-E", ENSEMBLE, _paper(dataset, figures, (backbone, "one", ENSEMBLE))))
    return Configuration(name or f"{dataset}-{backbone}-one", dataset, backbone, "one", m, rows)


def main_table(datasets: list[str]) -> Table:
    """baseline vs ONE vs ONE-E for ResNet-32 and the authors' ResNet-110 on each dataset."""
    configs = []
    for dataset in datasets:
        for backbone in BACKBONES:
            configs.append(_baseline(dataset, backbone, MAIN_CIFAR100))
            configs.append(_one(dataset, backbone, MAIN_CIFAR100))
    return Table("main", "Baseline vs ONE vs ONE-E (paper: main results table)", tuple(configs),
                 notes=("Paper figures: CIFAR-100 only (CIFAR-10 and SVHN cells not carried).",))


def compare_table(datasets: list[str]) -> Table:
    """baseline, KD, DML and ONE (the paper's comparison with distillation methods)."""
    configs = []
    for dataset in datasets:
        for backbone in BACKBONES:
            configs.append(_baseline(dataset, backbone, MAIN_CIFAR100))
        # KD: a ResNet-32 student distilled from the ResNet-110 baseline of the same seed (the
        # run just above), our choice of teacher; KD is not run for the ResNet-110 student.
        configs.append(Configuration(
            f"{dataset}-resnet32-kd", dataset, "resnet32", "kd", 1, (Row("KD", STUDENT),),
            teacher=f"{dataset}-resnet110-baseline", teacher_output="0"))
        for backbone in BACKBONES:
            configs.append(Configuration(
                f"{dataset}-{backbone}-dml", dataset, backbone, "dml", 2,
                (Row("DML", STUDENT), Row("DML (2 peers averaged)", ENSEMBLE)),
                shared_stages=0, gate=False, share_stem=False))
            one = _one(dataset, backbone, MAIN_CIFAR100)
            configs.append(Configuration(one.name, dataset, backbone, "one", 3, one.rows[:1]))
    return Table("compare", "Baseline, KD, DML and ONE (paper: comparison with distillation "
                 "methods)", tuple(configs), notes=(
                     "KD: ResNet-32 student, teacher = the ResNet-110 baseline run of the same "
                     "seed (our choice of teacher); KD and DML paper cells not carried.",
                     "Baseline and ONE paper figures: the paper's main results table."))


def ensembles_table(datasets: list[str]) -> Table:
    """2-Net and 3-Net independent ensembles vs ONE-E, with their costs."""
    configs = []
    for dataset in datasets:
        for backbone in BACKBONES:
            for m in (2, 3):
                configs.append(Configuration(
                    f"{dataset}-{backbone}-{m}net", dataset, backbone, "ensemble", m,
                    (Row(f"{m}-Net", ENSEMBLE),), shared_stages=0, gate=False,
                    share_stem=False))
            configs.append(_one(dataset, backbone, MAIN_CIFAR100))
    return Table("ensembles", "Independent ensembles vs ONE-E, with their costs (paper: "
                 "comparison with ensembling methods)", tuple(configs), costs=True,
                 notes=("2-Net/3-Net paper cells not carried; ONE/ONE-E figures: the paper's "
                        "main results table.",))


def ablation_table(datasets: list[str]) -> Table:
    """Full ONE, no online distillation, no sharing, no gate (the authors used ResNet-110)."""
    def rows(dataset: str, variant: str) -> tuple[Row, ...]:
        return (Row("ONE", STUDENT, _paper(dataset, ABLATION_CIFAR100_RESNET110,
                                           (variant, STUDENT))),
                Row("ONE-E", ENSEMBLE))

    configs = []
    for dataset in datasets:
        configs += [
            Configuration(f"{dataset}-resnet110-full", dataset, "resnet110", "one", 3,
                          rows(dataset, "full")),
            Configuration(f"{dataset}-resnet110-no_distill", dataset, "resnet110", "one", 3,
                          rows(dataset, "no_distill"), kl_weight=0.0),
            Configuration(f"{dataset}-resnet110-no_sharing", dataset, "resnet110", "one", 3,
                          rows(dataset, "no_sharing"), shared_stages=0, share_stem=False),
            Configuration(f"{dataset}-resnet110-no_gate", dataset, "resnet110", "one", 3,
                          rows(dataset, "no_gate"), gate=False),
        ]
    return Table("ablation", "ONE's components (paper: component analysis, ResNet-110)",
                 tuple(configs), notes=(
                     "no online distillation: --kl-weight 0; no sharing: --shared-stages 0 "
                     "--no-share-stem (separate branches, gate and distillation kept); no gate: "
                     "uniform 1/m weights.",))


def branches_table(datasets: list[str]) -> Table:
    """m = 1..5 branches with ResNet-32 (m = 1: the plain network on cross-entropy)."""
    configs = []
    for dataset in datasets:
        for m in range(1, 6):
            figures = BRANCHES_CIFAR100_RESNET32[m] if dataset == "cifar100" else {}
            if m == 1:
                configs.append(Configuration(
                    f"{dataset}-resnet32-m1", dataset, "resnet32", "baseline", 1,
                    (Row("ONE (m = 1: baseline)", STUDENT, figures.get(STUDENT)),)))
                continue
            configs.append(Configuration(
                f"{dataset}-resnet32-m{m}", dataset, "resnet32", "one", m,
                (Row(f"ONE (m = {m})", STUDENT, figures.get(STUDENT)),
                 Row(f"ONE-E (m = {m})", ENSEMBLE, figures.get(ENSEMBLE)))))
    return Table("branches", "Number of branches m (paper: branch-number study, ResNet-32)",
                 tuple(configs))


# The okd table's methods: (method, label, m, its trainer flags beyond the okd preset).
OKD_METHODS = (
    ("baseline", "baseline", 1, ()),
    ("dml", "DML", 4, ("--temperature", "2")),  # that code's kd_T for DML
    ("cl_ilr", "CL-ILR", 4, ()),
    ("one", "ONE", 4, ()),  # T = 3, no ramp-up: that code's ONE
    ("okddip", "OKDDip", 4, ("--rampup", "80")),  # that code's 80-epoch ramp-up
)
# The sharing each method's network has (shared stages, gate, shared stem), where not ONE's.
OKD_SHARING = {"dml": (0, False, False), "cl_ilr": (1, False, True),
               "okddip": (2, False, True)}
OKD_NOTES = (
    "Protocol: --preset okd, winycg/MCL-OKD's (m = 4, 300 epochs, batch 128, SGD 0.1 "
    "momentum 0.9 Nesterov, weight decay 5e-4, cosine to 0, crop + flip); the \"paper\" "
    "column holds that repository's README figures, not the ONE paper's.",
    "MCL-OKD (that repository's own method, not run here) for reference: ResNet-32 "
    f"{OKD_CIFAR100_MCL_OKD['resnet32'][0]:.2f} ({OKD_CIFAR100_MCL_OKD['resnet32'][1]:.2f} "
    f"ensemble), ResNet-110 {OKD_CIFAR100_MCL_OKD['resnet110b'][0]:.2f} "
    f"({OKD_CIFAR100_MCL_OKD['resnet110b'][1]:.2f} ensemble).",
    "How each code scores a run. That code's test() runs on the test set after every epoch and "
    "returns the best of its accuracies (max over the branches and the ensemble); the script "
    "keeps the best such value over the epochs (best_acc, its _best checkpoint) and logs every "
    "member's accuracy per epoch; it does not say whether the README's figures are the last "
    "epoch's or the best epoch's. Its \"ensemble\" is, per method: DML the mean of the peers' "
    "logits; CL-ILR the mean of the first m-1 branches' logits (its test loop's leftover "
    "teacher, not all m); ONE the gated logits; OKDDip the sum of all m logits. one_fast "
    "reports the last epoch, the student and the ensemble each, never a test-set-selected "
    "maximum: student = branch 0 (OKDDip: the leader, the last branch), ensemble = ONE-E (the "
    "gated logits), the mean of all m logits (CL-ILR, OKDDip) or of the peers' probabilities "
    "(DML).",
    "OKDDip's --rampup 80 is that code's and is not rescaled by --epochs (the trainer warns "
    "when a run is shorter than its ramp-up).",
)


def okd_table(datasets: list[str]) -> Table:
    """baseline, DML, CL-ILR, ONE and OKDDip under winycg/MCL-OKD's protocol (the okd preset),
    with that repository's README figures carried beside."""
    configs = []
    for dataset in datasets:
        for backbone in ("resnet32", "resnet110b"):
            for method, label, m, extra in OKD_METHODS:
                figure = {output: _paper(dataset, OKD_CIFAR100, (backbone, method, output))
                          for output in (STUDENT, ENSEMBLE)}
                rows = [Row(label, STUDENT, figure[STUDENT],
                            metric=f"branch_{m - 1}" if method == "okddip" else None)]
                if m > 1:
                    rows.append(Row(f"{label} (ensemble)", ENSEMBLE, figure[ENSEMBLE]))
                shared, gate, stem = OKD_SHARING.get(method, (2, True, True))
                configs.append(Configuration(
                    f"{dataset}-{backbone}-{method}", dataset, backbone, method, m, tuple(rows),
                    shared_stages=shared, gate=gate, share_stem=stem, preset="okd",
                    extra=extra))
    return Table("okd", "Online distillation after ONE: baseline, DML, CL-ILR, ONE, OKDDip "
                 "(winycg/MCL-OKD's protocol)", tuple(configs), notes=OKD_NOTES)


# Each table's builder and the datasets it runs by default (the paper's).
TABLES = {
    "main": (main_table, ("cifar10", "cifar100", "svhn")),
    "compare": (compare_table, ("cifar100",)),
    "ensembles": (ensembles_table, ("cifar100",)),
    "ablation": (ablation_table, ("cifar100",)),
    "branches": (branches_table, ("cifar100",)),
    "okd": (okd_table, ("cifar100",)),
}


def build_table(name: str, datasets: list[str] | None = None) -> Table:
    """The table called ``name`` over ``datasets`` (default: the paper's).

    Raises:
        ValueError: an unknown table name.
    """
    if name not in TABLES:
        raise ValueError(f"TABLE must be one of {', '.join(TABLES)}, got {name!r}")
    builder, default = TABLES[name]
    return builder(list(datasets or default))


__all__ = ["ABLATION_CIFAR100_RESNET110", "BACKBONES", "BRANCHES_CIFAR100_RESNET32", "ENSEMBLE",
           "MAIN_CIFAR100", "OKD_CIFAR100", "OKD_CIFAR100_MCL_OKD", "OUTPUT_METRIC", "STUDENT",
           "TABLES", "Configuration", "Row", "Table", "build_table"]
