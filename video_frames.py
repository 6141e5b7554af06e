"""Which frames of a video to keep, and decoding exactly those with OpenCV.

Sampling rule (recorded in cache_meta.json): a video of `n_frames` at `native_fps` offers
k = max(1, floor(n_frames / native_fps * fps)) candidates; we keep n = min(k, t_max) frames at the
centres of n equal segments of [0, n_frames), rounding half-way cases toward the middle of the
video. When n_frames is even, an odd n is lowered by one (1 is raised to 2): the middle centre
would fall between the two middle frames, which have no single mirror. The rule is mirror-symmetric: for the frame-reversed file the kept indices are
`n_frames - 1 - i` in reverse order, so its features are exactly `flip(V, dim=0)` when decoding is
exact. That is why reversed videos are never extracted.
"""
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from clip_vendor.preprocess import resize_crop

# Containers report their frame count in a header; a decode that yields fewer than this share of
# it means the file is cut short, not that the header is off by a frame or two.
MIN_DECODED_SHARE = 0.95
SAMPLING_RULE = ("k = max(1, floor(n_frames / native_fps * fps)) candidates; keep n = min(k, t_max) at the "
                 "centres of n equal segments of [0, n_frames), ties rounded toward the middle; for even "
                 "n_frames an odd n is lowered by one (1 raised to 2); mirror-symmetric")


class VideoError(Exception):
    """A video that cannot be used: missing, unreadable, empty or truncated."""


@dataclass(frozen=True)
class DecodedVideo:
    frames_bgr: np.ndarray      # [n_kept, H, W, 3] uint8
    frame_indices: tuple        # which decoded frames were kept
    n_frames: int               # frames the decoder produced
    native_fps: float


def segment_centres(n_items, n_picks):
    """Indices of the centres of `n_picks` equal segments of range(n_items), mirror-symmetric.

    Centre m sits at ((2m + 1) * n_items - n_picks) / (2 * n_picks), computed in integers; a
    centre exactly half-way between two frames goes to the one nearer the middle of the video,
    so index i is picked exactly when n_items - 1 - i is.
    """
    indices = []
    for m in range(n_picks):
        numerator, denominator = (2 * m + 1) * n_items - n_picks, 2 * n_picks
        below, remainder = divmod(numerator, denominator)
        if 2 * remainder < denominator:
            index = below
        elif 2 * remainder > denominator:
            index = below + 1
        else:  # exactly half-way: toward the middle, (n_items - 1) / 2
            index = below + 1 if 2 * below < n_items - 1 else below
        indices.append(index)
    return indices


def sample_frame_indices(n_frames, native_fps, fps, t_max):
    """The kept frame indices, sorted (see the module docstring); t_max must be at least 2."""
    candidates = max(1, int(n_frames / native_fps * fps))
    n_picks = min(candidates, t_max, n_frames)
    if n_frames % 2 == 0 and n_picks % 2 == 1:
        # the middle pick of an odd count would fall between the two middle frames, which have
        # no single mirror frame: keep an even count instead (2 rather than 1)
        n_picks = n_picks - 1 if n_picks > 1 else 2
    return segment_centres(n_frames, n_picks)


def decode_sampled_frames(path, fps, t_max):
    """Decode `path` front to back, keeping the sampled frames. Raises VideoError."""
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
    return DecodedVideo(np.stack([kept[i] for i in indices]), tuple(indices), n_frames, native_fps)


def read_header(path):
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


def read_frames(path, wanted):
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


def index_video_files(videos_dir):
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


def init_decode_worker():
    """Each decode process decodes one video at a time: OpenCV's own threads would oversubscribe."""
    cv2.setNumThreads(1)
    import torch
    torch.set_num_threads(1)


def decode_and_crop(task):
    """Worker job: (video_id, path, fps, t_max, size) -> (video_id, crops [n, 3, size, size]
    uint8 RGB or None, failure reason or None). Failures are returned, not raised, so the caller
    decides between skipping and stopping."""
    video_id, path, fps, t_max, size = task
    try:
        decoded = decode_sampled_frames(path, fps, t_max)
        return video_id, resize_crop(decoded.frames_bgr, size).numpy(), None
    except VideoError as err:
        return video_id, None, str(err)
    except Exception as err:  # noqa: BLE001  an odd file (frames changing size, a codec error): still a bad video, named
        return video_id, None, f"unreadable: {path}: {type(err).__name__}: {err}"
