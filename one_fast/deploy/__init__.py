"""After training: a member or the ensemble as a plain module, exported files, their inputs.

    student = extract_branch(model, 0)            # plain m = 1 network: images -> logits (N, C)
    ensemble = extract_ensemble(model, "one")     # ONE-E: gated logits (N, C)
    export_module(student, "pt2", "student.pt2", meta, example)
    deployed = load_exported("student.pt2")       # .run(x), .inputs (size, mean, std, names)

The commands ``python -m one_fast.export`` and ``python -m one_fast.predict`` compose these.
"""

from .extract import PlainNetwork, built_from, extract_branch, extract_ensemble, plain_network
from .formats import (
    FORMATS,
    ExportedModel,
    ExportError,
    export_module,
    load_exported,
    load_exported_bytes,
    verify,
)
from .inputs import (
    InputSpec,
    class_names,
    input_spec,
    loader_input_spec,
    read_input_spec,
    read_inputs,
    save_input_spec,
)
from .release import describe, parse_member, select

__all__ = [
    "FORMATS", "ExportError", "ExportedModel", "InputSpec", "PlainNetwork", "built_from",
    "class_names",
    "describe", "export_module", "extract_branch", "extract_ensemble", "input_spec",
    "load_exported", "load_exported_bytes", "loader_input_spec", "parse_member",
    "plain_network", "read_input_spec", "read_inputs", "save_input_spec", "select", "verify",
]
