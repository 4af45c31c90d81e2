"""Run assembly: from a config to a network, method and loaders; the training run; run folders;
reading a finished (or interrupted) run back.

* :mod:`.assembly` -- config -> network, method, dataset, precision, kd teacher, costs;
* :mod:`.trainer` -- :func:`run`, one training run into one folder;
* :mod:`.runtime` -- the config's "auto" choices resolved for this machine;
* :mod:`.resume` -- a resumed run's config;
* :mod:`.folder` -- one run per folder: refuse to mix runs, replace atomically;
* :mod:`.provenance` -- ``run.json``: where a run came from; :mod:`.start` -- what an
  invocation continues (``--resume``, a torchrun restart), written when it starts and ends;
* :mod:`.status` -- :func:`classify_run`: missing, partial, finished, stale or failed, against
  the config a folder is meant to hold;
* :mod:`.loading` -- :func:`load_run`, the one way a run folder is read (evaluate, export,
  predict, analyze) and :func:`eval_loader`, a split batched as the trainer evaluated it;
  :mod:`.analysed` adds what the analyses need.
"""

from .analysed import AnalysedRun, load_analysed_run
from .loading import LoadedRun, eval_loader, load_run
from .status import RunState, classify_run

__all__ = ["AnalysedRun", "LoadedRun", "RunState", "classify_run", "eval_loader",
           "load_analysed_run", "load_run"]
