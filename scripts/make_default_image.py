"""Render assets/room.png, the bundled default image of `generate_relevancy.py image`.

A procedural 640x480 living-room drawing made with numpy (our own picture, no third-party content):
wall, floor, window, a table with a vase, a red ball and a lamp.
Run: python scripts/make_default_image.py
"""

from pathlib import Path

import imageio.v3 as iio
import numpy as np

HEIGHT, WIDTH = 480, 640


def render() -> np.ndarray:
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    image[:] = (205, 190, 160)  # wall
    floor = rows >= 330
    image[floor] = (120, 85, 55)
    image[floor & ((cols + rows * 2) // 40 % 2 == 0)] *= 0.9  # floor boards
    window = (rows > 60) & (rows < 220) & (cols > 400) & (cols < 580)
    image[window] = (150, 200, 240)
    image[window & ((np.abs(cols - 490) < 4) | (np.abs(rows - 140) < 4))] = (240, 240, 235)  # frame
    image[(rows > 250) & (rows < 265) & (cols > 120) & (cols < 380)] = (90, 55, 30)  # table top
    for leg in (135, 355):
        image[(rows >= 265) & (rows < 390) & (cols > leg) & (cols < leg + 12)] = (80, 50, 25)
    vase = ((cols - 250) / 22.0) ** 2 + ((rows - 220) / 30.0) ** 2 < 1
    image[vase | ((rows > 180) & (rows < 250) & (np.abs(cols - 250) < 8))] = (40, 90, 160)
    ball = (cols - 500) ** 2 + (rows - 400) ** 2 < 40**2
    shade = 1 - 0.5 * np.clip(((cols - 485) ** 2 + (rows - 385) ** 2) / 40**2, 0, 1)
    image[ball] = np.stack([220 * shade, 40 * shade, 40 * shade], -1)[ball]
    image[(cols > 58) & (cols < 64) & (rows > 150) & (rows < 390)] = (50, 50, 50)  # lamp pole
    lamp = (rows > 100) & (rows < 150) & (np.abs(cols - 61) < 15 + (rows - 100) * 0.5)
    image[lamp] = (250, 230, 150)
    return np.clip(image, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "assets" / "room.png"
    iio.imwrite(out, render())
    print(f"wrote {out}")
