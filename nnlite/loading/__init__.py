"""Stage 5, loading: preprocessed cases in, training batches out.

`sampling` picks patch positions (one third forced onto foreground) and reads boxes from the
memory-mapped arrays; augmentation follows "sample parameters, then apply" with an explicit RNG
(`augmentation` composes the `spatial_transforms` and `intensity_transforms` of one sample on the
CPU, `device_augmentation` applies the same parameters to a whole batch on the training device);
`previous_stage` adds the cascade's extra channels; `loader` runs it all in worker processes and
yields `{"data": (B, C, *patch), "target": [(B, 1, *patch_i) per deep-supervision level]}`, batch
`i` a pure function of `(seed, i)`."""
