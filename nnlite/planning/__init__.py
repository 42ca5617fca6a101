"""Stage 2, planning: checked cases in, `WORK/fingerprint.json`, `plans.json`, `splits.json` out.

`fingerprint` collects spacings, shapes after cropping and foreground intensities in one read
pass; `planner` makes nnU-Net's decisions (target spacing, transpose, patch, batch, the 2d / 3d /
lowres / cascade configurations) with the pooling loop of `topology`, sized against a GPU-memory
budget in bytes (`memory_budget`, which asks `network.geometry` for the activation sizes of a
candidate network by arithmetic); `work_folder` writes the files atomically."""
