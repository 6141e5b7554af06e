"""Search a cache's videos with a head and free text: our CLIP encodes the query, the head ranks the videos.

    python search.py --cache OUT --ckpt runs/seqTransf_seed0/best.pt --clip ViT-B-32.pt "a man puts a cup down"
    python search.py --cache OUT --head meanP --clip ViT-B-32.pt --queries queries.txt --top-k 10
    python search.py --cache OUT --split test --reversals ...   (RTime: the reversals are candidates too)

The text goes through the same CLIP the cache was extracted with (by sha256), the same tokenizer
settings and precision, and is stored as the cache stores captions (fp16), so a query equal to a
cached caption scores as that caption does. A checkpoint searches only a cache of the features it
was trained on (the one rule of heads/checkpoints.py). A query-independent head (one whose
`indexable` says so: meanP, seqTransf, seqLSTM, mlpScore) embeds the videos once into an index,
saved beside the checkpoint (INDEX/index.npy, the unit video vectors, and INDEX/ids.json; plus
INDEX/index.faiss, an inner-product index, when faiss is installed) and reused while the
checkpoint and the cache are the same; a cross-encoder (tightTransf) has no index: it scores every
video for every query. Exit codes: infra/cli.py.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import backbones
import clip_vendor
from clip_vendor.tokenizer import reads_as_blank
from corpus.feature_cache import content_digest, frames_per_video, open_split, read_meta
from evaluation.scoring import Setting, candidate_index
from heads.architectures import ZERO_SHOT_HEADS
from heads.checkpoints import head_for_cache, load_checkpoint
from heads.loaded_split import frames_to_use, load_split_tensors, padded_tokens
from infra import cli
from infra.cli import HelpFormatter, StageError, whole_number
from infra.file_io import OutOfSpace, atomic_folder, file_sha256
from infra.runtime import fix_cpu_threads, resolve_device

try:  # optional: a faiss index of the video vectors, for search outside this script
    import faiss
except ImportError:
    faiss = None

INDEX_KEY = "key.json"  # what the index was built for, and the sha256 of its files
INDEX_FILES = ("index.npy", "ids.json")

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("queries", nargs="*", help="texts to search for")
parser.add_argument(
    "--queries", dest="queries_file", type=Path, help="a file of queries, one per line (# starts a comment line)"
)
parser.add_argument("--cache", required=True, type=Path, help="feature cache written by extract.py")
parser.add_argument("--split", default="test", help="the split whose videos are searched")
source = parser.add_mutually_exclusive_group(required=True)
source.add_argument("--ckpt", type=Path, help="a checkpoint written by train_head.py")
source.add_argument("--head", choices=ZERO_SHOT_HEADS, help="a parameter-free head, zero-shot")
parser.add_argument("--clip", type=Path, help="the OpenAI CLIP checkpoint the cache was extracted with")
parser.add_argument("--backbone", help="instead of --clip: the backbone the cache was extracted with, KIND:PATH")
parser.add_argument("--top-k", type=whole_number(1), default=5, help="videos shown per query")
parser.add_argument("--reversals", action="store_true", help="RTime: the reversal of every video is a candidate too")
parser.add_argument(
    "--index",
    type=Path,
    help="folder of the saved index (default: index_SPLIT, or index_SPLIT_reversals with --reversals, beside the "
    "checkpoint, or in --cache)",
)
parser.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    queries = list(args.queries) + (read_queries(args.queries_file) if args.queries_file else [])
    if not queries:
        raise StageError(f"--queries {args.queries_file}: the file holds no query")
    device = resolve_device(args.device)
    fix_cpu_threads(device)
    for query, hits in zip(queries, search(args, queries, device), strict=True):
        print(f"\n{query}")
        for rank, (video_id, reversed_flag, score) in enumerate(hits, 1):
            print(f"  {rank:>3}. {video_id}{' (reversed)' if reversed_flag else ''}  {score:.4f}")


def check_arguments(args):
    """Refuse a call with nothing to search for, before any work."""
    if not args.queries and not args.queries_file:
        parser.error("give queries as arguments or --queries FILE")
    if (args.clip is None) == (args.backbone is None):
        parser.error("give the one backbone the cache was extracted with: --clip FILE or --backbone KIND:PATH")


def check_queries(queries, tokenizer, backbone):
    """Refuse a query with no word once CLIP's text cleaning has run (it would rank every video by an
    empty text), or one the cache's long-text rule would cut without a word (its end is lost)."""
    lengths = backbone.token_lengths(queries)
    for number, (query, length) in enumerate(zip(queries, lengths, strict=True), 1):
        if reads_as_blank(query):
            raise StageError(f"query {number} ({query!r}) holds no word once CLIP's text cleaning has run")
        if tokenizer["long_text"] == "truncate" and length > tokenizer["context_length"]:
            raise StageError(
                f"query {number} ({query[:40]!r}...) is {length} tokens, past the context length "
                f"{tokenizer['context_length']} the cache's captions were encoded with: its end would be cut; "
                "shorten it (a cache extracted with --long-text windows reads long texts whole)"
            )


def read_queries(path):
    """A query per line; blank lines and lines starting with # (comments) are not queries."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").split("\n")]
        return [line for line in lines if line and not line.startswith("#")]
    except (OSError, UnicodeDecodeError) as err:
        raise StageError(f"--queries {path}: cannot be read ({err})") from None


def search(args, queries, device):
    """For each query, the top-k candidates as (video id, reversed, score), best first."""
    meta = read_meta(args.cache)
    dtype = clip_vendor.DTYPES[meta["contract"]["compute"]["dtype"]]  # the cache's precision
    backbone = backbones.load_flagged(args, device, dtype, cache=(args.cache, meta["contract"]))
    check_queries(queries, meta["contract"]["tokenizer"], backbone)
    checkpoint = load_checkpoint(args.ckpt) if args.ckpt else None
    frames = None
    if checkpoint is None:
        frames = frames_to_use(
            None, frames_per_video(args.cache, args.split), meta["contract"]["sampling"]["t_max"], ""
        )
    head, config = head_for_cache(meta, args.cache, frames, checkpoint=checkpoint, ckpt=args.ckpt, name=args.head)
    head = head.to(device).eval()
    data = load_split_tensors(args.cache, args.split, config["frames"], device, config["text_input"] == "tokens")
    video_ids = open_split(args.cache, args.split).video_ids
    candidates = [(row, 0) for row in range(len(video_ids))] + (
        [(row, 1) for row in range(len(video_ids))] if args.reversals else []
    )
    setting = Setting(np.zeros(0, dtype=np.int64), candidates, np.zeros((0, len(candidates)), bool), [], [])
    text, text_mask = encode_queries(backbone, meta, queries, head.text_input, device)
    with torch.no_grad():
        if head.indexable:
            index = video_index(args, meta, head, data, setting, video_ids, device)
            scores = head.score_matrix(text, text_mask, index).float().cpu().numpy()
        else:  # a cross-encoder: every query against every video, nothing to index
            scores = head.score_matrix(text, text_mask, *candidate_index(head, data, setting)).float().cpu().numpy()
    if not np.isfinite(scores).all():
        query = int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
        raise StageError(
            f"the head's scores for query {query + 1} ({queries[query][:40]!r}) are not all finite: no ranking is "
            "shown for scores that cannot be compared (a checkpoint or cache with non-finite values?)"
        )
    hits = []
    for row in scores:
        order = np.argsort(-row, kind="stable")[: args.top_k]  # ties kept in candidate order, as evaluate's stable rank
        hits.append([(video_ids[candidates[c][0]], candidates[c][1], float(row[c])) for c in order])
    return hits


def encode_queries(backbone, meta, queries, text_input, device):
    """The queries as the cache encodes captions: the cache's backbone, context length, long-text
    rule and precision, stored in its storage dtype; as a head reads them ([Q, L, D], [Q, L])."""
    contract = meta["contract"]
    pooled, tokens = backbone.encode_texts(
        queries, contract["tokenizer"]["context_length"], contract["tokenizer"]["long_text"]
    )
    storage = getattr(torch, contract["storage_dtype"])
    if text_input == "pooled":
        text = pooled.to(storage).float().unsqueeze(1)
        return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    stored = [features.to(storage).cpu().numpy() for features in tokens]
    text, mask = padded_tokens(stored, max(len(features) for features in stored), pooled.shape[1])
    return torch.from_numpy(text).to(device).float(), torch.from_numpy(mask).to(device)


def video_index(args, meta, head, data, setting, video_ids, device):
    """[n_candidates, D] unit video vectors, from the saved index when it was built from the same
    checkpoint, cache and candidates, else built and saved."""
    # one default folder per candidate set: toggling --reversals finds its own index, never rebuilds the other
    name = f"index_{args.split}" + ("_reversals" if args.reversals else "")
    folder = args.index or ((args.ckpt.parent if args.ckpt else args.cache) / name)
    key = {
        "head": file_sha256(args.ckpt) if args.ckpt else args.head,
        "cache_content_sha256": content_digest(meta),
        "split": args.split,
        "reversals": args.reversals,
    }
    saved = saved_index(folder, key)
    if saved is not None:
        return torch.from_numpy(saved).to(device)
    (vectors,) = candidate_index(head, data, setting)
    vectors = vectors.float().cpu().numpy()
    ids = [{"video_id": video_ids[row], "reversed": flag} for row, flag in setting.candidates]
    save_index(folder, key, vectors, ids)
    return torch.from_numpy(vectors).to(device)


def saved_index(folder, key):
    """The saved index's vectors when it was built for `key` and its files are the bytes its key
    records (an index.npy changed since would rank other videos under their names), else None."""
    try:
        record = json.loads((folder / INDEX_KEY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    files = record.get("sha256", {})
    if any(not (folder / name).is_file() or file_sha256(folder / name) != files.get(name) for name in INDEX_FILES):
        print(f"the index in {folder} is not the one its {INDEX_KEY} records (a file changed): built again")
        return None
    return np.load(folder / "index.npy")


def save_index(folder, key, vectors, ids):
    """Save the index as one folder, with its key and its files' sha256; a cache or checkpoint folder
    that cannot take it (read-only, full) leaves the search to run without saving, saying so."""
    try:
        with atomic_folder(folder, "search.py") as tmp:
            np.save(tmp / "index.npy", vectors)
            (tmp / "ids.json").write_text(json.dumps(ids))
            if faiss is not None:
                flat = faiss.IndexFlatIP(vectors.shape[1])
                flat.add(vectors)
                faiss.write_index(flat, str(tmp / "index.faiss"))
            digests = {name: file_sha256(tmp / name) for name in INDEX_FILES}
            (tmp / INDEX_KEY).write_text(json.dumps({"key": key, "sha256": digests}))
    except (OSError, OutOfSpace) as err:
        reason = err.strerror if isinstance(err, OSError) else "no space left"
        print(f"the index could not be saved in {folder} ({reason}): searched without saving it; give --index DIR")
        return
    print(f"index of {len(vectors)} videos saved in {folder}" + ("" if faiss else " (faiss not installed: .npy only)"))


if __name__ == "__main__":
    cli.run(main)
