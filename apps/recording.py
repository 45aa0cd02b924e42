"""``vigil record frames``: what a camera sends on the frames topic, saved as a recording
(``models.inspection.recorded``: ``frames.jsonl`` and one PNG per frame) that a labels
file turns into training data (``vigil train inspection --frames DIR``)."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2

from vigil.apps.clients import camera_frames, read_messages
from vigil.models.inspection.recorded import INDEX

__all__ = ["Recorded", "record_frames"]


@dataclass
class Recorded:
    camera: str
    frames: int
    undecodable: int
    first_seq: int | None
    last_seq: int | None
    out: str

    def as_dict(self) -> dict:
        return asdict(self)


def record_frames(
    bootstrap: str,
    topic: str,
    camera: str,
    seconds: float,
    out: Path,
    should_stop: Callable[[], bool] = lambda: False,
    ready: Callable[[], None] = lambda: None,
) -> Recorded:
    """Save ``camera``'s frames that arrive on ``topic`` over the next ``seconds`` (from
    now on) under ``out``: ``<camera>/<seq>.png`` and a line each in
    ``frames.jsonl`` (appended: a second recording into the same folder adds to it; a
    frame recorded twice is kept once). ``ready``: called once reading has begun."""
    out = Path(out)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", camera).lstrip(".") or "camera"  # a folder name
    (out / safe).mkdir(parents=True, exist_ok=True)
    since_ms = time.time_ns() // 1_000_000  # what arrives from now on (the end, as a number)
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()
    n = 0
    seqs: list[int] = []
    started = [False]

    def stop() -> bool:
        if not started[0]:
            started[0] = True
            ready()
        return should_stop() or time.monotonic() >= deadline

    messages = read_messages(
        bootstrap, topic, follow=True, since_ms=since_ms, idle_timeout_s=0.2, should_stop=stop
    )
    with (out / INDEX).open("a", encoding="utf-8") as index:
        for frame in camera_frames(messages, camera, counts):
            name = f"{safe}/{frame.seq:012d}.png"
            if not (out / name).exists():
                if not cv2.imwrite(str(out / name), frame.image):
                    raise OSError(f"{out / name}: could not be written")
                entry = {"camera_id": camera, "seq": frame.seq, "ts_ms": frame.ts_ms, "file": name}
                index.write(json.dumps(entry) + "\n")
                index.flush()  # what is recorded so far is readable while it records
                n += 1
                seqs.append(frame.seq)
    return Recorded(
        camera, n, counts["undecodable"], min(seqs, default=None), max(seqs, default=None), str(out)
    )
