"""Benchmark relevancy extraction (issue 4): seconds per image for chefer_et_al, fast and ours.

640x480 image (assets/room.png), 3 labels, random ViT-B-32 weights. Also measured in the same
run: the bare time of one no-grad ViT-B-32 crop forward at the same batch size, and the largest
difference between the fast per-crop maps (batched VJP, CLS-row tail) and the straightforward
per-label `autograd.grad` computation, relative to the map's range.

    python bench/relevancy.py --threads 2 [--saliency-config chefer_et_al fast ours] [--device cpu]
    python bench/relevancy.py --device cuda --precision fp16 --resize torch --batch-size 0

On CUDA `--batch-size 0` sizes batches from free GPU memory; `--precision fp16|bf16` runs the
image side under autocast (issue 12 target: `ours` under 2 s on one H100-class GPU); `--resize pil`
(parity, PIL in threads on the CPU) or `torch` (batched on the device). The first timed config is
preceded by a warm-up run of chefer_et_al, so CUDA start-up is not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import imageio.v3 as iio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clip_weights  # noqa: E402
import relevancy  # noqa: E402
import saliency  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from relevancy_reference import reference_crop_relevancy  # noqa: E402

LABELS = ("vase", "red ball", "lamp")
# the original's `ours`, busy 2-core machine (docs/performance.md#against-the-original-code-itself)
ORIGINAL_OURS_S = (273, 338)


def timed(function):
    """(result, wall seconds, process CPU seconds). CPU time barely moves when other processes load
    the machine, so its ratios are the stable ones on a shared CPU."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bare_crop_forward_s(extractor, repeats: int = 3):
    """(wall, CPU) seconds of one no-grad visual forward divided by the batch size (medians), at
    the extractor's batch size and precision."""
    model, batch_size = extractor.model, extractor.batch_size
    crops = torch.randn(batch_size, 3, 224, 224, device=extractor.device)
    with torch.no_grad(), extractor._autocast():
        model.visual(crops)  # warm-up
        runs = [timed(lambda: model.visual(crops))[1:] for _ in range(repeats)]
    return tuple(sorted(column)[repeats // 2] / batch_size for column in zip(*runs, strict=True))


def max_relative_difference(extractor, model, device: torch.device, crops: int = 8) -> float:
    text = extractor.text_features(LABELS, [relevancy.HOME_PROMPT]).to(device)
    batch = torch.randn(crops, 3, 224, 224, device=device)
    fast = extractor.crop_relevancy(batch, text)
    reference = reference_crop_relevancy(model, batch, text)
    return float((fast - reference).abs().max() / (reference.max() - reference.min()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--saliency-config", dest="configs", nargs="+", default=["chefer_et_al", "fast", "ours"]
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="0: from free GPU memory")
    parser.add_argument("--precision", default="fp32", choices=list(relevancy.PRECISIONS))
    parser.add_argument("--resize", default=None, choices=list(saliency.RESIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer = clip_weights.load_model("ViT-B-32", pretrained="none", device=device)
    extractor = relevancy.RelevancyExtractor(
        model, tokenizer, device, batch_size=args.batch_size or None, precision=args.precision
    )
    image = iio.imread(Path(__file__).resolve().parents[1] / "assets" / "room.png")
    height, width = image.shape[:2]
    print(
        f"device {device}, {torch.get_num_threads()} threads, image {width}x{height}, "
        f"labels {len(LABELS)}, precision {args.precision}, batch {extractor.batch_size}, "
        f"resize {args.resize or 'by config'}"
    )

    crop_s = bare_crop_forward_s(extractor)
    print(
        f"bare no-grad ViT-B-32 crop forward (batch {extractor.batch_size}): "
        f"{crop_s[0] * 1000:.1f} ms/crop wall, {crop_s[1] * 1000:.1f} ms/crop CPU"
    )
    print(
        f"per-crop maps vs per-label autograd.grad: max abs diff / range = "
        f"{max_relative_difference(extractor, model, device):.2e}"
    )
    extractor(image, LABELS, config=saliency.saliency_config("chefer_et_al", height))  # warm-up
    for name in args.configs:
        # img_dim = height, as the image command
        config = saliency.saliency_config(name, height, resize=args.resize)
        forwards = saliency.num_crop_forwards(height, width, config)
        (maps, _), seconds, cpu_seconds = timed(partial(extractor, image, LABELS, config=config))
        # the floor is re-measured after each config and averaged, to follow the machine's load
        after = bare_crop_forward_s(extractor)
        floor = [forwards * (before + now) / 2 for before, now in zip(crop_s, after, strict=True)]
        line = (
            f"{name:>13}: {seconds:8.2f} s/image ({cpu_seconds:.2f} s CPU), {forwards} crop "
            f"forwards, floor {floor[0]:.2f} s ({floor[1]:.2f} s CPU), ratio to floor "
            f"{seconds / floor[0]:.3f} wall, {cpu_seconds / floor[1]:.3f} CPU"
        )
        crop_s = after
        if name == "ours":
            line += f"; original {ORIGINAL_OURS_S[0]}-{ORIGINAL_OURS_S[1]} s"
        print(line, flush=True)
        assert maps.shape == (len(LABELS), height, width)


if __name__ == "__main__":
    main()
