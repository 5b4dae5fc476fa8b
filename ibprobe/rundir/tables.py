"""The run folder's tables: one CSV dialect, and the schema of every table ibprobe writes.

Dialect: a header, then one line per row (`\\n`); an empty cell is no value; a float is written to 10 significant
digits (`inf`, `nan` as such), an int as an int, anything else as its text. Reading types each cell by the table's
schema: its int, bool and text columns, every other column a float; an empty cell reads as None. A cell that is
not what its column holds is a DataError naming the file.

Schemas name their columns in order; a schema without columns (`columns=None`) takes them from the rows, in
first-seen order (the lens tables, whose eigenvalue and norm columns depend on the request).

Checkpoints: every table that has a row per checkpoint orders them by `step`, the integer optimizer step at which
the checkpoint was taken (0 = the initialisation), and gives its fractional `epoch` (step / steps per epoch) beside
it. A foreign checkpoint that holds no step is keyed by its epoch number, so there step and epoch are that number.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ibprobe.errors import DataError
from ibprobe.rundir.files import atomic_write_text


@dataclass(frozen=True)
class Schema:
    """One table: its file name (analysis/<name>.csv), columns, and which columns hold ints, bools and text."""

    name: str
    columns: tuple[str, ...] | None
    ints: frozenset = frozenset()
    bools: frozenset = frozenset()
    texts: frozenset = frozenset()

    def kind(self, column: str) -> str:
        return ("int" if column in self.ints else "bool" if column in self.bools else
                "text" if column in self.texts else "float")


def _schema(name: str, columns: Sequence[str] | None, *, ints: Iterable[str] = (), bools: Iterable[str] = (),
            texts: Iterable[str] = ()) -> Schema:
    return Schema(name, None if columns is None else tuple(columns), frozenset(ints), frozenset(bools),
                  frozenset(texts))


MI = _schema("mi", [
    "step", "epoch", "checkpoint", "layer", "i_xh_bits", "i_xh_ci_low", "i_xh_ci_high", "i_xh_seed_sd", "i_xh_raw_bits",
    "i_xh_from", "h_x_bits", "h_x_ref", "h_x_plain_bits", "h_x_given_h_bits", "bits_per_dim", "i_yh_bits", "n_test",
    "seeds", "decoder_data", "decoder", "checks", "status", "error"],
    ints={"step", "n_test", "seeds"},
    texts={"checkpoint", "layer", "i_xh_from", "h_x_ref", "decoder_data", "decoder", "checks", "status", "error"})
# kind: "step" (a layer between consecutive checkpoints), "layer" (adjacent layers at one checkpoint), "rise" and
# "fall" (a layer from its first checkpoint to its peak, from its peak to its last: the stages of phases.csv)
CHANGES = _schema("changes", ["kind", "layer", "step", "epoch", "layer_to", "step_to", "epoch_to", "delta_bits",
                              "ci_low", "ci_high", "p_value", "p_holm", "significant", "comparisons", "n_test",
                              "seeds"],
                  ints={"step", "step_to", "n_test", "seeds", "comparisons"}, bools={"significant"},
                  texts={"kind", "layer", "layer_to"})
# one row per (regime, layer): step, epoch and i_xh_bits of its peak (the checkpoint of the largest Î(X;H)), and the
# two stages around it with their paired CIs and Holm-corrected significance (ibprobe.measure.phases)
PHASES = _schema("phases", ["regime", "layer", "step", "epoch", "i_xh_bits", "first_step", "first_epoch",
                            "last_step", "last_epoch", "rise_bits", "rise_ci_low", "rise_ci_high", "rise_p_holm",
                            "rise_significant", "fall_bits", "fall_ci_low", "fall_ci_high", "fall_p_holm",
                            "fall_significant", "comparisons", "checkpoints", "n_test", "seeds"],
                 ints={"step", "first_step", "last_step", "comparisons", "checkpoints", "n_test", "seeds"},
                 bools={"rise_significant", "fall_significant"}, texts={"regime", "layer"})
BASELINES = _schema("baselines", ["step", "epoch", "layer", "estimator", "bins", "noise_var", "i_xh_bits",
                                  "i_yh_bits", "n", "dims", "act_min", "act_max", "status", "error"],
                    ints={"step", "bins", "n", "dims"}, texts={"layer", "estimator", "status", "error"})
SENSITIVITY = _schema("binning_sensitivity", ["step", "epoch", "layer", "bins", "i_xh_bits", "i_yh_bits", "n", "dims",
                                              "ceiling_bits"],
                      ints={"step", "bins", "n", "dims"}, texts={"layer"})
KID = _schema("kid", ["step", "epoch", "layer", "reference", "kid_mean", "kid_std", "kid_sem", "subsets",
                      "subset_size", "n_real", "n_fake", "features"],
              ints={"step", "subsets", "subset_size", "n_real", "n_fake"}, texts={"layer", "reference", "features"})
HESSIAN = _schema("hessian", None, ints={"step", "k", "n_images"}, texts={"method", "checkpoint"})
HESSIAN_LINEAR = _schema("hessian_linear", None, ints={"shortcut_depth", "depth", "n_params", "n_zero", "n_negative"},
                         texts={"init"})
COMPLEXITY_LAYERS = _schema("complexity_layers", None, ints={"step"}, bools={"bn_folded"},
                            texts={"layer", "role", "unit", "in_shape", "kind"})
COMPLEXITY = _schema("complexity", None, ints={"step", "n_layers", "n_units", "n_images"}, texts={"run"})
# figures/estimators.csv: the mi.csv rows (estimator "decoder") and the baselines.csv rows that figure draws
ESTIMATOR_PLANES = Schema("estimators", tuple(dict.fromkeys(("estimator", *MI.columns, *BASELINES.columns))),
                          MI.ints | BASELINES.ints, frozenset(), MI.texts | BASELINES.texts)
# What a figure was drawn from when it is none of the tables above (metrics.jsonl rows): numbers where the cell is
# one, text otherwise.
FIGURE = _schema("figure", None)

# figures/info_plane_regimes.csv: the mi.csv rows of every regime of a preset, each with its regime
PLANE_REGIMES = Schema("info_plane_regimes", ("regime", *MI.columns), MI.ints, frozenset(), MI.texts | {"regime"})

SCHEMAS = {s.name: s for s in (MI, CHANGES, PHASES, BASELINES, SENSITIVITY, KID, HESSIAN, HESSIAN_LINEAR,
                               COMPLEXITY_LAYERS, COMPLEXITY, ESTIMATOR_PLANES, PLANE_REGIMES)}
SCHEMAS.update(info_plane=MI, mi_vs_epoch=MI)  # the figures drawn from mi.csv rows


def cell(value: Any) -> str:
    """One value as the dialect writes it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}" if math.isfinite(value) else str(value)
    return str(value)


def table_text(rows: Sequence[dict], schema: Schema = FIGURE) -> str:
    """The CSV text of `rows` in the dialect: the schema's columns (others ignored), or the rows' own."""
    columns = list(schema.columns) if schema.columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: cell(r.get(k)) for k in columns})
    return buf.getvalue()


def write_table(path: str | os.PathLike, rows: Sequence[dict], schema: Schema = FIGURE) -> Path:
    """Write `rows` as a table of `schema`, atomically; returns the path."""
    return atomic_write_text(path, table_text(rows, schema))


def _typed(schema: Schema, column: str, text: str | None, path: Path) -> Any:
    if text is None or text.strip() == "":
        return None
    t = text.strip()
    kind = schema.kind(column)
    if kind == "text":
        return t
    if kind == "bool":
        if t in ("True", "False"):
            return t == "True"
        raise DataError(f"{path}: column {column!r} holds {t!r}, not True or False")
    try:
        if schema is FIGURE:  # no schema: an integer where the cell is one, else a float
            return int(t) if t.lstrip("-").isdigit() else float(t)
        return int(float(t)) if kind == "int" else float(t)
    except ValueError:
        if schema is FIGURE or (schema.columns is not None and column not in schema.columns):
            return t  # a figure's own text, or a column this version does not know
        raise DataError(f"{path}: column {column!r} holds {t!r}, not {'an integer' if kind == 'int' else 'a number'}"
                        ) from None


def read_table(path: str | os.PathLike, schema: Schema | None = None) -> list[dict]:
    """The rows of a table of `schema` (default: the schema named by the file, e.g. mi.csv -> MI), typed; a missing
    file or one without the schema's key columns is a DataError. A `status` column absent from an older file reads as
    "ok".

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "mi.csv"
    >>> _ = write_table(path, [{"step": 150, "epoch": 6.5, "layer": "layer1", "i_xh_bits": 12.5, "status": "ok"}], MI)
    >>> row = read_table(path)[0]
    >>> row["step"], row["epoch"], row["layer"], row["i_xh_bits"], row["i_yh_bits"]
    (150, 6.5, 'layer1', 12.5, None)
    """
    path = Path(path)
    schema = schema or SCHEMAS.get(path.stem, FIGURE)
    if not path.is_file():
        raise DataError(f"{path} not found; run `ibprobe run` or `ibprobe analyze` first")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = [c for c in ("step", "layer") if schema.columns is None or c in schema.columns][:2] \
            if schema.columns is not None else []
        if reader.fieldnames and "step" in need and "step" not in reader.fieldnames and "epoch" in reader.fieldnames:
            raise DataError(f"{path} keys its checkpoints by epoch (an older ibprobe's table); re-analyse the run into "
                            f"a new --out folder")
        if not reader.fieldnames or any(c not in reader.fieldnames for c in need):
            raise DataError(f"{path} is not a {schema.name} table (needs the columns {', '.join(need) or 'a header'})")
        rows = [{k: _typed(schema, k, v, path) for k, v in r.items() if k is not None} for r in reader]
    if schema.columns is not None and "status" in schema.columns:
        for r in rows:
            if r.get("status") is None:
                r["status"] = "ok"
    return rows


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Read metrics.jsonl, one JSON object per line; a truncated last line is skipped, other damage is a DataError."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = {} if i == len(lines) - 1 else None  # the last line may be cut by a killed writer
        if not isinstance(row, dict):
            raise DataError(f"{path} line {i + 1} is not a JSON object; rerun `ibprobe train --out "
                            f"{Path(path).parent}` to rewrite it from the run's checkpoints")
        if row:
            rows.append(row)
    return rows
