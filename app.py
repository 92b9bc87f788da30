"""A local web page for relevancy maps: the paper's public demo, on the user's own machine.

    pip install -r requirements-app.txt      # gradio, an optional extra
    python app.py [--checkpoint ViT-B-32.pt] [--port 7860] [--device auto]
    python generate_relevancy.py serve       # the same page

The page itself is webpage.py's; this script only reads the flags and serves it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import webpage
from utils import run_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--checkpoint", type=Path, help="local CLIP weights (any form)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    args = parser.parse_args()
    webpage.serve(args.port, args.checkpoint, args.device)


if __name__ == "__main__":
    run_app(main)
