"""Stage 9, viewing: WORK's results and new cases in, pictures, tables and a local web app out.

The last stage reads what the others wrote and writes nothing into WORK. `runs` finds the scored
validations (folds, cross-validation, best.json), their progress curves (metrics.jsonl) and the
per-case table ranked worst first, and reads a case's images, reference and prediction;
`slices` turns volumes into RGB slice pictures (grey channels, label outlines, an error map);
`uploads` checks and stages a case from the browser or from `--inputs` inside the app's own
folders; `models` lists the trained models and predicts one staged case with the inference
stage's predictor. The Streamlit layer (`settings`, `viewer`, `pages`, run by `python -m
nnlite.app`) only lays these out; Streamlit is the optional extra `nnlite[app]`, and nothing else
in this folder imports it."""
