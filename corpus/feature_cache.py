"""The feature cache on disk: its file names, the metadata contract, writing and memory-mapped reading.

Layout (docs/cache.md): OUT/cache_meta.json, OUT/failed_videos.json, and per split
OUT/{split}/ with video_feats.npy [total_frames, D] fp16, video_offsets.npy [n_videos+1] int64,
video_ids.json, text_feats.npy [n_captions, D] fp16, text_token_feats.npy [total_tokens, D] fp16,
text_token_offsets.npy [n_captions+1] int64, captions.jsonl and the pair lists (*_pairs.csv, named by
the split's annotation format: corpus/annotations.py).
This module is the only place those names are spelled. When a split is complete, the meta
records the sha256 of each of its files; `content_digest` over them names the exact bytes every
later number comes from. A missing, cut or unreadable file is a CacheError naming it.
"""

import csv
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.annotations import FORMATS, pair_lists
from infra.cli import StageError
from infra.file_io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_lines,
    atomic_write_npy,
    atomic_write_npy_blocks,
    atomic_write_npz,
    check_free_space,
    file_sha256,
    remove_stale_temporaries,
)
from infra.records import first_difference

META_NAME = "cache_meta.json"
FAILED_VIDEOS_NAME = "failed_videos.json"
TIMINGS_NAME = "timings.json"  # what extraction cost, per split and set-up: not content, so outside every digest
SETUP = "set-up"  # timings.json's entry for what came before the splits' work, summed over the processes that did any
PARTS_DIR = "parts"
VIDEO_FEATS = "video_feats.npy"
VIDEO_OFFSETS = "video_offsets.npy"
VIDEO_IDS = "video_ids.json"
TEXT_FEATS = "text_feats.npy"
TEXT_TOKEN_FEATS = "text_token_feats.npy"
TEXT_TOKEN_OFFSETS = "text_token_offsets.npy"
CAPTIONS = "captions.jsonl"
VIDEO_FILES = "video_files.json"  # fingerprints of the video files the split was extracted from
CHECKED_NAME = ".checked.json"  # per split: each file's state when its sha256 last matched the meta's (the fast path)
BOOKKEEPING = (TIMINGS_NAME, CHECKED_NAME)  # what runs did with a cache, not what it holds: outside its bytes
SPLIT_FILES = (VIDEO_FEATS, VIDEO_OFFSETS, VIDEO_IDS, TEXT_FEATS, TEXT_TOKEN_FEATS, TEXT_TOKEN_OFFSETS, CAPTIONS)
PAIR_COLUMNS = ("caption_row", "caption_id", "video_row", "video_id", "reversed")


# The contract fields a trained head depends on: what the features mean, not which annotations or
# batch sizes produced them. A head may be evaluated on any cache that agrees on these.
FEATURE_FIELDS = ("backbone", "tokenizer", "preprocessing", "sampling", "storage_dtype")


def feature_contract(meta: dict) -> dict:
    """The FEATURE_FIELDS of a cache's contract (the backbone is known by its weights' sha256, not its path)."""
    return {field: meta["contract"].get(field) for field in FEATURE_FIELDS}


def features_mismatch(trained_on: dict, cache: dict, labels: tuple[str, str]) -> str | None:
    """The first field where two feature contracts differ (see `feature_contract`), or None."""
    return first_difference(trained_on, cache, labels)


class CacheError(StageError):
    """A cache that is missing, incomplete or unreadable; the message names the file and what to run."""


REBUILD = "extract the cache again into a new --out (or run verify.py to see what else is wrong)"


META_DIGEST = "meta_sha256"  # the meta's own digest: a hand edit of any field is refused


def meta_digest(meta: dict) -> str:
    """sha256 over every field of the meta but the digest itself, in a canonical JSON form."""
    content = {key: value for key, value in meta.items() if key != META_DIGEST}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def write_meta(cache_dir: Path, meta: dict) -> dict:
    """Write cache_meta.json with its digest (the only writer of the file); returns what was written."""
    meta = {**{key: value for key, value in meta.items() if key != META_DIGEST}, META_DIGEST: meta_digest(meta)}
    atomic_write_json(Path(cache_dir) / META_NAME, meta)
    return meta


def read_meta(cache_dir: Path) -> dict:
    """The cache's meta, refused unless it is exactly what extract.py wrote (its digest matches)."""
    path = Path(cache_dir) / META_NAME
    if not path.exists():
        raise CacheError(f"{path} not found: is {cache_dir} a feature cache written by extract.py?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheError(f"{path} is not valid JSON ({err}); {REBUILD}") from None
    except OSError as err:
        raise CacheError(f"{path} cannot be read ({err.strerror})") from None
    if not (
        isinstance(meta, dict)
        and isinstance(meta.get("contract"), dict)
        and "counts" in meta
        and "annotations" in meta["contract"]
    ):
        raise CacheError(f"{path} lacks the contract and counts extract.py writes; {REBUILD}")
    if META_DIGEST not in meta:
        raise CacheError(f"{path} has no {META_DIGEST}: it was written by an older extract.py; {REBUILD}")
    if meta[META_DIGEST] != meta_digest(meta):
        raise CacheError(
            f"{path} was changed after extract.py wrote it (its {META_DIGEST} does not match its content): "
            f"every number depends on what it records, so it is refused; restore it, or {REBUILD}"
        )
    return meta


def open_cache_meta(cache_dir: Path, contract: dict, recorded: dict, write: bool) -> dict:
    """The meta of a cache to write: a new one (written when `write`) holding `contract` and the
    `recorded` facts (git commit, CLIP file name, library versions: recorded, never compared), or
    the existing one, which must hold the same contract field for field (else CacheError naming it)."""
    if (Path(cache_dir) / META_NAME).exists():
        meta = read_meta(cache_dir)
        mismatch = first_difference(meta["contract"], contract, ("the cache has", "this run has"))
        if mismatch:
            raise CacheError(
                f"refusing to write into {cache_dir}: its {META_NAME} differs in {mismatch}. "
                "Use a new --out, or delete the old cache."
            )
        return meta
    meta = {"contract": contract, "counts": {}, "complete": False, **recorded}
    return write_meta(cache_dir, meta) if write else meta


def record_timing(cache_dir: Path, split: str, timing: dict) -> None:
    """Add a split's extraction cost ({"seconds", "device", ...}), or the set-up's (SETUP), to the
    cache's timings file."""
    path = Path(cache_dir) / TIMINGS_NAME
    timings = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, {**timings, split: timing})


def read_timings(cache_dir: Path) -> dict:
    path = Path(cache_dir) / TIMINGS_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def split_file_digests(cache_dir: Path, split: str) -> dict[str, str]:
    """{file name: sha256} of every file of a finished split (features, ids, captions, pair lists)."""
    split_dir = Path(cache_dir) / split
    names = [*SPLIT_FILES, VIDEO_FILES, *sorted(path.name for path in split_dir.glob("*_pairs.csv"))]
    return {name: file_sha256(split_dir / name) for name in names}


def storable_rows(features) -> np.ndarray:
    """[n] whether each row of features stays finite stored as the cache stores features (fp16): a
    NaN or Inf, or a value past fp16's range (65504) that storage would make Inf, is not."""
    with np.errstate(over="ignore"):  # the overflow is what is looked for
        return np.isfinite(np.asarray(features, dtype=np.float16)).all(axis=-1)


def video_keys(cache_dir: Path, split: str) -> dict[str, str]:
    """{video_id: a short key of its file's content} for the videos of a split that were read at
    extraction (size and head-and-tail sha256, as video_files.json recorded them): two caches of one
    file give it the same key whatever its name or folder, so training and test videos can be compared."""
    check_split_bytes(cache_dir, split, read_meta(cache_dir))
    recorded = json.loads((Path(cache_dir) / split / VIDEO_FILES).read_text(encoding="utf-8"))
    return {
        video_id: hashlib.sha256(f"{entry['size']}:{entry['head_tail_sha256']}".encode()).hexdigest()[:16]
        for video_id, entry in recorded.items()
        if "head_tail_sha256" in entry
    }


def content_digest(meta: dict) -> str:
    """One sha256 over the contract and every file digest of every finished split: the exact bytes."""
    content = {"contract": meta["contract"], "files": meta.get("files", {})}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def split_format(meta: dict, split: str) -> str:
    """The annotation format (a key of corpus.annotations.FORMATS) a split of the cache was extracted from."""
    entry = meta["contract"]["annotations"].get(split)
    if entry is None:
        raise CacheError(f"the cache holds no split {split!r} (it has {sorted(meta['contract']['annotations'])})")
    return entry["format"]


@dataclass
class CacheSplit:
    """One split of a finished cache, memory-mapped (nothing is read until indexed)."""

    video_feats: np.ndarray  # [total_frames, D] fp16
    video_offsets: np.ndarray  # [n_videos + 1] int64: video v is rows offsets[v]:offsets[v+1]
    video_ids: list
    text_feats: np.ndarray  # [n_captions, D] fp16, pooled at the end-of-text token
    text_token_feats: np.ndarray  # [total_tokens, D] fp16, SOT..EOT of each caption
    text_token_offsets: np.ndarray  # [n_captions + 1] int64
    captions: list  # dicts: caption_id, video_id, direction, kind, text, row
    folder: Path | None = None  # the split's folder
    states: dict = field(default_factory=dict)  # {file name: its `file_state` when its bytes were checked}

    def assert_unchanged(self) -> None:
        """Stop a run whose cache files changed since they were checked (edited, replaced, cut): a
        memory map would read the new bytes, or fault past a cut file's end."""
        for name, state in self.states.items():
            path = self.folder / name
            try:
                now = file_state(path)
            except FileNotFoundError:
                now = None
            if now != state:
                what = "was removed" if now is None else first_difference(state, now, ("it had", "it has"))
                raise CacheError(
                    f"{path} changed while this run was reading it ({what}); the run stops, as numbers from a "
                    "file that changes under them cannot be trusted: rerun when nothing writes into the cache"
                )

    def frames(self, video_row: int) -> np.ndarray:
        return self.video_feats[self.video_offsets[video_row] : self.video_offsets[video_row + 1]]

    def tokens(self, caption_row: int) -> np.ndarray:
        return self.text_token_feats[self.text_token_offsets[caption_row] : self.text_token_offsets[caption_row + 1]]


def file_state(path: Path) -> dict:
    """What changes when a file is edited, replaced or cut: its inode, size, and modification and
    status-change times (the status change cannot be set back by a user)."""
    stat = Path(path).stat()
    return {
        "dev": stat.st_dev,
        "ino": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


CHECKED_IN_PROCESS = {}  # {split folder: what CHECKED_NAME would hold}: the fast path of a read-only cache


def changed_split_files(cache_dir: Path, split: str, meta: dict, trust_checked: bool = True) -> tuple[list, dict, int]:
    """([(name, why)] of the files of a finished split that are missing or whose sha256 is not the
    one the meta recorded, {name: file_state} of the others, bytes hashed). With `trust_checked`, a
    file whose state equals the one CHECKED_NAME recorded when its sha256 last matched is not hashed
    again (the documented fast path: docs/cache.md)."""
    split_dir = Path(cache_dir) / split
    recorded = meta.get("files", {}).get(split) or {}
    checked = {}
    if trust_checked:
        try:
            checked = json.loads((split_dir / CHECKED_NAME).read_text())
        except (OSError, ValueError):
            checked = {}
        checked.update(CHECKED_IN_PROCESS.get(split_dir.resolve(), {}))
    changed, states, hashed = [], {}, 0
    for name, digest in recorded.items():
        path = split_dir / name
        try:
            state = file_state(path)
        except FileNotFoundError:
            changed.append((name, "missing"))
            continue
        if checked.get(name) != {**state, "sha256": digest}:
            hashed += state["size"]
            if file_sha256(path) != digest:
                changed.append((name, f"its sha256 is not the one {META_NAME} records"))
                continue
        states[name] = state
    return changed, states, hashed


def check_split_bytes(cache_dir: Path, split: str, meta: dict) -> dict:
    """Every file of a finished split against the sha256 the meta recorded, before anything is read
    from it: {name: file_state}. Raises CacheError naming the first changed file. States what the
    check cost, once per split and process; records the checked states for the fast path."""
    split_dir = Path(cache_dir) / split
    split_format(meta, split)  # a split the cache does not hold is named as such
    if not meta.get("files", {}).get(split):
        raise CacheError(
            f"{Path(cache_dir) / META_NAME} records no sha256 for the files of split {split!r}, so no byte read from "
            f"them could be checked; {REBUILD}"
        )
    started = time.perf_counter()
    changed, states, hashed = changed_split_files(cache_dir, split, meta)
    if changed:
        name, why = changed[0]
        if why == "missing":
            raise CacheError(f"{split_dir / name} is missing; {REBUILD}")
        raise CacheError(
            f"{split_dir / name}: {why}: the file was changed after extraction, and every number read from it "
            f"would be wrong; {REBUILD}"
        )
    if hashed:
        seconds = time.perf_counter() - started
        print(
            f"checked {split_dir}: {hashed / 1e6:,.1f} MB against {META_NAME}'s sha256 in {seconds:.2f} s "
            f"({hashed / 1e6 / max(seconds, 1e-9):,.0f} MB/s)"
        )
        record = {name: {**state, "sha256": meta["files"][split][name]} for name, state in states.items()}
        CHECKED_IN_PROCESS[split_dir.resolve()] = record
        try:
            atomic_write_json(split_dir / CHECKED_NAME, record)
        except (OSError, StageError):  # a read-only cache: the check runs in full next time
            pass
    return states


def open_split(cache_dir: Path, split: str, check_bytes: bool = True) -> CacheSplit:
    """Memory-map a finished split; every file must be there, readable, consistent with the rest,
    and (`check_bytes`; verify.py checks them itself) the bytes the meta recorded."""
    split_dir = Path(cache_dir) / split
    states = check_split_bytes(cache_dir, split, read_meta(cache_dir)) if check_bytes else {}

    def load(name):
        path = split_dir / name
        try:
            if name.endswith(".npy"):
                return np.load(path, mmap_mode="r")
            text = path.read_text(encoding="utf-8")
            if name.endswith(".json"):
                return json.loads(text)
            # JSON lines end at "\n" only: str.splitlines would also cut a caption at U+2028 and its kin
            return [json.loads(line) for line in text.split("\n") if line]
        except FileNotFoundError:
            raise CacheError(f"{path} is missing; {REBUILD}") from None
        except (ValueError, OSError) as err:  # a cut .npy, bad JSON, a memory map past the end
            raise CacheError(f"{path} is unreadable ({type(err).__name__}: {err}); {REBUILD}") from None

    cache = CacheSplit(*(load(name) for name in SPLIT_FILES), split_dir, states)
    problem = inconsistency(cache)
    if problem:
        raise CacheError(f"{split_dir}: {problem}; {REBUILD}")
    return cache


def inconsistency(cache: CacheSplit) -> str | None:
    """What does not fit together in a split's files, or None."""
    n_videos, n_captions = len(cache.video_ids), len(cache.captions)
    checks = (
        (
            len(cache.video_offsets) == n_videos + 1,
            f"{VIDEO_OFFSETS} has {len(cache.video_offsets)} rows for {n_videos} videos",
        ),
        (
            n_videos == 0 or cache.video_offsets[-1] == len(cache.video_feats),
            f"{VIDEO_OFFSETS} ends at row {cache.video_offsets[-1]}, {VIDEO_FEATS} has {len(cache.video_feats)}",
        ),
        (
            len(cache.text_feats) == n_captions,
            f"{TEXT_FEATS} has {len(cache.text_feats)} rows for {n_captions} captions",
        ),
        (
            len(cache.text_token_offsets) == n_captions + 1,
            f"{TEXT_TOKEN_OFFSETS} has {len(cache.text_token_offsets)} rows for {n_captions} captions",
        ),
        (
            cache.text_token_offsets[-1] == len(cache.text_token_feats),
            f"{TEXT_TOKEN_OFFSETS} ends at row {cache.text_token_offsets[-1]}, {TEXT_TOKEN_FEATS} has "
            f"{len(cache.text_token_feats)}",
        ),
    )
    return next((message for ok, message in checks if not ok), None)


def frames_per_video(cache_dir: Path, split: str) -> np.ndarray:
    """[n_videos] the frames each video of a finished split holds (a CacheError names a split with no video)."""
    cache = open_split(cache_dir, split)
    if not cache.video_ids:
        raise CacheError(
            f"{Path(cache_dir) / split} holds no video: every video of the split failed at extraction "
            f"(see {Path(cache_dir) / FAILED_VIDEOS_NAME}); fix them and extract again"
        )
    return np.diff(cache.video_offsets)


def spread(counts) -> dict:
    """{"min", "median", "max"} of a count per item (frames per video), as a report states them."""
    counts = np.asarray(counts)
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}


def check_split_counts(cache_dir: Path, split: str, counts: dict) -> None:
    """A split the meta calls complete must open, with the video, frame, caption and token counts
    the meta recorded; raises CacheError naming the first file that does not."""
    cache = open_split(cache_dir, split)
    found = {
        "videos": len(cache.video_ids),
        "frames": len(cache.video_feats),
        "captions": len(cache.captions),
        "tokens": len(cache.text_token_feats),
    }
    for key, value in found.items():
        if counts.get(key) != value:
            raise CacheError(
                f"{Path(cache_dir) / split}: the meta records {counts.get(key)} {key}, the files hold "
                f"{value}; {REBUILD}"
            )


def pairs_path(cache_dir: Path, split: str, setting: str) -> Path:
    """Where a split's pair list for `setting` is (its format names the file)."""
    settings = FORMATS[split_format(read_meta(cache_dir), split)].pair_settings(split)
    if setting not in settings:
        raise CacheError(f"{Path(cache_dir) / split} has no {setting!r} pairs (its settings: {', '.join(settings)})")
    return Path(cache_dir) / split / settings[setting].pair_file.format(split=split)


def read_pairs(cache_dir: Path, split: str, setting: str) -> list[dict]:
    """Rows of a split's pair list for `setting`: dicts with int caption_row, video_row, reversed."""
    path = pairs_path(cache_dir, split, setting)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise CacheError(f"{path} is missing; {REBUILD}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CacheError(f"{path} is unreadable ({err}); {REBUILD}") from None
    for row in rows:
        for column in ("caption_row", "video_row", "reversed"):
            row[column] = int(row[column])
    return rows


# Writing: each extraction chunk is a part file under OUT/{split}/parts/; rank 0 merges them.


def video_part_path(cache_dir: Path, split: str, chunk: int) -> Path:
    return Path(cache_dir) / split / PARTS_DIR / f"video_{chunk:06d}.npz"


def text_part_path(cache_dir: Path, split: str, chunk: int) -> Path:
    return Path(cache_dir) / split / PARTS_DIR / f"text_{chunk:06d}.npz"


def write_video_part(path: Path, decoded: list, frame_counts: list[int], frame_feats: np.ndarray) -> None:
    """One chunk's videos (video_frames.DecodedVideo each): their frame features in order, frame
    counts (0 for a failed video), failure reasons ("" for a good one), and the decoder of each
    with why OpenCV fell back to it ("" when it did not)."""
    atomic_write_npz(
        path,
        frame_feats=frame_feats,
        frame_counts=np.array(frame_counts, dtype=np.int64),
        video_ids=np.array([video.video_id for video in decoded]),
        failures=np.array([video.failure or "" for video in decoded]),
        decoders=np.array([video.decoder for video in decoded]),
        fallbacks=np.array([video.fallback or "" for video in decoded]),
    )


def write_text_part(
    path: Path, text_feats: np.ndarray, token_feats: np.ndarray, token_counts: np.ndarray, truncated: np.ndarray
) -> None:
    """One chunk's captions: pooled features, every token's features, tokens per caption, and
    which captions were cut at the context length."""
    atomic_write_npz(
        path,
        text_feats=text_feats,
        token_feats=token_feats,
        token_counts=token_counts.astype(np.int64),
        truncated=truncated.astype(bool),
    )


def merge_split(cache_dir: Path, split: str, annotation_format: str, records: list, captions: list, meta: dict) -> dict:
    """Concatenate a split's parts in chunk order into its final files, record in the meta its
    counts, which decoder decoded which videos, and the sha256 of every file, and remove the
    parts. Returns the updated meta."""
    cache_dir = Path(cache_dir)
    split_dir = cache_dir / split
    parts_dir = split_dir / PARTS_DIR
    remove_stale_temporaries(split_dir)  # a killed merge's half-written files
    video_parts, text_parts = sorted(parts_dir.glob("video_*.npz")), sorted(parts_dir.glob("text_*.npz"))
    check_free_space(split_dir, sum(part.stat().st_size for part in video_parts + text_parts))
    video_ids, frame_counts, failed, decoded_by, fallbacks = [], [], [], {}, []
    for part in video_parts:
        with np.load(part) as data:
            columns = ("video_ids", "frame_counts", "failures", "decoders", "fallbacks")
            for video_id, count, reason, decoder, fallback in zip(*(data[c] for c in columns), strict=True):
                if reason:
                    failed.append({"video_id": str(video_id), "reason": str(reason)})
                    continue
                video_ids.append(str(video_id))
                frame_counts.append(int(count))
                decoded_by[str(decoder)] = decoded_by.get(str(decoder), 0) + 1
                if fallback:
                    fallbacks.append({"video_id": str(video_id), "decoder": str(decoder), "why": str(fallback)})
    expected = [record.video_id for record in records]
    if sorted(video_ids + [f["video_id"] for f in failed]) != sorted(expected):
        raise CacheError(
            f"{parts_dir}: the parts do not cover the split's {len(expected)} videos; delete {parts_dir} and rerun"
        )
    video_offsets = np.concatenate([[0], np.cumsum(frame_counts)]).astype(np.int64)
    concat_parts(video_parts, "frame_feats", split_dir / VIDEO_FEATS, int(video_offsets[-1]))
    atomic_write_npy(split_dir / VIDEO_OFFSETS, video_offsets)
    atomic_write_json(split_dir / VIDEO_IDS, video_ids)

    token_counts = np.concatenate(list(part_arrays(text_parts, "token_counts"))).astype(np.int64)
    if len(token_counts) != len(captions):
        raise CacheError(f"{parts_dir}: text parts hold {len(token_counts)} captions, the split has {len(captions)}")
    truncated = int(sum(part.sum() for part in part_arrays(text_parts, "truncated")))
    token_offsets = np.concatenate([[0], np.cumsum(token_counts)]).astype(np.int64)
    concat_parts(text_parts, "text_feats", split_dir / TEXT_FEATS, len(captions))
    concat_parts(text_parts, "token_feats", split_dir / TEXT_TOKEN_FEATS, int(token_offsets[-1]))
    atomic_write_npy(split_dir / TEXT_TOKEN_OFFSETS, token_offsets)
    atomic_write_lines(
        split_dir / CAPTIONS,
        [
            json.dumps(
                {
                    "caption_id": c.caption_id,
                    "video_id": c.video_id,
                    "direction": c.direction,
                    "kind": c.kind,
                    "text": c.text,
                    "row": row,
                },
                ensure_ascii=False,
                sort_keys=True,
            )
            for row, c in enumerate(captions)
        ],
    )
    video_row_of = {video_id: row for row, video_id in enumerate(video_ids)}
    rules = FORMATS[annotation_format].pair_settings(split)
    for setting, rows in pair_lists(split, annotation_format, captions, video_row_of).items():
        atomic_write_csv(split_dir / rules[setting].pair_file.format(split=split), PAIR_COLUMNS, rows)

    failed_path = cache_dir / FAILED_VIDEOS_NAME
    all_failed = json.loads(failed_path.read_text()) if failed_path.exists() else {}
    all_failed[split] = failed
    atomic_write_json(failed_path, all_failed)
    meta.setdefault("decoded_by", {})[split] = {"videos": decoded_by, "fallbacks": fallbacks}
    meta["counts"][split] = {
        "videos": len(video_ids),
        "failed_videos": len(failed),
        "frames": int(video_offsets[-1]),
        "captions": len(captions),
        "tokens": int(token_offsets[-1]),
        "truncated_captions": truncated,
    }
    meta.setdefault("files", {})[split] = split_file_digests(cache_dir, split)
    meta = write_meta(cache_dir, meta)
    shutil.rmtree(parts_dir)  # the parts, and any half-written chunk a killed run left among them
    return meta


def concat_parts(parts: list[Path], key: str, path: Path, n_rows: int) -> None:
    """Stack array `key` of each part file, in order, into one fp16 .npy of n_rows rows."""
    with np.load(parts[0]) as first:
        dim = first[key].shape[1]
    atomic_write_npy_blocks(path, part_arrays(parts, key), (n_rows, dim), np.float16)


def part_arrays(parts: list[Path], key: str):
    """Array `key` of each part file in order, each file closed once read."""
    for part in parts:
        with np.load(part) as data:
            yield data[key]
