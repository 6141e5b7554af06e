"""Result files: what evaluate.py writes and report.py reads, and the rule that binds them. The
seam between score time (evaluation/, torch) and report time (reporting/, numpy): this module
imports nothing that imports torch.

A result is OUT.json plus the folder OUT/ of its arrays. The arrays: {setting}_scores.npy
[captions, candidates] with {setting}_ids.json naming its rows (caption ids) and columns (video id,
reversed), {setting}_gold.npy, {setting}_{direction}_per_query.npy [queries, 7] (the columns of
PER_QUERY_COLUMNS), binary_{direction}_margins.npy and _sides.npy, order_{change}_margins.npy.
OUT.json holds {setting: {"n_candidates", direction: {R@1, R@5, R@10, MdR, MnR, expected,
optimistic, pessimistic, n_queries, n_tied}, "v2t_per_caption"}, "binary": {direction: {accuracy,
n_pairs, n_tied}}, "order": {change: {share_dropped, mean_margin, n_queries}}, "conventions": {name:
{...}} (with --convention only: evaluation/conventions.py), "provenance": {...}},
and its provenance names each array by its path relative to the JSON's folder and its sha256, and
carries everything a report states (CLIP file and hash, preprocessing, sampling, frames cached and
seen, the training settings, what each stage cost).

The JSON is written after the folder is complete, so a result never points at the arrays of another
run: a later evaluation of the same OUT, or one that died half-way, shows as a digest that does not
match. Every number in the JSON must recompute from its per-query arrays and margins
(`check_numbers`); a hand-edited metric is refused, naming the file and the key.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.conventions import CONVENTIONS, convention_numbers
from evaluation.retrieval_metrics import RECALL_KS, binary_accuracy, metrics_from_per_query
from infra.cli import StageError
from infra.file_io import ForeignFiles, atomic_folder, atomic_write_json, check_replaceable, file_sha256
from infra.records import first_difference, same_number

# Columns of a {setting}_{direction}_per_query.npy array, in order.
PER_QUERY_COLUMNS = (
    "stable_rank",
    "expected_rank",
    "optimistic_rank",
    "pessimistic_rank",
    *(f"expected_recall@{k}" for k in RECALL_KS),
)


# The order-sensitivity changes (evaluation/order_sensitivity.py makes them); the first three are
# permutations of a video's real frames, under which an order-free head may not move.
PERTURBATIONS = ("reversed", "shuffled", "halves_swapped", "repeated_frame")
PERMUTATIONS = ("reversed", "shuffled", "halves_swapped")


def order_summary(margins: np.ndarray) -> dict:
    """The share of queries whose score drops (%) and the mean margin."""
    return {
        "share_dropped": float(100.0 * np.mean(margins > 0)),
        "mean_margin": float(np.mean(margins)),
        "n_queries": int(len(margins)),
    }


class ResultError(StageError):
    """A result file that is not one, or whose numbers its own arrays do not back; names the file."""


def check_result_target(out_path: Path) -> None:
    """Refuse an OUT.json, or an array folder OUT/, that holds something evaluate.py did not write:
    writing the result would replace it."""
    out_path = Path(out_path)
    check_replaceable(out_path.with_suffix(""))
    if out_path.exists():
        try:
            ours = isinstance(json.loads(out_path.read_text(encoding="utf-8"))["provenance"]["arrays"], dict)
        except (OSError, ValueError, KeyError, TypeError):
            ours = False
        if not ours:
            raise ForeignFiles(
                f"{out_path} exists and is not an evaluate.py result: writing the result would replace it; move it, "
                "or choose another --out"
            )


def write_result(out_path: Path, result: dict, arrays: dict) -> None:
    """Write `arrays` ({name: numpy array, or a JSON value}) into the folder OUT/ as one unit, then
    OUT.json: `result` with `provenance.arrays` naming each array's relative path and sha256."""
    out_path = Path(out_path)
    array_dir = out_path.with_suffix("")
    named = {}
    with atomic_folder(array_dir, "evaluate.py") as tmp_dir:
        for name, value in arrays.items():
            if isinstance(value, np.ndarray):
                file = tmp_dir / f"{name}.npy"
                np.save(file, np.ascontiguousarray(value))
            else:
                file = tmp_dir / f"{name}.json"
                file.write_text(json.dumps(value, ensure_ascii=True) + "\n", encoding="utf-8")
            named[name] = {"path": f"{array_dir.name}/{file.name}", "sha256": file_sha256(file)}
    result["provenance"]["arrays"] = named
    atomic_write_json(out_path, result)


@dataclass
class Result:
    path: Path
    data: dict  # the JSON: {setting: {direction: metrics}}, "binary", "order", "provenance"
    per_query: dict = field(default_factory=dict)  # {"setting/direction": {column: [n_queries] array}}
    margins: dict = field(default_factory=dict)  # {direction: Binary margins}
    sides: dict = field(default_factory=dict)  # {direction: [n] 0 forward caption / original video, 1 reverse}
    order: dict = field(default_factory=dict)  # {change: [n_queries] score as cached minus score changed}

    @property
    def provenance(self) -> dict:
        return self.data["provenance"]

    def array_path(self, name: str) -> Path:
        return self.path.parent / self.provenance["arrays"][name]["path"]

    def load_array(self, name: str):
        path = self.array_path(name)
        return np.load(path) if path.suffix == ".npy" else json.loads(path.read_text(encoding="utf-8"))


def file_label(label: str) -> str:
    """A dataset label as part of a file name: "RTime test" -> "RTime_test" (evaluate.py's result
    files and the report's figures both name a dataset this way)."""
    return re.sub(r"[^\w.-]+", "_", label).strip("_")


def seed_averaged(runs: list[Result], key: str, column: str) -> np.ndarray:
    """[n_queries] a per-query column ("expected_rank", ...) of `key` ("hard/t2v") averaged over
    the seeds of a method: their queries are the same, in the same order."""
    return np.mean([run.per_query[key][column] for run in runs], axis=0)


def read_result(path: Path) -> Result:
    """A result file with its per-query arrays and margins, each checked against its recorded
    sha256, and every number checked against them. Raises ResultError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        arrays = data["provenance"]["arrays"]
        if not all(isinstance(entry, dict) and {"path", "sha256"} <= entry.keys() for entry in arrays.values()):
            raise KeyError("arrays")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise ResultError(
            f"{path} is not an evaluate.py result (no provenance naming its arrays by path and sha256); keep only "
            "result files of this version in the results folder, or evaluate again"
        ) from None
    bad = first_non_finite(data)
    if bad:
        raise ResultError(f"{path}: {bad} is not a finite number; no table is made from it")
    result = Result(path, data)
    for name, entry in arrays.items():
        array_path = result.array_path(name)
        if not array_path.is_file():
            raise ResultError(f"{path}: its array {name} ({array_path}) is missing; evaluate again into this --out")
        if file_sha256(array_path) != entry["sha256"]:
            raise ResultError(
                f"{path}: its array {array_path} is not the one it was computed with (sha256 differs): the arrays "
                "were overwritten or changed after it was written; evaluate again into this --out"
            )
    for name in arrays:
        if name.endswith("_per_query"):
            table = result.load_array(name)
            setting, direction = name[: -len("_per_query")].rsplit("_", 1)
            result.per_query[f"{setting}/{direction}"] = {c: table[:, i] for i, c in enumerate(PER_QUERY_COLUMNS)}
        elif name.startswith("order_") and name.endswith("_margins"):
            result.order[name[len("order_") : -len("_margins")]] = result.load_array(name)
        elif name.startswith("binary_") and name.endswith("_margins"):
            result.margins[name[len("binary_") : -len("_margins")]] = result.load_array(name)
        elif name.startswith("binary_") and name.endswith("_sides"):
            result.sides[name[len("binary_") : -len("_sides")]] = result.load_array(name)
    check_numbers(result)
    return result


def check_numbers(result: Result) -> None:
    """Every metric in the JSON must equal its recomputation from the arrays (to rounding)."""
    for key, per_query in result.per_query.items():
        setting, direction = key.split("/")
        recorded = result.data.get(setting, {}).get(direction)
        if recorded is None:
            raise ResultError(f"{result.path}: it has arrays for {key} but no numbers")
        mismatch = recomputed_difference(recorded, metrics_from_per_query(per_query), f"{setting}.{direction}")
        if mismatch:
            raise ResultError(f"{result.path}: {mismatch}, which its per-query arrays do not give; refused")
    for direction, margins in result.margins.items():
        recorded = result.data.get("binary", {}).get(direction)
        mismatch = recomputed_difference(recorded, binary_accuracy(margins), f"binary.{direction}")
        if recorded is None or mismatch:
            raise ResultError(
                f"{result.path}: {mismatch or 'binary ' + direction + ' missing'}, not what its margins give"
            )
    for name, recorded in result.data.get("conventions", {}).items():
        if name not in CONVENTIONS:
            raise ResultError(f"{result.path}: conventions.{name} is not a convention ({', '.join(CONVENTIONS)})")
        recomputed = convention_numbers(name, result.load_array, result.provenance["annotation_format"])
        mismatch = recomputed_difference(recorded, recomputed, f"conventions.{name}")
        if mismatch:
            raise ResultError(f"{result.path}: {mismatch}, not what its score matrices give")
    for change, margins in result.order.items():
        recorded = result.data.get("order", {}).get(change)
        mismatch = recomputed_difference(recorded, order_summary(margins), f"order.{change}")
        if recorded is None or mismatch:
            raise ResultError(f"{result.path}: {mismatch or 'order ' + change + ' missing'}, not what its margins give")


def recomputed_difference(recorded, recomputed, where: str) -> str | None:
    """The first number the file records that its arrays do not give, described, or None."""
    return first_difference(recorded, recomputed, ("the file says", "its arrays give"), same_number, where)


def first_non_finite(value, where="result"):
    """The path of the first NaN or infinite number in a JSON value, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((found for key, child in children if (found := first_non_finite(child, f"{where}.{key}"))), None)
