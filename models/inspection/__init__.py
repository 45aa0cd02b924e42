"""The clip classifier for visual inspection: a 3D-CNN stem, a Transformer over
space-time tokens, a defect probability and a coarse defect location.

Input: (B, 1, T, H, W) aligned grey clips in [0, 1] (T = 8, H = W = 128 by default).
- Stem: two strided Conv3d -> (B, 32, T/2, H/4, W/4), then a fixed ``MaxPool3d`` to a
  4 x 4 spatial grid (fixed pooling: adaptive pooling with a non-global output does not
  export to ONNX; max so small defects survive) -> (B, 32, T/2, 4, 4): one token per
  space-time cell.
- Each cell's features are also taken relative to the clip's other cells (minus their
  mean, over their spread) and mixed in: a texture repeats across cells, a defect is where
  one cell differs.
- A 2-layer Transformer encoder (d = 32) over the T/2 * 16 tokens, with a learned
  position embedding.
- Heads, per spatial cell (averaged over time): a defect logit, whose maximum is the
  clip's (a defect anywhere makes the clip defective: 0.901 held-out AUROC at 64 px
  against 0.895 from the mean token), and a location logit, whose arg-max cell is the
  coarse box.

Training data: clips cut from the camera simulator, aligned to their middle frame; a clip
is positive when a defect is fully in view in that frame (negative when none is; a defect
cut by the frame's edge is left out), and its location cell is the one
holding the defect box's centre. A share of the training parts (``regions``) is two-tone:
large light and dark regions over the texture. Without them the classifier had never seen
large-scale structure, and on unseen textures made of it (bands, blobs) it took the
structure for defects and missed pits on it; with them, and 4-6x the clips, held-out
AUROC rose from about 0.90 to 0.97.

Training: Adam, the learning rate decaying to 0 over the run (cosine, per step), flips and
contrast jitter as augmentation.

Inference (``views``): the evaluated and exported model averages its logits over the clip
and the clip upside down (``views=2``, the default), or over all four flips (``views=4``),
inside the one graph. It was trained on flipped clips, so each view is a fair second look;
on three trained models the second view added 0.004-0.010 held-out AUROC, for twice the
classifier's inference cost. Training runs one view per step."""

from vigil.models.inspection.data import ClipDataset, make_clips, training_clips
from vigil.models.inspection.evaluate import (
    auroc,
    auroc_ci95,
    fit_inspection,
    pick_threshold,
    predict,
    threshold_on_clean,
)
from vigil.models.inspection.export import (
    PARITY_TOLERANCE,
    export_video,
    load_video_net,
    save_video_model,
)
from vigil.models.inspection.net import GRID, VIEWS, VideoConfig, VideoNet, flip_clips
from vigil.models.inspection.train import finetune_video, train_video

__all__ = [
    "ClipDataset",
    "GRID",
    "PARITY_TOLERANCE",
    "VIEWS",
    "VideoConfig",
    "VideoNet",
    "auroc",
    "auroc_ci95",
    "export_video",
    "finetune_video",
    "fit_inspection",
    "flip_clips",
    "load_video_net",
    "make_clips",
    "pick_threshold",
    "predict",
    "save_video_model",
    "threshold_on_clean",
    "train_video",
    "training_clips",
]
