"""Regenerate tests/fixtures/bad/: one small file per kind of input the job must account for.

    python tools/make_bad_fixtures.py        (needs Pillow: pip install pillow)

Symlinks (dangling, pointing outside the input folder) and unreadable files are made by the
tests themselves, since git and file permissions do not carry them reliably.
"""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "bad"


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header (valid CRCs) claiming width x height, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = np.linspace(0, 255, 96, dtype=np.float32)
    photo = np.stack([np.add.outer(x[:72], x) / 2, np.add.outer(x[:72], x[::-1]) / 2,
                      np.full((72, 96), 128, np.float32)], -1)
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(photo)

    def save(name, image, **kw):
        image.save(OUT / name, **kw)

    save("good.jpg", img, quality=90)
    save("good.png", img)
    save("cmyk.jpg", img.convert("CMYK"), quality=90)            # TF decodes it: a feature row
    save("gray16.png", Image.fromarray(photo[..., 0].astype(np.uint16) * 257))  # likewise
    save("photo_tiff.tiff", img)                                 # unsupported_format
    save("photo_webp.webp", img)                                 # unsupported_format
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    (OUT / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (OUT / "empty.jpg").write_bytes(b"")
    (OUT / "not_an_image.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    (OUT / "huge_header.png").write_bytes(png_claiming(40000, 40000))
    (OUT / "png_named.gif").write_bytes((OUT / "good.png").read_bytes())  # wrong ext: fine
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")


if __name__ == "__main__":
    main()
