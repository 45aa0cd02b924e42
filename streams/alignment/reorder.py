"""Per-camera ordering of frames, and clip windows over the ordered stream.

``ReorderBuffer`` releases one camera's frames in ``seq`` order. Frames may arrive out of
order; one that arrives after its ``seq`` was passed is *late*: dropped and counted. A
missing ``seq`` is waited for until a frame ``grace_ms`` newer (by ``ts_ms``) than the
oldest held frame has arrived; then it is a *gap*: skipped and counted, and the frames
after it are released.

``ClipWindows`` cuts the ordered frames into clips of ``length`` consecutive frames every
``stride`` frames. A clip never spans a gap: after one, the window starts again.

>>> buf, windows = ReorderBuffer(grace_ms=50), ClipWindows(length=3, stride=2)
>>> frames = [Frame("c", s, s * 10, None) for s in (0, 2, 1, 3, 4)]
>>> ordered = [f for fr in frames for f in buf.push(fr)]
>>> [f.seq for f in ordered]
[0, 1, 2, 3, 4]
>>> [[f.seq for f in clip] for f in ordered for clip in windows.push(f)]
[[0, 1, 2], [2, 3, 4]]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vigil.errors import UsageError
from vigil.streams.frames import Frame

__all__ = ["ClipWindows", "ReorderBuffer"]


@dataclass
class ReorderBuffer:
    grace_ms: int = 50
    max_held: int = 1024  # beyond this many held frames, the oldest gap is skipped at once
    next_seq: int | None = None
    held: dict[int, Frame] = field(default_factory=dict)
    late: int = 0  # arrived after their seq was passed (dropped)
    duplicates: int = 0  # a seq already held (dropped)
    gaps: int = 0  # seqs skipped: never arrived within the grace
    newest_ts_ms: int = 0

    def push(self, frame: Frame) -> list[Frame]:
        """The frames ``frame`` releases, in ``seq`` order (often just ``frame``)."""
        if self.next_seq is None:
            self.next_seq = frame.seq
        if frame.seq < self.next_seq:
            self.late += 1
            return []
        if frame.seq in self.held:
            self.duplicates += 1
            return []
        self.held[frame.seq] = frame
        self.newest_ts_ms = max(self.newest_ts_ms, frame.ts_ms)
        out = self._release()
        while self.held and (
            self.newest_ts_ms - min(f.ts_ms for f in self.held.values()) >= self.grace_ms
            or len(self.held) > self.max_held
        ):
            first = min(self.held)  # the missing seqs before it are not coming: a gap
            self.gaps += first - self.next_seq
            self.next_seq = first
            out += self._release()
        return out

    def flush(self) -> list[Frame]:
        """Everything held, in order, skipping the gaps (end of stream)."""
        out: list[Frame] = []
        while self.held:
            first = min(self.held)
            self.gaps += first - (self.next_seq or first)
            self.next_seq = first
            out += self._release()
        return out

    def _release(self) -> list[Frame]:
        out = []
        while self.next_seq in self.held:
            out.append(self.held.pop(self.next_seq))
            self.next_seq += 1
        return out


@dataclass
class ClipWindows:
    """Clips start on frames whose ``seq`` is a multiple of ``stride``: the same frames
    give the same clips wherever the stream starts (a worker restarting mid-stream, a
    redelivery), so a clip's seq range identifies it."""

    length: int = 8
    stride: int = 4
    frames: list[Frame] = field(default_factory=list)
    _last_seq: int | None = None

    def __post_init__(self) -> None:
        if self.length < 1 or self.stride < 1:
            raise UsageError(
                f"clip length and stride must be >= 1, not {self.length}/{self.stride}"
            )

    def push(self, frame: Frame) -> list[list[Frame]]:
        """Clips completed by ``frame`` (ordered frames of one camera)."""
        if self._last_seq is not None and frame.seq != self._last_seq + 1:
            self.frames = []  # a gap: a clip is consecutive frames
        self._last_seq = frame.seq
        if not self.frames and frame.seq % self.stride:
            return []  # not a clip start, and no clip open
        self.frames.append(frame)
        if len(self.frames) < self.length:
            return []
        clip = self.frames
        next_start = clip[0].seq + self.stride
        self.frames = [f for f in clip if f.seq >= next_start]
        return [clip]
