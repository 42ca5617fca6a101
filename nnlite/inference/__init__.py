"""Stage 7, inference: trained folds and raw images in, label maps in the original geometry out.

`models` loads the models of a prediction (configurations × folds, checkpoint or ONNX, a cascade
stage with its previous stage); `predictor` is the one per-case path (read ahead, sliding window
of every member, export in the background) of `predict`, `predict --best`, ensembles, cascades
and the final validation; `sliding_window` predicts one preprocessed array (Gaussian-weighted
tiles, mirroring, several networks, probabilities averaged); `outputs` brings probabilities back
to the original geometry and writes a case's files (`<case>.nii.gz` or the input's format, `.npz`
probabilities, a DICOM-SEG through `dicom_seg`); `largest_component` applies the chosen
post-processing; `options` holds what a prediction is given and reports and finds its input
cases; `case_classification` observes the sliding window for a classification head."""
