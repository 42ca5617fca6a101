"""Stage 8, evaluation: predictions and reference labels in, scores, decisions and pictures out.

`metrics` scores label maps (Dice, IoU, PPV → summary.json) by one list of scored classes (a
label, or a region's label set); `cross_validation` merges the folds;
`postprocessing` decides keep-largest-component on those results; `ensembles` scores averaged
configurations; `selection` ranks everything and writes `results/best.json`; `pictures` draws
side-by-side PNGs."""
