"""Stage 6, training: preprocessed cases, `plans.json` and YAML settings in, a fold's results out.

`config` reads the settings into frozen dataclasses; `folds` knows splits.json and each fold's
cases and folders; `run_setup` resolves device, seed and resume/overwrite and builds the loaders;
`trainer` is the loop (SGD Nesterov, poly LR from `schedule`, Dice + CE with deep supervision),
readable top to bottom, with `precision` (autocast per device), `distributed` (DDP under torchrun),
`checkpoints` (atomic, `weights_only`), `progress` (metrics.jsonl, progress.png) and `tracking`
(the same records to TensorBoard, MLflow or W&B). `lowres_predictions` prepares a cascade stage's
inputs; `demo_run` is the built-in demo from dataset to Dice. Writes
`WORK/results/<config>/fold_<k>/`. After training the trainer calls the fold's final validation,
`validation`, which predicts with inference's one predictor and scores with evaluation's metrics
(the documented crossings of this stage)."""
