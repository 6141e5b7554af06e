"""Decoding exactly the sampled frames of a video file (corpus/sampling.py says which), with OpenCV or PyAV.

Decoders (`--decoder`, recorded in the cache contract):
- `opencv`: OpenCV's FFmpeg, front to back; only the kept frames are converted (grab/retrieve). A
  file OpenCV cannot decode (it does not open it, or decodes no frame: its bundled FFmpeg has no
  software AV1 decoder) is decoded by PyAV instead; a file neither decodes is refused naming its codec.
- `pyav`: PyAV (FFmpeg with dav1d for AV1), front to back, for every file.
- `pyav-seek`: PyAV, seeking to the keyframe before each kept frame and decoding forward to it only:
  frames are found by their timestamps, read from the container's packets first. A file without
  a seek index (MPEG-TS) or whose packets carry no timestamps is decoded front to back.

Colour: each decoder converts to BGR24 with FFmpeg's swscale; the two agree bit for bit on 8-bit
video, but on 10-bit video OpenCV's conversion differs from PyAV's by up to 12 levels of 255. A
video and its reversal are converted the same way when the same decoder decodes both (always, with
`--decoder pyav`). Rotation: frames are turned upright by the file's display rotation, as a player
shows them (OpenCV's auto-rotation; PyAV's display matrix), for a video and its reversal alike.

Time: how many frames are kept follows the video's duration, measured from its decoded frames'
timestamps ((last - first) x n / (n - 1), exact, rounded to the millisecond), not the header's rate,
an average only for variable frame rate; which frames are kept follows the frame index
(mirror-symmetric: a reversed file gives exactly flip(V)).

Truncation rests on what the container records exactly, never on an estimate: a decode that yields
fewer than 95% of the frames its index lists (MP4, MOV, AVI), or, without an index, frames spanning
less than 95% of the video stream's own recorded duration (Matroska/WebM's DURATION tag), is
truncated. A container recording neither (MPEG-TS) shows a cut only as a decoding error.

Damage: FFmpeg conceals what it cannot decode (a slice whose CRC fails, a corrupt packet, a missing
reference) by copying or guessing pixels, and goes on. It says so only in its log, at error level,
and sometimes in a frame's corrupt flag. Such a file decodes to slightly wrong frames with every
decoder, again and again, so re-decoding it (verify) cannot notice. Both are read here: PyAV's log
through `av.logging.Capture`, and OpenCV's, which its FFmpeg writes straight to file descriptor 2,
by catching that descriptor during the decode (which also keeps OpenCV's own noise, such as its
hardware AV1 warnings, off the terminal). A file FFmpeg reports such errors for is `damaged`,
unless the spec accepts concealment (`--accept-concealed-errors`).
"""

import contextlib
import os
import re
import signal
import sys
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np

from clip_vendor.preprocess import OPENAI_PIXELS, PixelRule, resize_crop
from corpus.sampling import sample_frame_indices
from infra.cli import StageError
from infra.file_io import file_fingerprint
from infra.records import first_difference

MIN_DECODED_SHARE = 0.95  # below this share of the recorded frames or duration, a file is cut short
DECODERS = ("opencv", "pyav", "pyav-seek")


FFMPEG_LOG_LINE = re.compile(r"^\[(?P<component>[^\]]+?) @ 0x[0-9a-fA-F]+\] ?(?P<message>.*)$")
ERRORS_SHOWN = 3  # of a damaged file's FFmpeg errors, the first few distinct ones are named


class VideoError(StageError):
    """A video that cannot be used: missing, unreadable, empty, truncated or damaged."""


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode worker needs besides the file: sampling settings, the model's input size and
    pixel rule, and the decoder."""

    fps: float
    t_max: int
    size: int
    decoder: str = "opencv"
    accept_concealed: bool = False  # keep files whose decoding errors FFmpeg concealed
    pixels: PixelRule = OPENAI_PIXELS  # the backbone's resize and crop (backbones/)

    @property
    def front_to_back_decoder(self) -> str:
        """The decoder for a decode from the first frame to the last: pyav-seek's is PyAV."""
        return "pyav" if self.decoder == "pyav-seek" else self.decoder


def decoder_contract(spec: "DecodeSpec") -> dict:
    """The decoder, whether concealed errors are accepted, and the library versions its pixels
    depend on: the cache contract's `sampling.decoder`."""
    return {
        "name": spec.decoder,
        "fallback": "pyav" if spec.decoder == "opencv" else None,
        "accept_concealed": spec.accept_concealed,
        "opencv": cv2.__version__,
        "pyav": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
    }


def spec_from_contract(sampling: dict, size: int, pixels: PixelRule = OPENAI_PIXELS) -> "DecodeSpec":
    """The DecodeSpec a cache was extracted with, from its contract's `sampling` (verify re-extracts with it)."""
    decoder = sampling["decoder"]
    return DecodeSpec(sampling["fps"], sampling["t_max"], size, decoder["name"], decoder["accept_concealed"], pixels)


@dataclass(frozen=True)
class StreamInfo:
    """What the container records about its first video stream, read without decoding."""

    codec: str  # e.g. "h264", "av1"
    index_frames: int | None  # the exact frame count of the container's index, when it has one
    duration: Fraction | None  # the video stream's own recorded duration in seconds, when known
    average_rate: Fraction | None  # frames per second, used only for one-frame videos


@dataclass
class Decoded:
    kept: dict  # {frame index: BGR frame [H, W, 3] uint8}, upright
    n_frames: int
    first_time: Fraction | None  # timestamps of the first and last frame, in seconds
    last_time: Fraction | None
    decoder: str  # the decoder that decoded the file
    errors: list  # what FFmpeg reported while concealing damage ("h264: error while decoding MB 8 2")
    fallback: str | None = None  # why OpenCV handed the file to PyAV, when it did


def decode_sampled_frames(path: Path, spec: DecodeSpec) -> tuple[np.ndarray, Decoded]:
    """The sampled frames of `path`, [n_kept, H, W, 3] uint8 BGR upright, and how the file was
    decoded (the decoder, why OpenCV fell back to PyAV). Raises VideoError naming the file and why."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"missing: {path}")
    info = probe(path)
    if spec.decoder == "pyav-seek":
        decoded = read_frames_seeking(path, info, spec)
        if decoded is not None:
            return finish(path, info, spec, decoded)
    guess = set(guess_indices(info, spec))
    decoded = read_frames(path, guess, spec, info)
    indices = kept_indices(decoded, info, spec)
    if not set(indices) <= decoded.kept.keys():
        # the recorded length was off: sample from the true one, at the price of a second decode
        again = read_frames(path, set(indices), spec, info, decoded.decoder)
        if again.n_frames != decoded.n_frames:
            raise VideoError(f"unreadable: {path} decoded to {decoded.n_frames} frames, then to {again.n_frames}")
        again.fallback = decoded.fallback
        decoded = again
    return finish(path, info, spec, decoded)


def sampled_neighbourhood(path: Path, spec: DecodeSpec) -> dict[int, tuple[list[int], np.ndarray]]:
    """{-1, 0, 1: (frame indices, frames)}: the sampled frames and the frames one before and one
    after each, clipped at the ends (a clipped neighbour is the frame itself), decoded front to
    back: what verify needs to tell an aligned reversal from one a frame off."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"missing: {path}")
    info = probe(path)
    counted = read_frames(path, set(), spec, info)
    n = counted.n_frames
    positions = {
        offset: [min(max(index + offset, 0), n - 1) for index in kept_indices(counted, info, spec)]
        for offset in (-1, 0, 1)
    }
    decoded = read_frames(path, {index for at in positions.values() for index in at}, spec, info, counted.decoder)
    return {offset: (at, np.stack([decoded.kept[index] for index in at])) for offset, at in positions.items()}


def finish(path, info, spec, decoded):
    check_not_truncated(path, info, decoded)
    check_not_damaged(path, spec, decoded)
    indices = kept_indices(decoded, info, spec)
    return np.stack([decoded.kept[i] for i in indices]), decoded


def check_not_damaged(path: Path, spec: DecodeSpec, decoded: Decoded) -> None:
    if decoded.errors and not spec.accept_concealed:
        shown = list(dict.fromkeys(decoded.errors))
        raise VideoError(
            f"damaged: {path}: FFmpeg concealed decoding errors ({'; '.join(shown[:ERRORS_SHOWN])}"
            f"{f'; {len(shown) - ERRORS_SHOWN} more' if len(shown) > ERRORS_SHOWN else ''}), so its frames "
            "would be wrong; repair or re-download it, or accept concealment with --accept-concealed-errors"
        )


def probe(path: Path) -> StreamInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"unreadable: {path} has no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise VideoError(f"unreadable: {path}: its video codec is unknown to FFmpeg (no decoder for it)")
            duration = stream.duration * stream.time_base if stream.duration else parse_duration_tag(stream)
            return StreamInfo(
                stream.codec_context.codec.canonical_name,
                stream.frames or None,
                Fraction(duration) if duration else None,
                Fraction(stream.average_rate) if stream.average_rate else None,
            )
    except av.error.FFmpegError as err:
        raise VideoError(f"unreadable: {path} is not a video FFmpeg can open ({err.strerror})") from None


def parse_duration_tag(stream) -> Fraction | None:
    """Matroska/WebM store each track's duration as a tag, "HH:MM:SS.nnnnnnnnn"."""
    tag = stream.metadata.get("DURATION")
    if not tag:
        return None
    hours, minutes, seconds = tag.split(":")
    return (int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)


def video_duration(decoded: Decoded, info: StreamInfo) -> Fraction:
    """Seconds the decoded frames span, counting the last frame's own interval, to the millisecond:
    Matroska keeps timestamps in milliseconds, so a video and its reversal in another container
    agree only to that."""
    n = decoded.n_frames
    if n >= 2 and decoded.last_time is not None and decoded.last_time > decoded.first_time:
        seconds = (decoded.last_time - decoded.first_time) * n / (n - 1)
    else:
        seconds = n / info.average_rate if info.average_rate else Fraction(0)
    return Fraction(round(seconds * 1000), 1000)


def kept_indices(decoded: Decoded, info: StreamInfo, spec: DecodeSpec) -> list[int]:
    return sample_frame_indices(decoded.n_frames, video_duration(decoded, info), spec.fps, spec.t_max)


def guess_indices(info: StreamInfo, spec: DecodeSpec) -> list[int]:
    """The frames to keep if the container's record is right (one decode instead of two)."""
    if info.index_frames:
        n = info.index_frames
    elif info.duration and info.average_rate:
        n = round(info.duration * info.average_rate)
    else:
        return []
    duration = info.duration or n / info.average_rate
    return sample_frame_indices(n, Fraction(duration), spec.fps, spec.t_max) if n > 0 else []


def check_not_truncated(path: Path, info: StreamInfo, decoded: Decoded) -> None:
    if info.index_frames and decoded.n_frames < MIN_DECODED_SHARE * info.index_frames:
        raise VideoError(
            f"truncated: {path} lists {info.index_frames} frames in its index, only {decoded.n_frames} decode"
        )
    if not info.index_frames and info.duration:
        decoded_seconds = video_duration(decoded, info)
        if decoded_seconds < MIN_DECODED_SHARE * info.duration:
            raise VideoError(
                f"truncated: {path} records a {float(info.duration):.2f} s video stream, its "
                f"frames span only {float(decoded_seconds):.2f} s"
            )


def read_frames(path: Path, wanted: set[int], spec: DecodeSpec, info: StreamInfo, decoder: str = "") -> Decoded:
    """Decode every frame in order; keep `wanted`. `decoder` defaults to the spec's front-to-back
    one; OpenCV hands a file it cannot decode (no frame) to PyAV, saying why."""
    decoder = decoder or spec.front_to_back_decoder
    fallback = None
    if decoder == "opencv":
        decoded = read_frames_opencv(path, wanted)
        if decoded.n_frames > 0:
            return decoded
        fallback = f"OpenCV decoded no frame of it ({decoded.errors[0] if decoded.errors else f'codec {info.codec}'})"
    decoded = read_frames_pyav(path, wanted)
    if decoded.n_frames == 0:
        raise VideoError(f"zero frames: {path} (codec {info.codec}) decodes to no frame with OpenCV or PyAV")
    decoded.fallback = fallback
    return decoded


@contextlib.contextmanager
def native_stderr_lines():
    """Yield a list that, when the block ends, holds the lines native code (OpenCV's FFmpeg) wrote
    to file descriptor 2 meanwhile; they are not shown. A decode runs alone in its process."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode("utf-8", "replace").splitlines()


def ffmpeg_errors(lines: list[str]) -> list[str]:
    """ "component: message" of FFmpeg's log lines (OpenCV lets FFmpeg print errors only); OpenCV's
    own warnings ("[ WARN:0@...]") are not FFmpeg's and are dropped."""
    found = [FFMPEG_LOG_LINE.match(line.strip()) for line in lines]
    return [f"{match['component']}: {match['message'].strip()}" for match in found if match]


@contextlib.contextmanager
def pyav_errors():
    """Yield a list that, when the block ends, holds "component: message" of every error FFmpeg
    logged in this thread meanwhile (PyAV leaves FFmpeg's log off unless a level is set)."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    errors = []
    try:
        with av.logging.Capture(local=True) as logs:
            yield errors
    finally:
        av.logging.set_level(previous)
        errors += [f"{name}: {message.strip()}" for level, name, message in logs if level <= av.logging.ERROR]


def read_frames_opencv(path: Path, wanted: set[int]) -> Decoded:
    capture = cv2.VideoCapture(str(path))
    kept, n_frames, first_time, last_time = {}, 0, None, None
    with native_stderr_lines() as printed:
        try:
            while capture.grab():
                last_time = Fraction(round(capture.get(cv2.CAP_PROP_POS_MSEC) * 1000), 10**6)  # to the microsecond
                first_time = last_time if first_time is None else first_time
                if n_frames in wanted:
                    ok, frame = capture.retrieve()
                    if not ok:
                        raise VideoError(f"unreadable: frame {n_frames} of {path} failed to decode")
                    kept[n_frames] = frame
                n_frames += 1
        finally:
            capture.release()
    return Decoded(kept, n_frames, first_time, last_time, "opencv", ffmpeg_errors(printed))


def upright_bgr(frame: av.VideoFrame) -> np.ndarray:
    """BGR24 pixels turned by the frame's display rotation (degrees counter-clockwise), as OpenCV does."""
    return np.ascontiguousarray(np.rot90(frame.to_ndarray(format="bgr24"), (frame.rotation // 90) % 4))


def read_frames_pyav(path: Path, wanted: set[int]) -> Decoded:
    kept, n_frames, first_time, last_time, corrupt = {}, 0, None, None, []
    with pyav_errors() as errors:
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1  # a worker decodes one video at a time; processes give the parallelism
                for frame in container.decode(stream):
                    last_time = frame.pts * frame.time_base if frame.pts is not None else None
                    first_time = last_time if first_time is None else first_time
                    if frame.is_corrupt:
                        corrupt.append(f"frame {n_frames} flagged corrupt by the decoder")
                    if n_frames in wanted:
                        kept[n_frames] = upright_bgr(frame)
                    n_frames += 1
        except av.error.FFmpegError as err:
            raise VideoError(f"unreadable: frame {n_frames} of {path} failed to decode ({err.strerror})") from None
    return Decoded(kept, n_frames, first_time, last_time, "pyav", errors + corrupt)


def read_frames_seeking(path: Path, info: StreamInfo, spec: DecodeSpec) -> Decoded | None:
    """The kept frames by seeking: packet timestamps give every frame's time and each keyframe;
    each kept frame is decoded from the last keyframe at or before it (or, when that keyframe is
    behind the decoder already, by decoding on). None, to decode front to back instead, when the
    container has no index to seek by (MPEG-TS: a seek there lands near, not on, a keyframe) or its
    packets carry no usable timestamps."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if not stream.index_entries:
                return None
            packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size]
            time_base = Fraction(stream.time_base)  # read while the container is open: its memory goes with it
    except av.error.FFmpegError as err:
        raise VideoError(f"unreadable: {path} failed to demux ({err.strerror})") from None
    times = sorted(pts for pts, _ in packets if pts is not None)
    if not times or len(times) < len(packets) or len(set(times)) < len(times):
        return None  # no, missing or repeated timestamps: frames cannot be found by time
    keyframes = sorted(pts for pts, keyframe in packets if keyframe)
    decoded = Decoded({}, len(times), times[0] * time_base, times[-1] * time_base, "pyav-seek", [])
    targets = {times[index]: index for index in kept_indices(decoded, info, spec)}
    with pyav_errors() as errors:
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_count = 1
                frames, position = None, None  # the decoding in progress, and the pts it has reached
                for target in sorted(targets):
                    start = max((pts for pts in keyframes if pts <= target), default=keyframes[0])
                    if frames is None or start > position:  # the keyframe lies ahead: skip to it
                        container.seek(start, stream=stream, backward=True)
                        frames = container.decode(stream)
                    for frame in frames:  # one generator between seeks: no decoded frame is dropped
                        position = frame.pts
                        if frame.is_corrupt:
                            decoded.errors.append(f"frame at {float(frame.pts * time_base):.3f} s flagged corrupt")
                        if frame.pts == target:
                            decoded.kept[targets[target]] = upright_bgr(frame)
                            break
                        if frame.pts > target:
                            raise VideoError(f"unreadable: {path}: no frame at time {float(target * time_base):.3f} s")
        except av.error.FFmpegError as err:
            raise VideoError(f"unreadable: {path} failed to decode after a seek ({err.strerror})") from None
    decoded.errors = errors + decoded.errors
    if len(decoded.kept) < len(targets):
        raise VideoError(f"unreadable: {path}: {len(targets) - len(decoded.kept)} kept frames never decoded")
    return decoded


# Containers FFmpeg reads that videos are downloaded as. A file with another suffix is still a video
# when it is the only file of its id; beside a video it is a sidecar (yt-dlp's X.description).
VIDEO_SUFFIXES = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .asf .mpg .mpeg .ts .m2ts .mts .3gp .ogv .mxf .vob .nut .y4m".split()
)


@dataclass(frozen=True)
class VideoFolder:
    files: "FilesById"  # {video id: its file}: the file named {id}.{suffix}
    ignored: list  # files sharing a video's id that are not videos (yt-dlp's .description, .jpg ...)


class FilesById(dict):
    """{video id: its file}, keyed by the id in Unicode NFC: an id written in one normal form finds
    the file named in the other (macOS file systems name files in NFD, annotation files hold NFC)."""

    def __getitem__(self, video_id):
        return super().__getitem__(unicodedata.normalize("NFC", video_id))

    def get(self, video_id, default=None):
        return super().get(unicodedata.normalize("NFC", video_id), default)

    def __contains__(self, video_id):
        return super().__contains__(unicodedata.normalize("NFC", video_id))


def index_video_files(videos_dir: Path) -> VideoFolder:
    """The video file of each id in `videos_dir` ("123.mp4" is id "123"). Of several files with one
    id, the one video (by suffix) is taken and the rest are ignored sidecars, as is a file whose name
    extends a video's ("X.info.json" beside "X.mp4"); two videos for one id, or none among several
    files, is VideoError naming them, as is a missing folder."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise VideoError(f"--videos {videos_dir}: no such folder")
    by_id = {}
    for path in sorted(videos_dir.iterdir()):
        if path.is_file():  # a folder or FIFO named like a video is no file: that video is missing
            by_id.setdefault(unicodedata.normalize("NFC", path.stem), []).append(path)
    files, ignored = FilesById(), []
    for video_id, paths in by_id.items():
        videos = [path for path in paths if path.suffix.lower() in VIDEO_SUFFIXES] if len(paths) > 1 else paths
        if len(videos) != 1:
            raise VideoError(
                f"video id {video_id!r} has {'two video files' if videos else 'several files, none a video'}: "
                f"{', '.join(str(path) for path in (videos or paths))}; keep one per id in {videos_dir}"
            )
        files[video_id] = videos[0]
        ignored += [path for path in paths if path != videos[0]]
    for video_id in [video_id for video_id, path in files.items() if path.suffix.lower() not in VIDEO_SUFFIXES]:
        if sidecar_of(video_id, files):  # X.info.json: its own id is "X.info", but it belongs to X.mp4
            ignored.append(files.pop(video_id))
    return VideoFolder(files, sorted(ignored))


def sidecar_of(video_id: str, files: dict) -> str | None:
    """The id of the video a file with a multi-part suffix sits beside ("X.info" -> "X", where X is
    a video by its suffix), or None."""
    stem = video_id
    while "." in stem:
        stem = stem.rsplit(".", 1)[0]
        owner = files.get(stem)
        if owner is not None and owner.suffix.lower() in VIDEO_SUFFIXES:
            return stem
    return None


def fingerprint_videos(video_ids: list[str], video_files: dict[str, Path], videos_dir: Path) -> dict[str, dict]:
    """{video_id: {"file": path relative to videos_dir, "size", "head_tail_sha256"}}, {"file": None}
    for a video with no file, or {"file", "unreadable": why} for one that cannot be read (it fails
    at decoding, and a file made readable later is a changed input). Reads 2 MiB per video, several
    files at a time."""

    def fingerprint(video_id):
        path = video_files.get(video_id)
        if path is None:
            return {"file": None}
        relative = str(Path(path).relative_to(videos_dir))
        try:
            return {"file": relative, **file_fingerprint(path)}
        except OSError as err:
            return {"file": relative, "unreadable": err.strerror or str(err)}

    with ThreadPoolExecutor(8) as pool:  # hashing and reading release the GIL
        return dict(zip(video_ids, pool.map(fingerprint, video_ids), strict=True))


def fingerprint_difference(recorded: dict, current: dict) -> str | None:
    """The first video whose file is not the one the cache was extracted from, described, or None."""
    return first_difference(recorded, current, ("was at extraction", "is now"))


def init_decode_worker() -> None:
    """Each decode process decodes one video at a time: OpenCV's own threads would oversubscribe.
    Ctrl-C goes to the main process only, which stops the pool: a worker dying of it mid-task
    would leave the pool waiting for its result forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)


@dataclass(frozen=True)
class DecodedVideo:
    """A decode worker's answer for one video: its crops, or why it failed; and how it was decoded."""

    video_id: str
    crops: np.ndarray | None  # [n, 3, size, size] uint8 RGB, None when the video failed
    failure: str | None  # why the video cannot be used, None when it decoded
    decoder: str = ""  # the decoder that decoded it
    fallback: str | None = None  # why OpenCV handed it to PyAV, when it did


def decode_and_crop(task: tuple[str, str, DecodeSpec]) -> DecodedVideo:
    """Worker job: (video_id, path, spec) -> DecodedVideo. Failures are returned, not raised, so
    the caller decides between skipping and stopping."""
    video_id, path, spec = task
    try:
        frames_bgr, decoded = decode_sampled_frames(path, spec)
        return DecodedVideo(
            video_id,
            resize_crop(frames_bgr, spec.size, rule=spec.pixels).numpy(),
            None,
            decoded.decoder,
            decoded.fallback,
        )
    except VideoError as err:
        return DecodedVideo(video_id, None, str(err))
    except OSError as err:  # a file it may not read, a folder named like a video
        return DecodedVideo(video_id, None, f"unreadable: {path}: {err.strerror or err}")
    except Exception as err:  # an odd file (frames changing size, a codec error): still a bad video, named
        return DecodedVideo(video_id, None, f"unreadable: {path}: {type(err).__name__}: {err}")
