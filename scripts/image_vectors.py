"""Small input images for engine/src/input.rs's tests (formats the image crate cannot write):
a CMYK JPEG, a JPEG with EXIF orientation 6 (rotate 90° clockwise to view), a palette PNG.

    pip install pillow
    python scripts/image_vectors.py engine/tests/data
"""
import sys
from pathlib import Path

from PIL import Image


def main(out):
    out = Path(out)
    # Left half red, right half blue, 8×4: orientation is visible, JPEG blocks stay clean.
    rgb = Image.new("RGB", (8, 4), (220, 20, 20))
    rgb.paste((20, 20, 220), (4, 0, 8, 4))
    rgb.convert("CMYK").save(out / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(out / "orientation6.jpg", quality=95, exif=exif.tobytes())
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(out / "palette.png")


if __name__ == "__main__":
    main(sys.argv[1])
