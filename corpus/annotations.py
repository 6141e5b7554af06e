"""Annotation files -> videos, captions and the pair lists every later stage uses.

Each format is one entry of FORMATS: the files a split is read from, the parser of its records,
the evaluation settings it has (their queries, pair-list file, report title, whether reversals make
Binary, whether they run on request only), and the setting training selects on. Stages and the
report ask the format; they never test a setting's or a format's name. Adding a format is one
parser and one FORMATS entry (docs/adding-a-dataset-format.md). The formats:
- rtime: `{split}.json` as `{video_id: {"forward_captions": [..], "reverse_captions": [..],
  "forward_rewrites": [..], "reverse_rewrites": [..], "reverse": bool, "temporal": ..., "url": ...}}`.
  The reversed video has no file and no id: it is the original's frames in reverse order.
- generic (MSR-VTT / ActivityNet / DiDeMo style): `{split}.json` as `{video_name: {"sentences": [..]}}`,
  optionally with ActivityNet's "timestamps" and "duration" (read past, not used).
- msrvtt-9k, msrvtt-7k: CLIP4Clip's MSR-VTT files as downloaded, `MSRVTT_data.json` with
  `MSRVTT_train.9k.csv` (or `.7k.csv`) and `MSRVTT_JSFUSION_test.csv`: train is the training list
  without the 497 videos MSRVTT_data.json marks "validate", which are valid (CLIP4Clip selects its
  epoch on the test set; we never read test before the end); test is the 1k-A set, one caption per
  video, taken from the CSV. Train and valid videos have every caption MSRVTT_data.json gives them.

A field outside its format's known fields is refused, not ignored: a typo such as
`reverse_rewrite` would otherwise drop captions silently. A video id in two splits is refused
too: it would leak between training and evaluation.

A pair links a caption to a video row; `reversed=1` means "the flipped frames of that row".
"""

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clip_vendor.tokenizer import reads_as_blank
from infra.cli import StageError
from infra.file_io import file_sha256

RTIME_CAPTION_FIELDS = {  # field -> (direction, kind)
    "forward_captions": ("forward", "human"),
    "reverse_captions": ("reverse", "human"),
    "forward_rewrites": ("forward", "rewrite"),
    "reverse_rewrites": ("reverse", "rewrite"),
}
RTIME_FIELDS = frozenset({*RTIME_CAPTION_FIELDS, "reverse", "temporal", "url"})
GENERIC_FIELDS = frozenset({"sentences", "timestamps", "duration"})
MSRVTT_DATA, MSRVTT_TEST = "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"
SPLITS = ("train", "valid", "test")


class AnnotationError(StageError, ValueError):
    """A malformed annotation file; the message names the file and the record."""


@dataclass(frozen=True)
class Caption:
    caption_id: str  # "{video_id}#{direction}#{kind}#{index}"
    video_id: str
    direction: str  # "forward" (describes the file as it plays) or "reverse" (its time reversal)
    kind: str  # "human" or "rewrite" (RTime's generated paraphrases)
    text: str


def make_caption(video_id: str, direction: str, kind: str, index: int, text: str) -> Caption:
    """The `index`-th caption of its (direction, kind) in the video's record, with its id."""
    return Caption(f"{video_id}#{direction}#{kind}#{index}", video_id, direction, kind, text)


def caption_position(caption_id: str) -> tuple[str, str, int]:
    """(direction, kind, index) of a caption id made by `make_caption` (a video id may hold '#')."""
    _, direction, kind, index = caption_id.rsplit("#", 3)
    return direction, kind, int(index)


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    has_reverse: bool  # RTime: the reversed video is a valid sample with its own captions
    captions: tuple  # of Caption, in file order: forward human, reverse human, rewrites


def reject_duplicate_keys(path):
    def build(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise AnnotationError(f"{path}: duplicate id {key!r}")
            seen.add(key)
        return dict(pairs)

    return build


def read_annotation_file(path: Path) -> dict:
    """Parse one file into an ordered {video_id: record dict}, rejecting duplicate ids."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=reject_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start : err.start + 1]!r}); JSON annotation "
            "files must be UTF-8: convert it (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except OSError as err:
        raise AnnotationError(f"{path}: cannot be read ({err.strerror})") from None
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected a non-empty JSON object keyed by video id")
    return data


def string_list(path, video_id, record, field, required, allow_empty):
    if field not in record:
        if required:
            raise AnnotationError(f"{path}: record {video_id!r} is missing field {field!r}")
        return []
    value = record[field]
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise AnnotationError(f"{path}: record {video_id!r} field {field!r} must be a list of strings")
    if not value and not allow_empty:
        raise AnnotationError(f"{path}: record {video_id!r} field {field!r} is empty")
    return value


def check_no_unknown_fields(path, video_id, record, known):
    unknown = sorted(set(record) - known)
    if unknown:
        raise AnnotationError(
            f"{path}: record {video_id!r} has an unknown field {unknown[0]!r} (its records know "
            f"{', '.join(sorted(known))}); a misspelt field would drop its captions"
        )


def parse_rtime_record(path, video_id, record):
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: record {video_id!r} must be an object")
    if "reverse" not in record:
        raise AnnotationError(f"{path}: record {video_id!r} is missing field 'reverse'")
    if not isinstance(record["reverse"], bool):
        raise AnnotationError(f"{path}: record {video_id!r} field 'reverse' must be true or false")
    has_reverse = record["reverse"]
    captions = []
    for field, (direction, kind) in RTIME_CAPTION_FIELDS.items():
        required = field == "forward_captions" or (field == "reverse_captions" and has_reverse)
        texts = string_list(path, video_id, record, field, required, allow_empty=not required)
        if direction == "reverse" and not has_reverse:
            continue  # the reversed video is not a valid sample: its captions describe nothing we use
        captions += [make_caption(video_id, direction, kind, i, text) for i, text in enumerate(texts)]
    check_no_unknown_fields(path, video_id, record, RTIME_FIELDS)
    return VideoRecord(video_id, has_reverse, tuple(captions))


def parse_generic_record(path, video_id, record):
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: record {video_id!r} must be an object")
    texts = string_list(path, video_id, record, "sentences", required=True, allow_empty=False)
    check_no_unknown_fields(path, video_id, record, GENERIC_FIELDS)
    captions = tuple(make_caption(video_id, "forward", "human", i, text) for i, text in enumerate(texts))
    return VideoRecord(video_id, False, captions)


def json_split(parse_record: Callable) -> Callable[[Path, str], list[VideoRecord]]:
    """The reader of a format whose split is one JSON file, `{split}.json`, keyed by video id."""

    def read(folder: Path, split: str) -> list[VideoRecord]:
        path = Path(folder) / f"{split}.json"
        return [parse_record(path, video_id, record) for video_id, record in read_annotation_file(path).items()]

    return read


def msrvtt_split(train_list: str) -> Callable[[Path, str], list[VideoRecord]]:
    """The reader of CLIP4Clip's MSR-VTT files with the training list `train_list` (see the module
    docstring for which videos and captions each split gets)."""

    def read(folder: Path, split: str) -> list[VideoRecord]:
        folder = Path(folder)
        if split == "test":
            rows = read_csv(folder / MSRVTT_TEST, ("video_id", "sentence"))
            return [
                VideoRecord(
                    row["video_id"], False, (make_caption(row["video_id"], "forward", "human", 0, row["sentence"]),)
                )
                for row in unique_videos(folder / MSRVTT_TEST, rows)
            ]
        captions, validate = read_msrvtt_data(folder / MSRVTT_DATA)
        listed = [
            row["video_id"] for row in unique_videos(folder / train_list, read_csv(folder / train_list, ("video_id",)))
        ]
        missing = next((video_id for video_id in listed if video_id not in captions), None)
        if missing:
            raise AnnotationError(f"{folder / train_list}: video {missing!r} has no caption in {folder / MSRVTT_DATA}")
        chosen = [video_id for video_id in listed if (video_id in validate) == (split == "valid")]
        return [
            VideoRecord(
                video_id,
                False,
                tuple(make_caption(video_id, "forward", "human", i, text) for i, text in enumerate(captions[video_id])),
            )
            for video_id in chosen
        ]

    return read


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV file with a header naming at least `columns`; every one of them non-empty."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AnnotationError(f"{path}: cannot be read as a UTF-8 CSV file ({err})") from None
    missing = [column for column in columns if column not in header]
    if missing:
        raise AnnotationError(f"{path}: no column {missing[0]!r} (its header: {', '.join(header) or 'empty'})")
    for line, row in enumerate(rows, start=2):
        empty = next((column for column in columns if not (row[column] or "").strip()), None)
        if empty:
            raise AnnotationError(f"{path}: line {line} has no {empty}")
    if not rows:
        raise AnnotationError(f"{path}: no rows")
    return rows


def unique_videos(path: Path, rows: list[dict]) -> list[dict]:
    seen = set()
    for line, row in enumerate(rows, start=2):
        if row["video_id"] in seen:
            raise AnnotationError(f"{path}: line {line}: video {row['video_id']!r} is listed twice")
        seen.add(row["video_id"])
    return rows


def read_msrvtt_data(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    """({video_id: its captions in file order}, the ids of the videos marked "validate")."""
    data = read_annotation_file(path)
    if not (isinstance(data.get("videos"), list) and isinstance(data.get("sentences"), list)):
        raise AnnotationError(f"{path}: expected MSR-VTT's {{'videos': [...], 'sentences': [...]}}")
    captions = {}
    for index, sentence in enumerate(data["sentences"]):
        if not (isinstance(sentence, dict) and isinstance(sentence.get("video_id"), str)):
            raise AnnotationError(f"{path}: sentences[{index}] has no video_id")
        text = sentence.get("caption")
        if not isinstance(text, str):
            raise AnnotationError(f"{path}: sentences[{index}] (video {sentence['video_id']!r}) has no caption text")
        captions.setdefault(sentence["video_id"], []).append(text)
    validate = {
        video["video_id"] for video in data["videos"] if isinstance(video, dict) and video.get("split") == "validate"
    }
    return captions, validate


def as_paragraph(record: VideoRecord) -> VideoRecord:
    text = " ".join(caption.text for caption in record.captions)
    paragraph = make_caption(record.video_id, "forward", "human", 0, text)
    return VideoRecord(record.video_id, False, (paragraph,))


def check_disjoint_splits(splits: dict[str, tuple[Path, list[VideoRecord]]]) -> None:
    """Refuse a video id that appears in two splits' files (a train/test leak), naming both files."""
    first_file = {}
    for path, records in splits.values():
        for record in records:
            if record.video_id in first_file:
                raise AnnotationError(
                    f"video id {record.video_id!r} is in both {first_file[record.video_id]} and "
                    f"{path}: a video must belong to one split"
                )
            first_file[record.video_id] = path


def split_captions(records: list[VideoRecord]) -> list[Caption]:
    """Every caption of every record, in record order: the row order of the cached text features."""
    return [caption for record in records for caption in record.captions]


def pair_rows(captions: list[Caption], video_row_of: dict[str, int], include: Callable[[Caption], bool]) -> list[tuple]:
    """(caption_row, caption_id, video_row, video_id, reversed) for each caption that `include`
    keeps and whose video was extracted (`video_row_of` lacks failed videos)."""
    rows = []
    for caption_row, caption in enumerate(captions):
        if caption.video_id not in video_row_of or not include(caption):
            continue
        reversed_video = int(caption.direction == "reverse")
        rows.append((caption_row, caption.caption_id, video_row_of[caption.video_id], caption.video_id, reversed_video))
    return rows


def every_caption(caption: Caption) -> bool:
    return True


def is_human(caption: Caption) -> bool:
    return caption.kind == "human"


def is_forward_human(caption: Caption) -> bool:
    return caption.kind == "human" and caption.direction == "forward"


def is_rewrite(caption: Caption) -> bool:
    return caption.kind == "rewrite"


@dataclass(frozen=True)
class SettingRule:
    """One evaluation setting: its queries are the captions `queries` keeps, its candidates their videos."""

    queries: Callable[[Caption], bool]
    pair_file: str  # the pair list's file name in the split's folder, "{split}" filled in
    title: str  # the report's title for its tables
    binary: bool = False  # originals and their reversals are both candidates: Binary and the direction split
    on_request: bool = False  # evaluated with evaluate.py --rewrites only
    paraphrases_of: str | None = None  # its queries paraphrase those of that setting, against the same candidates


@dataclass(frozen=True)
class Format:
    sources: Callable[[Path, str], list[Path]]  # the files a split is read from, in the annotation folder
    read: Callable[[Path, str], list[VideoRecord]]  # those files -> the split's records, in file order
    settings: dict[str, SettingRule]  # in the order the report shows them
    selection: str  # the setting training selects its best epoch on, and the one order sensitivity reads
    reversals: bool = False  # a video's time reversal is a sample with captions of its own
    dataset_name: str | None = None  # what reports call the dataset (None: the annotation folder's name)
    paragraphs: bool = False  # extract.py --paragraphs may join a video's sentences into one caption
    reversal_contrast: tuple[str, str] | None = None  # (a setting, the same queries with reversals as candidates)

    def pair_settings(self, split: str) -> dict[str, SettingRule]:
        """The pair lists a split has: every caption for training, else the format's settings."""
        return {"train": TRAIN_PAIRS} if split == "train" else self.settings


def json_file(folder: Path, split: str) -> list[Path]:
    return [Path(folder) / f"{split}.json"]


def msrvtt_files(train_list: str) -> Callable[[Path, str], list[Path]]:
    def sources(folder: Path, split: str) -> list[Path]:
        names = [MSRVTT_TEST] if split == "test" else [MSRVTT_DATA, train_list]
        return [Path(folder) / name for name in names]

    return sources


def msrvtt_format(train_list: str) -> Format:
    """CLIP4Clip's MSR-VTT files with the training list `train_list`: one setting, all captions."""
    return Format(msrvtt_files(train_list), msrvtt_split(train_list), ALL_CAPTIONS, "all", dataset_name="MSR-VTT")


TRAIN_PAIRS = SettingRule(every_caption, "{split}_pairs.csv", "training pairs")  # the train split's one list
ALL_CAPTIONS = {"all": SettingRule(is_human, "{split}_pairs.csv", "Retrieval, all captions")}
FORMATS = {
    "rtime": Format(
        json_file,
        json_split(parse_rtime_record),
        {
            "origin": SettingRule(is_forward_human, "{split}_origin_pairs.csv", "Table A: RTime-Origin"),
            "hard": SettingRule(is_human, "{split}_pairs.csv", "Table B: RTime-Hard", binary=True),
            "rewrites": SettingRule(
                is_rewrite,
                "{split}_rewrite_pairs.csv",
                "Hard, rewritten queries",
                on_request=True,
                paraphrases_of="hard",
            ),
        },
        selection="hard",
        reversals=True,
        dataset_name="RTime",
        reversal_contrast=("origin", "hard"),
    ),
    "generic": Format(json_file, json_split(parse_generic_record), ALL_CAPTIONS, selection="all", paragraphs=True),
    "msrvtt-9k": msrvtt_format("MSRVTT_train.9k.csv"),
    "msrvtt-7k": msrvtt_format("MSRVTT_train.7k.csv"),
}


def detect_format(folder: Path, split: str) -> str:
    """The format of a split's files: MSR-VTT's by their names (its 9k list before its 7k one),
    else a JSON file's by its first record's fields."""
    folder = Path(folder)
    for name in ("msrvtt-9k", "msrvtt-7k"):
        if all(path.exists() for path in FORMATS[name].sources(folder, split)):
            return name
    path = folder / f"{split}.json"
    data = read_annotation_file(path)
    first_id, first = next(iter(data.items()))
    if isinstance(first, dict) and first.keys() & {*RTIME_CAPTION_FIELDS, "reverse"}:
        return "rtime"
    if isinstance(first, dict) and "sentences" in first:
        return "generic"
    raise AnnotationError(
        f"{path}: record {first_id!r} has neither 'forward_captions' (RTime) "
        "nor 'sentences' (generic); cannot tell the format"
    )


def present_splits(folder: Path) -> list[str]:
    """The splits whose files are in the folder, in train, valid, test order."""
    return [
        split
        for split in SPLITS
        if (Path(folder) / f"{split}.json").exists()
        or any(all(p.exists() for p in FORMATS[name].sources(folder, split)) for name in ("msrvtt-9k", "msrvtt-7k"))
    ]


def load_split(
    folder: Path, split: str, annotation_format: str = "auto", paragraphs: bool = False
) -> tuple[str, list[VideoRecord]]:
    """Read a split from an annotation folder -> (format, [VideoRecord] in file order). With
    `paragraphs` (formats that allow it: ActivityNet, DiDeMo), each video's sentences, joined with
    spaces in file order, are its one caption: video-paragraph retrieval, as CLIP4Clip and AdaCLIP
    evaluate those sets."""
    if annotation_format == "auto":
        annotation_format = detect_format(folder, split)
    annotation = FORMATS[annotation_format]
    if paragraphs and not annotation.paragraphs:
        raise AnnotationError(
            f"{annotation.sources(folder, split)[0]}: --paragraphs joins a generic file's sentences; "
            f"this split is {annotation_format}"
        )
    records = annotation.read(folder, split)
    check_captions_have_words(annotation.sources(folder, split), records)
    return annotation_format, [as_paragraph(record) for record in records] if paragraphs else records


def check_captions_have_words(sources: list[Path], records: list[VideoRecord]) -> None:
    """Refuse a caption that CLIP's text cleaning leaves blank (white space, `&nbsp;`): it would be
    embedded as an empty query, the same vector for every such caption. Every format's one check."""
    for record in records:
        for caption in record.captions:
            if reads_as_blank(caption.text):
                direction, kind, index = caption_position(caption.caption_id)
                raise AnnotationError(
                    f"{' + '.join(str(path) for path in sources)}: record {record.video_id!r}, {direction} {kind} "
                    f"caption {index} ({caption.text!r}), holds no word once CLIP's text cleaning has run (entities "
                    "unescaped, white space removed): it would be embedded as an empty query"
                )


def sources_entry(folder: Path, split: str, annotation_format: str) -> dict:
    """What a cache's contract records of a split's annotation files: their names and one sha256."""
    paths = FORMATS[annotation_format].sources(folder, split)
    return {"file": " + ".join(path.name for path in paths), "sha256": sources_digest(paths)}


def sources_digest(paths: list[Path]) -> str:
    """A file's sha256, or for several one sha256 over their names and digests."""
    if len(paths) == 1:
        return file_sha256(paths[0])
    listing = "".join(f"{path.name} {file_sha256(path)}\n" for path in paths)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def recorded_sources(folder: Path, entry: dict) -> list[Path]:
    """The files a contract's annotation entry names (see `sources_entry`)."""
    return [Path(folder) / name for name in entry["file"].split(" + ")]


def pair_lists(split: str, annotation_format: str, captions: list[Caption], video_row_of: dict[str, int]) -> dict:
    """The pair lists of a split, {setting: rows}."""
    return {
        setting: pair_rows(captions, video_row_of, rule.queries)
        for setting, rule in FORMATS[annotation_format].pair_settings(split).items()
    }
