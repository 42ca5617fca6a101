"""`python -m nnlite.export onnx WORK OUT.onnx --config C --fold F`: a trained fold for deployment.

    python -m nnlite.export onnx WORK OUT.onnx [--config 3d_fullres] [--fold 0] [--checkpoint final|best]

Writes the network (deep supervision off) as ONNX with dynamic batch and spatial sizes (each
divisible by the total stride), runs it once with onnxruntime against PyTorch and prints the
largest logit difference. See nnlite/inference/onnx_model.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, run


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nnlite export", description=__doc__.splitlines()[0])
    formats = parser.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser("onnx", help="a trained fold → ONNX (onnxruntime-checked)")
    onnx.add_argument("work", type=Path, metavar="WORK", help="nnlite work folder")
    onnx.add_argument("out", type=Path, metavar="OUT.onnx", help="ONNX file to write")
    onnx.add_argument("--config", default="3d_fullres", help="configuration (default 3d_fullres)")
    onnx.add_argument("--fold", default="0", help="fold: 0-4 or all (default 0)")
    onnx.add_argument("--checkpoint", default="final", choices=("final", "best"),
                      help="checkpoint_final.pt (default) or checkpoint_best.pt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from nnlite.inference.onnx_model import export_onnx

    print(export_onnx(args.work, args.config, args.fold, args.out, args.checkpoint).summary())
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
