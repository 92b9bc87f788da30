"""The local web page: CLIP relevancy maps (the paper's public demo) and, in a second tab, the trained
OVSSC and VOOL networks asked about a scene and answered in an interactive 3D view.

    pip install -r requirements-app.txt      # gradio, an optional extra
    python app.py [--ovssc CKPT --vool CKPT --data DIR] [--checkpoint ViT-B-32.pt] [--port 7860]
    python generate_relevancy.py serve       # the relevancy tab alone

Without --ovssc / --vool / --data the 3D tab uses the demo's networks and scenes
(outputs/demo/models/{ovssc,vool}/latest.pth, outputs/demo/data: `make demo`) when they exist.
The page itself is app_page.py's; this script only reads the flags and serves it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import app_page
from utils import run_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--checkpoint", type=Path, help="local CLIP weights (any form)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--ovssc", type=Path, help="OVSSC checkpoint (args.pkl beside it)")
    parser.add_argument("--vool", type=Path, help="VOOL checkpoint (args.pkl beside it)")
    parser.add_argument("--data", type=Path, help="dataset folder of scene files and split pickles")
    args = parser.parse_args()
    app_page.serve(args.port, args.checkpoint, args.device, args.ovssc, args.vool, args.data)


if __name__ == "__main__":
    run_app(main)
