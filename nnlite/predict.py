"""`python -m nnlite.predict WORK INPUT_DIR OUTPUT_DIR [--config C] [--folds 0 1 …|all] …`.

`--part I --num-parts N` (or a torchrun launch: part RANK of WORLD_SIZE, device cuda:LOCAL_RANK)
predicts every N-th case, so N processes or machines share one OUTPUT_DIR (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import EXIT_FAILURE, EXIT_OK, EXIT_USER_ERROR, ArgumentParser, run

# The inference modules (and torch, ~2 s to import) are imported in main, so --help is instant.


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="nnlite predict",
        description="Segment every <case>_<CCCC> image of INPUT_DIR (NIfTI, NRRD, MHA, PNG, TIFF, … or a "
                    "DICOM series folder) with trained models; label maps keep the input's format.")
    parser.add_argument("work", type=Path, metavar="WORK", help="work directory (plans.json, results/)")
    parser.add_argument("input_dir", type=Path, metavar="INPUT_DIR", help="folder of <case>_<CCCC><ending> images or <case>_<CCCC>/ DICOM series folders")
    parser.add_argument("output_dir", type=Path, metavar="OUTPUT_DIR", help="folder for <case><ending> label maps (DICOM series: <case>.nii.gz)")
    parser.add_argument("--config", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("--best", action="store_true",
                        help="the configuration or ensemble and post-processing of results/best.json "
                             "(written by `nnlite best`); replaces --config and --postprocess")
    parser.add_argument("--folds", nargs="+", default=None, metavar="K",
                        help="folds to ensemble, e.g. 0 1 2 3 4, or all (default: every trained fold)")
    parser.add_argument("--checkpoint", choices=("final", "best"), default="final")
    parser.add_argument("--no-mirroring", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("--step", type=float, default=None, help="tile step / tile size (default 0.5)")
    parser.add_argument("--postprocess", action="store_true",
                        help="apply results/<config>/postprocessing.json")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case>.npz (float16 probabilities, original geometry)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also write <case>_uncertainty<ending> (normalised entropy, 0..1), "
                             "<case>_disagreement<ending> (members' mutual information, 0..1) and "
                             "uncertainty.csv (per-case score, higher = review first; docs/uncertainty.md)")
    parser.add_argument("--no-temperature", action="store_true",
                        help="save the probabilities as the networks give them, without the temperature "
                             "fitted on the cross-validation (docs/uncertainty.md)")
    parser.add_argument("--dicom-seg", action="store_true",
                        help="also write <case>.dcm, a DICOM-SEG referencing the source series "
                             "(DICOM series inputs only)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases already predicted")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tile-batch", type=int, default=None,
                        help="network inputs (tiles × mirrors) per forward (default: by memory)")
    parser.add_argument("--onnx", type=Path, default=None, metavar="MODEL.onnx",
                        help="run this ONNX export (nnlite export onnx) with onnxruntime instead of the "
                             "checkpoints, in the same sliding window")
    parser.add_argument("--part", type=int, default=None, metavar="I",
                        help="predict only the sorted cases I, I+N, I+2N, … (0 ≤ I < N; needs --num-parts); "
                             "under torchrun: the rank")
    parser.add_argument("--num-parts", type=int, default=None, metavar="N",
                        help="how many parts share the cases (N processes or machines, one OUTPUT_DIR); "
                             "under torchrun: the world size")
    parser.add_argument("--memory-gb", type=float, metavar="GB",
                        help="RAM the run may use (default: the available memory minus 10 %%): cases that "
                             "would not fit together run one at a time; a case that cannot fit alone fails "
                             "with one line")
    args = parser.parse_args(argv)
    if args.onnx is not None and args.best:
        parser.error("--onnx runs one exported network; it cannot follow --best")
    if args.step is not None and not 0 < args.step <= 1:
        parser.error("--step must be in (0, 1]")
    if args.tile_batch is not None and args.tile_batch < 1:
        parser.error("--tile-batch must be ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from nnlite.inference.options import PredictOptions, resolve_part
    from nnlite.inference.predictor import predict_best, predict_folder
    from nnlite.inference.sliding_window import STEP_SIZE

    part, num_parts, local_rank = resolve_part(args.part, args.num_parts, os.environ)
    if local_rank is not None:
        use_rank_device(local_rank, args.device)
    options = PredictOptions(
        config=args.config, folds=None if args.folds is None else tuple(args.folds),
        checkpoint=args.checkpoint, mirror=not args.no_mirroring,
        step=STEP_SIZE if args.step is None else args.step,
        postprocess=args.postprocess, save_probabilities=args.save_probabilities, uncertainty=args.uncertainty,
        overwrite=args.overwrite, device=args.device, tile_batch=args.tile_batch,
        dicom_seg=args.dicom_seg, onnx=None if args.onnx is None else str(args.onnx),
        part=part, num_parts=num_parts, temperature=not args.no_temperature, memory_gb=args.memory_gb)
    predict = predict_best if args.best else predict_folder
    report = predict(args.work, args.input_dir, args.output_dir, options)
    which = f"part {part} of {num_parts}: " if num_parts > 1 else ""
    print(f"{which}predicted {len(report.predicted)}, skipped {len(report.skipped)} (already done), "
          f"failed {len(report.failed)}; output in {args.output_dir}")
    if report.failed:
        for case, problem in report.failed.items():
            print(f"error: {case}: {problem}", file=sys.stderr)
        return EXIT_FAILURE if report.crashed else EXIT_USER_ERROR
    return EXIT_OK


def use_rank_device(local_rank: int, device: str) -> None:
    """A torchrun rank predicts on cuda:LOCAL_RANK (the device "auto"/"cuda" then resolves to)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)


if __name__ == "__main__":
    sys.exit(run(main))
