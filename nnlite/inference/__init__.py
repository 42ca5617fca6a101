"""Stage 7, inference: trained folds and raw images in, label maps in the original geometry out.

`sliding_window` predicts one preprocessed array (Gaussian-weighted tiles, mirroring, several
networks, probabilities averaged); `export` brings probabilities back to the original geometry
and writes `<case>.nii.gz` or the input's format (+ `.npz` probabilities); `largest_component` applies the chosen
post-processing; `predictor` runs a folder of cases for one configuration; `stage_models` loads and
runs cascade stages and ensembles of configurations (`predict --best`); `options` holds what both
predictors are given and report and finds their input cases; `dicom_seg` writes a DICOM-SEG beside
a DICOM series' label map."""
