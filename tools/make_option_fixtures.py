"""Regenerate tests/fixtures/options/: the images the preprocessing options' goldens are made of.

    .venv/bin/python tools/make_option_fixtures.py       (needs Pillow, installed with the job)

Each file exercises an option that the demo images leave alone, so that the option moves fc7
away from the default path (tools/make_golden.py refuses goldens where one does not); sizes
are width x height:

    large_landscape.jpg  2400x1800: DCT-scaled by jpeg_dct_scaling (1/4) and fast_decode (1/2);
                         fast_decode decodes only its crop window; shrunk 8x, so antialias
                         matters; squash keeps its whole width
    mid_portrait.jpg     960x1280: DCT-scaled 1/2 by jpeg_dct_scaling, full scale under
                         fast_decode (the crop window alone, in portrait)
    exif_3_rotate180.jpg, exif_6_rotate90.jpg, exif_8_rotate270.jpg
                         a landscape photo stored turned, with the EXIF orientation that turns
                         it back (3: both mirrors, 6 and 8: the axes swapped plus one mirror)
    photo.tiff           two pages (only the first is embedded), for the Pillow fallback
    photo.webp           lossy WebP, for the Pillow fallback

Made from the demo images (public domain / CC0, demo_images/SOURCES.md), under the same terms.
JPEG and WebP encoders differ between Pillow versions: the goldens are tied to the committed
bytes, so regenerate these only together with the goldens
(`.venv/bin/python tools/make_golden.py options`), and say why in the commit.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_images"
OUT = ROOT / "tests" / "fixtures" / "options"
ORIENTATION = 0x0112
# What turns an upright photo into the stored one whose EXIF orientation turns it back.
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
             8: Image.Transpose.ROTATE_270}


def large_landscape() -> Image.Image:
    """2400x1800: the Hubble field at its own resolution in the middle (fine detail that the DCT
    scaling and the resize treat differently), the other demo photos enlarged around it, and
    lines of small text across the whole frame."""
    canvas = Image.new("RGB", (2400, 1800), (40, 40, 48))
    tiles = [("chelsea_cat.JPG", (0, 0, 1200, 900)), ("coffee_small.jpg", (1200, 0, 2400, 900)),
             ("space/rocket_portrait.bmp", (0, 900, 700, 1800)),
             ("camera_gray.png", (1700, 900, 2400, 1800))]
    for name, box in tiles:
        with Image.open(DEMO / name) as im:
            canvas.paste(im.convert("RGB").resize((box[2] - box[0], box[3] - box[1]),
                                                  Image.Resampling.LANCZOS), box[:2])
    with Image.open(DEMO / "space" / "hubble_deep_field.jpg") as im:
        hubble = im.convert("RGB")  # 1000x872, unscaled
    canvas.paste(hubble, (700, 464))
    draw = ImageDraw.Draw(canvas)
    for k in range(40):
        draw.text((60 * (k % 40), 45 * k), "estimator-vgg fc7 " * 3, fill=(255, 220, 0))
    return canvas


def mid_portrait() -> Image.Image:
    """960x1280 (portrait): the Hubble field enlarged 1.47x, cut to 960 wide."""
    with Image.open(DEMO / "space" / "hubble_deep_field.jpg") as im:
        big = im.convert("RGB").resize((1468, 1280), Image.Resampling.LANCZOS)
    return big.crop((254, 0, 1214, 1280))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    large_landscape().save(OUT / "large_landscape.jpg", quality=75)
    mid_portrait().save(OUT / "mid_portrait.jpg", quality=85)
    with Image.open(DEMO / "chelsea_cat.JPG") as im:
        cat = im.convert("RGB")  # 451x300
    for o, turn in STORED_AS.items():
        exif = Image.Exif()
        exif[ORIENTATION] = o
        name = {3: "rotate180", 6: "rotate90", 8: "rotate270"}[o]
        cat.transpose(turn).save(OUT / f"exif_{o}_{name}.jpg", quality=90, exif=exif.tobytes())
        with Image.open(OUT / f"exif_{o}_{name}.jpg") as stored:  # Pillow turns it upright
            upright = np.asarray(ImageOps.exif_transpose(stored), np.float32)
            assert np.abs(upright - np.asarray(cat, np.float32)).mean() < 3, o
    with Image.open(DEMO / "space" / "rocket_portrait.bmp") as im:
        rocket = im.convert("RGB")  # 284x427
    second = Image.fromarray(255 - np.asarray(rocket))  # a different page, never embedded
    rocket.save(OUT / "photo.tiff", save_all=True, append_images=[second],
                compression="tiff_adobe_deflate")
    with Image.open(DEMO / "coffee_small.jpg") as im:
        coffee = im.convert("RGB").resize((400, 266), Image.Resampling.LANCZOS)
    coffee.save(OUT / "photo.webp", quality=80)
    for f in sorted(OUT.iterdir()):
        with Image.open(f) as im:
            print(f"{f.name}: {im.format} {im.size[0]}x{im.size[1]}, {f.stat().st_size} bytes")
    assert all(f.stat().st_size < 1 << 20 for f in OUT.iterdir())


if __name__ == "__main__":
    main()
