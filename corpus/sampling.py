"""Which frames of a video to keep: integer, mirror-symmetric arithmetic (no decoding here).

Sampling rule (recorded in cache_meta.json): a video of `n_frames` lasting `duration` seconds
(measured from its frames' timestamps, corpus/video_frames.py) offers k = max(1, floor(duration * fps))
candidates; we keep n = min(k, t_max) frames at the centres of n equal segments of the frame
indices [0, n_frames), rounding half-way cases toward the middle of the video. When n_frames
is even, an odd n is lowered by one (1 is raised to 2): the middle centre would fall between the
two middle frames, which have no single mirror. The rule is mirror-symmetric: for the
frame-reversed file the kept indices are `n_frames - 1 - i` in reverse order, so its features are
exactly `flip(V, dim=0)` when decoding is exact. That is why reversed videos are never extracted.
"""

import math
from fractions import Fraction

SAMPLING_RULE = (
    "k = max(1, floor(duration * fps)) candidates, duration from the decoded frames' timestamps "
    "((last - first) * n / (n - 1), to the millisecond); keep n = min(k, t_max) at the centres of n "
    "equal segments of the frame indices [0, n_frames), ties rounded toward the middle; for even "
    "n_frames an odd n is lowered by one (1 raised to 2); mirror-symmetric"
)


def segment_centres(n_items: int, n_picks: int) -> list[int]:
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


def sample_frame_indices(n_frames: int, duration: Fraction, fps: float, t_max: int) -> list[int]:
    """The kept frame indices, sorted (see the module docstring); t_max must be at least 2.
    `duration` is exact (a Fraction of seconds), so the count does not depend on rounding."""
    candidates = max(1, math.floor(Fraction(duration) * Fraction(fps)))
    n_picks = min(candidates, t_max, n_frames)
    if n_frames % 2 == 0 and n_picks % 2 == 1:
        # the middle pick of an odd count would fall between the two middle frames, which have
        # no single mirror frame: keep an even count instead (2 rather than 1)
        n_picks = n_picks - 1 if n_picks > 1 else 2
    return segment_centres(n_frames, n_picks)


def frame_subset(n_cached: int, n_wanted: int) -> list[int]:
    """Evenly spaced, mirror-symmetric subset of a video's cached frames (all of them if fewer)."""
    if n_cached <= n_wanted:
        return list(range(n_cached))
    return segment_centres(n_cached, n_wanted)
