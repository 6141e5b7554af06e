"""Decoding exactly the sampled frames of a video file with OpenCV (sampling.py says which).

A video whose decode yields far fewer frames than its header promises is truncated; one that
opens but yields none, or fails mid-stream, is unreadable. Each is a VideoError naming the file.
"""

import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from clip_vendor.preprocess import resize_crop
from file_io import file_fingerprint
from sampling import sample_frame_indices

# Containers report their frame count in a header; a decode that yields fewer than this share of
# it means the file is cut short, not that the header is off by a frame or two.
MIN_DECODED_SHARE = 0.95


class VideoError(Exception):
    """A video that cannot be used: missing, unreadable, empty or truncated."""


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker needs besides the file: the sampling settings and the crop size."""

    fps: float
    t_max: int
    size: int


def decode_sampled_frames(path: Path, fps: float, t_max: int) -> np.ndarray:
    """Decode `path` front to back; returns the sampled frames [n_kept, H, W, 3] uint8 BGR.
    Raises VideoError."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"missing: {path}")
    native_fps, header_frames = read_header(path)
    guess = sample_frame_indices(header_frames, native_fps, fps, t_max) if header_frames > 0 else []
    kept, n_frames = read_frames(path, set(guess))
    if n_frames == 0:
        raise VideoError(f"zero frames: {path} decodes to no frames")
    if n_frames < MIN_DECODED_SHARE * header_frames:
        raise VideoError(f"truncated: {path} header says {header_frames} frames, only {n_frames} decode")
    indices = sample_frame_indices(n_frames, native_fps, fps, t_max)
    if not set(indices) <= kept.keys():
        # the header's frame count was off: sample from the true count, at the price of a second decode
        kept, n_again = read_frames(path, set(indices))
        if n_again != n_frames:
            raise VideoError(f"unreadable: {path} decoded to {n_frames} frames, then to {n_again}")
    return np.stack([kept[i] for i in indices])


def read_header(path: Path) -> tuple[float, int]:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"unreadable: OpenCV cannot open {path}")
        native_fps = capture.get(cv2.CAP_PROP_FPS)
        if not native_fps > 0:
            raise VideoError(f"unreadable: {path} reports no frame rate")
        return native_fps, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def read_frames(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode every frame in order (seeking is not frame-exact for every codec); keep `wanted`.
    Returns ({frame index: BGR frame}, number of frames decoded)."""
    capture = cv2.VideoCapture(str(path))
    kept, n_frames = {}, 0
    try:
        while capture.grab():
            if n_frames in wanted:
                ok, frame = capture.retrieve()
                if not ok:
                    raise VideoError(f"unreadable: frame {n_frames} of {path} failed to decode")
                kept[n_frames] = frame
            n_frames += 1
    finally:
        capture.release()
    return kept, n_frames


def index_video_files(videos_dir: Path) -> dict[str, Path]:
    """{file stem: path} for every file in `videos_dir` ("123.mp4" -> "123"); a stem with two
    files is ambiguous and named in the error."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"videos directory not found: {videos_dir}")
    files = {}
    for path in sorted(videos_dir.iterdir()):
        if path.is_file():
            if path.stem in files:
                raise ValueError(f"two video files for id {path.stem!r}: {files[path.stem]} and {path}")
            files[path.stem] = path
    return files


def fingerprint_videos(video_ids: list[str], video_files: dict[str, Path], videos_dir: Path) -> dict[str, dict]:
    """{video_id: {"file": path relative to videos_dir, "size", "head_tail_sha256"}}, or {"file": None}
    for a video with no file. Reads 2 MiB per video, several files at a time."""

    def fingerprint(video_id):
        path = video_files.get(video_id)
        if path is None:
            return {"file": None}
        return {"file": str(Path(path).relative_to(videos_dir)), **file_fingerprint(path)}

    with ThreadPoolExecutor(8) as pool:  # hashing and reading release the GIL
        return dict(zip(video_ids, pool.map(fingerprint, video_ids), strict=True))


def fingerprint_difference(recorded: dict, current: dict) -> str | None:
    """The first video whose file is not the one the cache was extracted from, described, or None."""
    for video_id, was in recorded.items():
        now = current.get(video_id, {})
        for key in ("file", "size", "head_tail_sha256"):
            if was.get(key) != now.get(key):
                return f"video {video_id!r}: {key} was {was.get(key)!r} at extraction, is {now.get(key)!r} now"
    extra = sorted(set(current) - set(recorded))
    return f"video {extra[0]!r} was not in the split at extraction" if extra else None


def init_decode_worker() -> None:
    """Each decode process decodes one video at a time: OpenCV's own threads would oversubscribe.
    Ctrl-C goes to the main process only, which stops the pool: a worker dying of it mid-task
    would leave the pool waiting for its result forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)


def decode_and_crop(task: tuple[str, str, DecodeSpec]) -> tuple[str, np.ndarray | None, str | None]:
    """Worker job: (video_id, path, spec) -> (video_id, crops [n, 3, size, size] uint8 RGB or None,
    failure reason or None). Failures are returned, not raised, so the caller decides between
    skipping and stopping."""
    video_id, path, spec = task
    try:
        frames_bgr = decode_sampled_frames(path, spec.fps, spec.t_max)
        return video_id, resize_crop(frames_bgr, spec.size).numpy(), None
    except VideoError as err:
        return video_id, None, str(err)
    except Exception as err:  # an odd file (frames changing size, a codec error): still a bad video, named
        return video_id, None, f"unreadable: {path}: {type(err).__name__}: {err}"
