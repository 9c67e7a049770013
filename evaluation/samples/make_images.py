"""Write the project's sample images: 12 PNGs of 48x48 pixels (circles, stripes, gradients) into
``evaluation/samples/images``. Deterministic, so rerunning it reproduces the committed files.

    python evaluation/samples/make_images.py
"""

from __future__ import annotations

from pathlib import Path

SIZE = 48
OUT = Path(__file__).resolve().parent / "images"
COLOURS = ((220, 60, 40), (40, 140, 220), (60, 180, 90), (230, 200, 50))


def circle(i: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), (250 - 20 * i, 245, 240))
    r = 8 + 3 * i
    c = SIZE // 2 + (i - 2) * 3
    ImageDraw.Draw(img).ellipse((c - r, c - r, c + r, c + r), fill=COLOURS[i])
    return img


def stripes(i: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    width = 3 + i
    for x in range(0, SIZE, 2 * width):
        box = (x, 0, x + width - 1, SIZE) if i % 2 == 0 else (0, x, SIZE, x + width - 1)
        draw.rectangle(box, fill=COLOURS[i])
    return img


def gradient(i: int):
    from PIL import Image

    img = Image.new("RGB", (SIZE, SIZE))
    a, b = COLOURS[i], COLOURS[(i + 1) % len(COLOURS)]
    img.putdata([tuple(int(a[k] + (b[k] - a[k]) * ((x + y * (i % 2)) / (2 * SIZE))) for k in range(3))
                 for y in range(SIZE) for x in range(SIZE)])
    return img


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for make in (circle, stripes, gradient):
        for i in range(4):
            make(i).save(OUT / f"{make.__name__}_{i}.png", optimize=True)


if __name__ == "__main__":
    main()
