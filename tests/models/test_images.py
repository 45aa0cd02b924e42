"""A user's folder of part images: its layout read into kinds and masks, every image
format read as 8-bit grey, files that cannot be used reported (never fatal), images made
into conveyor parts with their defect boxes, and the split protocols (on a slice of the
Magnetic Tile data when the shared folder is there)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vigil.errors import DataError
from vigil.models.inspection.data import cell_of
from vigil.models.inspection.from_images import ImageSplit, image_clips, split_images, training_set
from vigil.models.inspection.images import (
    ImageParts,
    Part,
    load_parts,
    read_grey,
    scan_images,
)
from vigil.models.inspection.net import VideoConfig
from vigil.streams.sources.camera import CameraConfig, CameraSimulator
from vigil.streams.sources.handbook import default_data_dir

TILES = default_data_dir() / "magnetic-tile"
needs_tiles = pytest.mark.skipif(
    not TILES.is_dir(),
    reason=f"the Magnetic Tile Defects data is not at {TILES} "
    "(set VIGIL_SHARED_DATA to the shared data folder)",
)


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def _ramp(h=40, w=60):
    return (np.arange(h * w) % 251).astype(np.uint8).reshape(h, w)


def test_a_folder_per_kind_with_masks_beside_the_images_or_in_a_masks_folder(tmp_path):
    # the Magnetic Tile layout: MT_<Kind>/Imgs/NAME.jpg with NAME.png its mask
    _write(tmp_path / "MT_Free/Imgs/a.jpg", _ramp())
    _write(tmp_path / "MT_Free/Imgs/a.png", np.zeros((40, 60), np.uint8))
    _write(tmp_path / "MT_Crack/Imgs/b.jpg", _ramp())
    _write(tmp_path / "MT_Crack/Imgs/b.png", np.full((40, 60), 255, np.uint8))
    # MVTec-like: a masks folder; NAME_mask.png beside
    _write(tmp_path / "MT_Pit/c.png", _ramp())
    _write(tmp_path / "masks/MT_Pit/c.png", np.full((40, 60), 255, np.uint8))
    _write(tmp_path / "MT_Pit/d.bmp", _ramp())
    _write(tmp_path / "MT_Pit/d_mask.png", np.full((40, 60), 255, np.uint8))
    _write(tmp_path / "MT_Pit/e.tif", _ramp())  # no mask
    _write(tmp_path / "stray.jpg", _ramp())  # of no kind
    found = scan_images(tmp_path)
    got = {i.path.name: (i.kind, i.mask.name if i.mask else None) for i in found.images}
    assert got == {
        "a.jpg": (None, None),  # defect-free: its all-black mask is not looked for
        "b.jpg": ("crack", "b.png"),
        "c.png": ("pit", "c.png"),
        "d.bmp": ("pit", "d_mask.png"),
        "e.tif": ("pit", None),
    }
    assert found.counts() == {"good": 1, "crack": 1, "pit": 3}
    assert len(found.problems) == 1 and "stray.jpg" in found.problems[0]


def test_labels_csv_says_everything_and_a_missing_image_is_reported(tmp_path):
    _write(tmp_path / "x/1.png", _ramp())
    _write(tmp_path / "x/2.png", _ramp())
    _write(tmp_path / "m/2.png", np.full((40, 60), 255, np.uint8))
    (tmp_path / "labels.csv").write_text(
        "image,kind,mask\nx/1.png,,\nx/2.png,Scratch,m/2.png\nx/gone.png,good,\n"
    )
    found = scan_images(tmp_path)
    got = {i.path.name: (i.kind, i.mask) for i in found.images}
    assert got == {"1.png": (None, None), "2.png": ("scratch", tmp_path / "m/2.png")}
    assert len(found.problems) == 1 and "gone.png" in found.problems[0]


def test_a_folder_without_defect_free_images_is_a_clear_error(tmp_path):
    _write(tmp_path / "crack/a.png", _ramp())
    with pytest.raises(DataError, match="no defect-free images"):
        scan_images(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        scan_images(tmp_path / "absent")


def test_every_depth_and_channel_count_reads_as_8_bit_grey(tmp_path):
    grey = _ramp()
    colour = np.dstack([grey, grey, grey])
    cases = {
        "grey.png": grey,
        "colour.png": colour,
        "alpha.png": np.dstack([colour, np.full_like(grey, 255)]),
        "deep.png": grey.astype(np.uint16) * 257,  # 16 bits: the high byte is the grey
        "deep.tif": grey.astype(np.uint16) * 257,
    }
    for name, image in cases.items():
        _write(tmp_path / name, image)
        got = read_grey(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == grey.shape, name
        assert np.abs(got.astype(int) - grey).max() <= 1, name
    # huge: shrunk to the longest side allowed; tiny: refused
    _write(tmp_path / "huge.png", np.zeros((300, 3000), np.uint8))
    assert read_grey(tmp_path / "huge.png", max_side=1024).shape == (102, 1024)
    _write(tmp_path / "tiny.png", np.zeros((8, 300), np.uint8))
    with pytest.raises(DataError, match="too small"):
        read_grey(tmp_path / "tiny.png")


def test_unreadable_files_are_reported_and_the_rest_loaded(tmp_path):
    _write(tmp_path / "good/ok.png", _ramp())
    (tmp_path / "good/empty.jpg").write_bytes(b"")
    (tmp_path / "good/text.png").write_bytes(b"not an image at all")
    (tmp_path / "good/cut.png").write_bytes(cv2.imencode(".png", _ramp())[1].tobytes()[:60])
    _write(tmp_path / "crack/a.jpg", _ramp())
    (tmp_path / "crack/a.png").write_bytes(b"broken mask")
    found = scan_images(tmp_path)
    problems: list[str] = []
    parts = load_parts(found.images, problems)
    assert sorted(p.name for p in parts) == ["a.jpg", "ok.png"]
    assert [p.mask for p in parts if p.name == "a.jpg"] == [None]
    assert len(problems) == 4
    assert all("OpenCV can read" in p for p in problems), problems


def test_image_parts_carry_their_defect_box_from_the_mask():
    image = np.full((200, 100), 90, np.uint8)
    mask = np.zeros((200, 100), bool)
    mask[40:60, 20:30] = True  # rows 40-59, columns 20-29
    parts = ImageParts([Part(image, "crack", mask, "m.png")], order="cycle")
    pixels, defect, name = parts.make(0, np.random.default_rng(0), 100, 0.0)
    assert pixels.shape == (100, 100) and pixels.dtype == np.float32 and name == "m.png"
    # shrunk 2x vertically, 1x horizontally
    assert defect is not None and defect.kind == "crack"
    assert defect.bbox == (20, 20, 10, 10)
    # a defect-free image is painted only in random order, when asked
    clean = ImageParts([Part(image, None, None, "g.png")], paint=1.0)
    _px, painted, _ = clean.make(0, np.random.default_rng(1), 100, 0.0)
    assert painted is not None and painted.kind.startswith("synthetic-")
    assert (
        ImageParts([Part(image, None, None, "g.png")], paint=0.0).make(
            0, np.random.default_rng(1), 100, 0.0
        )[1]
        is None
    )


def test_the_camera_shows_the_users_part_where_it_says():
    """The part's top-left corner the shot reports: the frame there holds the image."""
    image = np.zeros((112, 112), np.uint8)
    image[:, :56] = 200  # left half bright, right half dark, on a mid-grey belt
    sim = CameraSimulator(
        CameraConfig(seed=3, size=128, part_px=112, gap_px=48, noise_sigma=0, jitter_px=0.5),
        ImageParts([Part(image, None, None, "half.png")], order="cycle"),
    )
    for shot in sim.frames("c", 0):
        if shot.part_xy is not None and 0 <= shot.part_xy[0] <= 16:
            break
    x, y = (int(round(v)) for v in shot.part_xy)
    frame = shot.frame.image.astype(float)
    assert frame[y + 10 : y + 100, x + 10 : x + 46].mean() > 150  # the bright half
    assert frame[y + 10 : y + 100, x + 66 : x + 100].mean() < 20  # the dark half


def test_each_image_gives_one_clip_of_its_part_centred():
    cfg = VideoConfig(size=64, camera_size=64)
    parts = [Part(np.full((50, 50), v, np.uint8), None, None, f"{v}.png") for v in (30, 220, 120)]
    got = image_clips(parts, cfg, seed=1)
    assert got.clips.shape == (3, 1, cfg.frames, 64, 64)
    centre = (64 - 56) / 2
    # a clip every 4 frames, 3 px each, and the camera's shake
    assert all(abs(x - centre) <= 9 for x, _y in got.part_xy), got.part_xy
    middle = got.clips[:, 0, cfg.frames // 2, 24:40, 24:40].mean(axis=(1, 2)) * 255
    assert np.allclose(middle, [30, 220, 120], rtol=0.06, atol=4), middle  # lighting drift


def test_a_box_is_in_the_cell_of_its_centre_in_frames_of_any_shape():
    assert cell_of((0, 0, 10, 10), (128, 128)) == 0
    assert cell_of((120, 120, 8, 8), (128, 128)) == 15
    assert cell_of((30, 0, 4, 4), (128, 128)) == 1  # centre x 32: the second column
    assert cell_of((64, 32, 2, 2), (64, 128)) == 2 * 4 + 2  # 64 rows, 128 columns
    assert cell_of((200, 200, 90, 90), (128, 128)) == 15  # past the frame: the last cell


def test_training_shows_each_image_centred_filling_the_frame_in_rounds():
    """Each round: every training image centred under the camera, the part filling the
    frame, a defect's cell where its mask is (top left here), and a painted copy of
    defect-free images for ``paint`` of the defect-free clips."""
    cfg = VideoConfig(size=64, camera_size=64, train_clips=20, fill=True)
    good = np.full((60, 60), 20, np.uint8)
    good[:, [6, 53]] = 240  # two lines 47 pixels apart: 50 in a part filling the frame
    goods = [Part(good, None, None, f"g{i}.png") for i in range(4)]
    mask = np.zeros((60, 60), bool)
    mask[4:10, 4:10] = True  # top left of the part
    pitted = np.where(mask, 250, 100).astype(np.uint8)
    bad = [Part(pitted, "pit", mask, f"b{i}.png") for i in range(2)]
    split = ImageSplit(goods + bad, [], [], [], "supervised")
    got = training_set(split, cfg, seed=1)  # half the defect-free clips painted
    assert got.clips.shape == (20, 1, cfg.frames, 64, 64)
    # two rounds of 4 + 2 images and 4 painted copies, each in an order of its own
    rounds = [range(0, 10), range(10, 20)]
    for r in rounds:
        names = sorted(got.textures[i] for i in r)
        assert names == sorted([p.name for p in goods + bad] + [f"g{i}.png" for i in range(4)])
        assert sorted(got.labels[list(r)]) == [0] * 4 + [1] * 6
    assert [got.textures[i] for i in rounds[0]] != [got.textures[i] for i in rounds[1]]
    kinds = {got.textures[i]: got.kinds[i] for i in range(20) if got.textures[i][0] == "b"}
    assert kinds == {"b0.png": "pit", "b1.png": "pit"}
    painted = [i for i in range(20) if got.kinds[i] and got.kinds[i].startswith("synthetic-")]
    assert len(painted) == 8 and all(got.textures[i][0] == "g" for i in painted)
    pits = [i for i in range(20) if got.kinds[i] == "pit"]
    assert list(got.cells[pits]) == [0] * 4  # the mask's corner of the part
    for i in range(20):
        if got.textures[i][0] == "g" and got.labels[i] == 0:
            columns = got.clips[i, 0, cfg.frames // 2, 16:48].mean(axis=0)
            left, right = np.argmax(columns[:32]), 32 + np.argmax(columns[32:])
            assert abs((right - left) - 50) <= 2, (left, right)  # 44 were it 7/8 of the frame
    # a quarter of the defect-free clips painted: one copy a round (4 + 2 + 1 a round;
    # the third round cut short at 6 of its 7, in any order)
    quarter = training_set(split, cfg, seed=1, paint=0.25)
    assert [sorted(quarter.labels[a:b]) for a, b in ((0, 7), (7, 14))] == [[0] * 4 + [1] * 3] * 2
    assert len(quarter.labels) == 20
    unpainted = training_set(split, cfg, seed=1, paint=0.0)
    assert sum(unpainted.labels[:18]) == 6 and all(k in (None, "pit") for k in unpainted.kinds)


@needs_tiles
def test_the_magnetic_tile_split_follows_the_literatures_protocol():
    split = split_images(TILES, "normal-only", seed=0, limit=30)
    d = split.describe()
    # of each kind at most 30 read; 80 % of the defect-free for training (a tenth of it
    # held out for the threshold), the rest and every defective image for testing
    assert d["train"] == {"good": 22} and d["validation"] == {"good": 2}
    assert d["test"] == {
        "good": 6,
        "blowhole": 30,
        "break": 30,
        "crack": 30,
        "fray": 30,
        "uneven": 30,
    }
    assert all(p.mask is not None for p in split.test if p.kind)
    sup = split_images(TILES, "supervised", seed=0, limit=10)
    assert sup.describe()["train"] == {
        "good": 6,
        "blowhole": 7,
        "break": 7,
        "crack": 7,
        "fray": 7,
        "uneven": 7,
    }
    with pytest.raises(DataError, match="mode"):
        split_images(TILES, "half-supervised")


def test_a_thresholds_table_outside_zero_to_one_or_malformed_is_refused():
    from vigil.models.serving import ModelError, read_camera_thresholds

    assert read_camera_thresholds(b'{"cameras": {"c": 0.7, "7": 1}}') == {"c": 0.7, "7": 1.0}
    for bad in (
        b'{"cameras": {"c": 0}}',
        b'{"cameras": {"c": NaN}}',
        b'{"cameras": {"c": 1e308}}',
        b'{"cameras": {"c": -0.5}}',
        b'{"cameras": ["c"]}',
        b"{}",
        b"[1]",
        b"\xff",
    ):
        with pytest.raises(ModelError, match="thresholds"):
            read_camera_thresholds(bad)
