"""Benchmark relevancy extraction: seconds per image for chefer_et_al, fast and ours, in fp32 and in
reduced precision side by side, and how far the reduced-precision maps move from the fp32 ones.

640x480 image (assets/room.png), 3 labels, random ViT-B-32 weights (open_clip, pretrained none). Also
measured in the same run: the bare time of one no-grad ViT-B-32 crop forward at the same batch size
in each precision, and the largest difference between the fast per-crop maps (batched VJP, CLS-row
tail) and the straightforward per-label `autograd.grad` computation, relative to the map's range.

    python bench/relevancy.py --threads 2                        # fp32 and bf16, all three configs
    python bench/relevancy.py --precision fp32 --saliency-config fast
    python bench/relevancy.py --saliency-config fast --profile 16    # and where a batch's time goes
    python bench/relevancy.py --device cuda --precision fp32 fp16 --resize torch --batch-size 0

For each config, one line per precision (seconds per image, CPU seconds, ratio to the bare crop
forward floor), then for each precision after the first its agreement with the first: max and mean
absolute map difference relative to each label's fp32 map range (the worst label's max, the mean over
labels), and per label the share of the fp32 map's top-k pixels (k = --top-percent of the image) that
are also in the other map's top k. Both precisions run on the same image, labels and jitter seed.

bf16 on a CPU runs in hardware only with AMX or AVX512-BF16 (processes.bf16_is_fast); elsewhere
PyTorch emulates it (docs/performance.md#relevancy). On CUDA `--batch-size 0` sizes batches from
free GPU memory; `--resize pil` (parity, PIL in threads on the CPU) or `torch` (batched on the
device). The first timed config is preceded by a warm-up run of chefer_et_al, so start-up (CUDA,
oneDNN primitives) is not counted.
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
import processes  # noqa: E402
import relevancy  # noqa: E402
import saliency  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from relevancy_reference import reference_crop_relevancy  # noqa: E402

LABELS = ("vase", "red ball", "lamp")


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
    the extractor's batch size and precision, through the extractor's own tower (in bf16 or fp16
    its copy with the weights cast once)."""
    visual, batch_size = extractor.visual, extractor.batch_size
    crops = torch.randn(batch_size, 3, 224, 224, device=extractor.device)
    with torch.no_grad(), extractor._autocast():
        visual(crops)  # warm-up
        runs = [timed(lambda: visual(crops))[1:] for _ in range(repeats)]
    return tuple(sorted(column)[repeats // 2] / batch_size for column in zip(*runs, strict=True))


def max_relative_difference(extractor, model, device: torch.device, crops: int = 8) -> float:
    text = extractor.text_features(LABELS, [relevancy.HOME_PROMPT]).to(device)
    batch = torch.randn(crops, 3, 224, 224, device=device)
    fast = extractor.crop_relevancy(batch, text)
    reference = reference_crop_relevancy(model, batch, text)
    return float((fast - reference).abs().max() / (reference.max() - reference.min()))


def map_agreement(reference: torch.Tensor, other: torch.Tensor, top_fraction: float):
    """How far maps (N, H, W) moved from reference maps: (the worst label's max |difference| / that
    label's reference range, the mean over labels of mean |difference| / range, per label the share
    of the reference's top-k pixels that are also among the other's top k)."""
    reference, other = reference.flatten(1).double(), other.flatten(1).double()
    ranges = (reference.amax(1) - reference.amin(1)).clamp_min(1e-30)
    difference = (other - reference).abs()
    k = max(1, round(top_fraction * reference.shape[1]))
    overlaps = []
    for ref_row, other_row in zip(reference, other, strict=True):
        top_ref = torch.zeros_like(ref_row, dtype=torch.bool)
        top_ref[ref_row.topk(k).indices] = True
        overlaps.append(float(top_ref[other_row.topk(k).indices].sum()) / k)
    return (
        float((difference.amax(1) / ranges).max()),
        float((difference.mean(1) / ranges).mean()),
        overlaps,
    )


def profile_by_operator(extractors, crops: int, device: torch.device, rows: int = 8) -> None:
    """Seconds of one crop_relevancy batch in each precision, and its costliest operators (self
    CPU time, PyTorch's profiler): which run in reduced precision, and the casts around them."""
    batch = torch.randn(crops, 3, 224, 224, device=device)
    for precision, extractor in extractors.items():
        text = extractor.text_features(LABELS, [relevancy.HOME_PROMPT]).to(device)
        extractor.crop_relevancy(batch, text)  # warm-up
        with torch.profiler.profile() as profile:
            _, seconds, _ = timed(partial(extractor.crop_relevancy, batch, text))
        print(f"one batch of {crops} crops, {precision}: {seconds:.2f} s; by operator:")
        events = sorted(profile.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        for event in events[:rows]:
            print(
                f"    {event.key:45s} {event.self_cpu_time_total / 1e6:7.2f} s  {event.count} calls"
            )


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
    parser.add_argument(
        "--precision",
        dest="precisions",
        nargs="+",
        default=["fp32", "bf16"],
        choices=list(relevancy.PRECISIONS),
        help="the first is the reference of the agreement figures",
    )
    parser.add_argument("--resize", default=None, choices=list(saliency.RESIZES))
    parser.add_argument("--top-percent", type=float, default=5.0, help="k of the top-k overlap")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="CROPS",
        help="also profile one batch of CROPS crops by operator in each precision",
    )
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=3,
        help="0: no crop-forward floor (emulated bf16: slow)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer = clip_weights.load_model("ViT-B-32", pretrained="none", device=device)
    extractors = {
        precision: relevancy.RelevancyExtractor(
            model, tokenizer, device, batch_size=args.batch_size or None, precision=precision
        )
        for precision in args.precisions
    }
    reference_precision = args.precisions[0]
    image = iio.imread(Path(__file__).resolve().parents[1] / "assets" / "room.png")
    height, width = image.shape[:2]
    batch_size = extractors[reference_precision].batch_size
    print(
        f"{time.strftime('%Y-%m-%d')}, {processes.cpu_description()}; device {device}, {torch.get_num_threads()} "
        f"threads, image {width}x{height}, labels {len(LABELS)}, batch {batch_size}, resize "
        f"{args.resize or 'by config'}, precisions {' '.join(args.precisions)}"
    )
    floors = {}
    for precision, extractor in extractors.items():
        if not args.floor_repeats:
            continue
        floors[precision] = bare_crop_forward_s(extractor, args.floor_repeats)
        print(
            f"bare no-grad ViT-B-32 crop forward, {precision} (batch {extractor.batch_size}): "
            f"{floors[precision][0] * 1000:.1f} ms/crop wall, {floors[precision][1] * 1000:.1f} "
            "ms/crop CPU"
        )
    if args.profile:
        profile_by_operator(extractors, args.profile, device)
    reference_extractor = extractors[reference_precision]
    print(
        f"per-crop maps vs per-label autograd.grad ({reference_precision}): max abs diff / range = "
        f"{max_relative_difference(reference_extractor, model, device):.2e}"
    )
    reference_extractor(image, LABELS, config=saliency.saliency_config("chefer_et_al", height))
    for name in args.configs:
        # img_dim = height, as the image command
        config = saliency.saliency_config(name, height, resize=args.resize)
        forwards = saliency.num_crop_forwards(height, width, config)
        maps = {}
        for precision, extractor in extractors.items():
            (maps[precision], _), seconds, cpu_seconds = timed(
                partial(extractor, image, LABELS, config=config)
            )
            assert maps[precision].shape == (len(LABELS), height, width)
            line = (
                f"{name:>13} {precision}: {seconds:8.2f} s/image ({cpu_seconds:.2f} s CPU), "
                f"{forwards} crop forwards"
            )
            if args.floor_repeats:
                # the floor is re-measured after each run and averaged, to follow the machine's load
                after = bare_crop_forward_s(extractor, args.floor_repeats)
                floor = [
                    forwards * (before + now) / 2
                    for before, now in zip(floors[precision], after, strict=True)
                ]
                floors[precision] = after
                line += (
                    f", floor {floor[0]:.2f} s ({floor[1]:.2f} s CPU), ratio to floor "
                    f"{seconds / floor[0]:.3f} wall, {cpu_seconds / floor[1]:.3f} CPU"
                )
            print(line, flush=True)
        for precision in args.precisions[1:]:
            worst, mean, overlaps = map_agreement(
                maps[reference_precision], maps[precision], args.top_percent / 100
            )
            print(
                f"{name:>13} {precision} vs {reference_precision}: max |diff| / range {worst:.2e}, "
                f"mean |diff| / range {mean:.2e}, top {args.top_percent:g}% pixels shared per "
                f"label: {' '.join(f'{label} {share:.1%}' for label, share in zip(LABELS, overlaps))}",
                flush=True,
            )


if __name__ == "__main__":
    main()
