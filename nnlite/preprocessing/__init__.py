"""Stage 3, preprocessing: raw cases and `plans.json` in, `WORK/preprocessed/<config>/` out.

Per case (`pipeline`): transpose, crop to the nonzero region (outside voxels marked −1 in the
seg), normalize each channel (`normalization`), resample to the configuration's spacing
(`resampling`), sample foreground locations and store memory-mappable `<case>.npy`,
`<case>_seg.npy` and `<case>.json` properties; the inverse path brings network-space arrays back
to the original geometry. `runner` fills every planned configuration with worker processes;
`cascade` converts a 3d_lowres label map into the cascade stage's extra input channels."""
