"""The main job on a bundled default (`make demo`): for now, a smoke run of the two 3D networks.

Builds SemAbs3D (OVSSC) and SemAbsVOOL (VOOL) with the released architecture, optionally loads a
checkpoint, and runs one forward pass on random points in the scene box, printing what goes in and
what comes out.

    python demo.py                                   # random weights, 128^3 grid
    python demo.py --ovssc-checkpoint models/ours/ovssc/ovssc.pth --vool-checkpoint models/ours/vool/vool.pth
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

import net
from checkpoint import load_network
from utils import resolve_device, run_app, seed_all

app = typer.Typer(add_completion=False)


def random_points(count: int, generator: torch.Generator) -> torch.Tensor:
    lower, upper = torch.tensor(net.DEFAULT_SCENE_BOUNDS)
    return lower + torch.rand(1, count, 3, generator=generator) * (upper - lower)  # [1,count,3]


@app.command()
def main(
    ovssc_checkpoint: Path = typer.Option(None, help="released or trained OVSSC checkpoint (.pth)"),
    vool_checkpoint: Path = typer.Option(None, help="released or trained VOOL checkpoint (.pth)"),
    num_input_pts: int = typer.Option(20_000, help="input points (training default: 80000)"),
    num_output_pts: int = typer.Option(50_000, help="query points"),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1, or auto"),
) -> None:
    console = Console()
    device = resolve_device(device)
    seed_all(0)
    g = torch.Generator().manual_seed(0)
    input_xyz = random_points(num_input_pts, g)
    queries = random_points(num_output_pts, g)[:, None]  # [1,1,M,3]
    relevancy = lambda: torch.randn(1, 1, num_input_pts, 1, generator=g) * 50  # noqa: E731 [B,P,N,1]
    runs = [
        ("OVSSC", net.SemAbs3D, ovssc_checkpoint, dict(input_feature_pts=relevancy())),
        (
            "VOOL",
            net.SemAbsVOOL,
            vool_checkpoint,
            dict(
                input_target_saliency_pts=relevancy(),
                input_reference_saliency_pts=relevancy(),
                spatial_relation_name=[["behind"]],
            ),
        ),
    ]
    table = Table(title=f"semabs networks on {device}")
    for column in ("task", "network", "weights", "parameters", "output", "logit range", "forward"):
        table.add_column(column)
    for task, network_class, checkpoint_path, inputs in runs:
        network = network_class().to(device).eval()
        weights = "random"
        if checkpoint_path is not None:
            checkpoint = load_network(network, checkpoint_path, map_location=device)
            weights = f"{checkpoint_path.name} (epoch {checkpoint.get('epochs', '?')})"
        batch = dict(input_xyz_pts=input_xyz, output_xyz_pts=queries, **inputs)
        batch = {
            key: value.to(device) if torch.is_tensor(value) else value
            for key, value in batch.items()
        }
        start = time.perf_counter()
        with torch.no_grad():
            logits = network(**batch)
        seconds = time.perf_counter() - start
        table.add_row(
            task,
            type(network).__name__,
            weights,
            f"{sum(p.numel() for p in network.parameters()):,}",
            str(list(logits.shape)),
            f"[{logits.min().item():.2f}, {logits.max().item():.2f}]",
            f"{seconds:.1f} s",
        )
    console.print(table)


if __name__ == "__main__":
    run_app(app)
