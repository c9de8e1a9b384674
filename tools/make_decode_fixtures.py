"""Image decoding fixtures: small files of the kinds data sets come in (JPEGs above all), each
beside the pixels `cv2.imread(path, cv2.IMREAD_COLOR)` gives (libjpeg-turbo, libpng, libtiff, as in
pytorch-grad-cam's examples; PIL decodes the same JPEG bits), so tests/parity.rs can check that
`gradcam::image::load_rgb8` gives the peer's pixels.

Writes tests/fixtures/decode/<name>.<ext> and <name>.rgb.npy (values 0-255, height x width x 3,
RGB, upright: cv2 applies the EXIF orientation; stored as f32). The arithmetic-coded copy needs
`jpegtran` (Debian: libjpeg-turbo-progs); without it that case is left as it is.

    .venv-tools/bin/python tools/make_decode_fixtures.py
"""

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "decode"


def picture(w: int, h: int, seed: int) -> Image.Image:
    """Smooth colour ramps and blobs (chroma that varies, as in photographs), a hard-edged
    block (ringing, clamping) and a little noise."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for _ in range(3):
        f = rng.uniform(-1, 1) * xx / w + rng.uniform(-1, 1) * yy / h
        for _ in range(5):
            cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.1, 0.4) * max(w, h)
            f += rng.uniform(-1.5, 1.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        f -= f.min()
        f /= max(f.max(), 1e-12)
        planes.append(f)
    arr = np.stack(planes, -1) * 230 + 12 + rng.normal(0, 4, (h, w, 3))
    x0, y0 = w // 4, h // 3
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = [250, 20, 40]
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


def gray_alpha16_png(path: Path, la: np.ndarray) -> None:
    """A 16-bit gray + alpha PNG (colour type 4), written by hand: cv2.imwrite takes 1, 3 or 4
    channels only."""
    h, w, _ = la.shape
    rows = b"".join(b"\0" + la[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def tiff_by_hand(path: Path, tags: list, strips: list, big_endian: bool = False) -> None:
    """A one-image TIFF: the strips after the header, then the IFD, then the values longer
    than an entry's 4 bytes. `tags`: (tag, type: 3 SHORT / 4 LONG / 7 UNDEFINED bytes,
    values), strip or tile offsets (273, 324) given as None and filled in."""
    e = ">" if big_endian else "<"
    offsets = [8 + sum(len(x) for x in strips[:k]) for k in range(len(strips))]
    tags = sorted((t, k, offsets if v is None else v) for t, k, v in tags)
    data = b"".join(strips)
    ifd_at = 8 + len(data)
    extra = b""
    extra_at = ifd_at + 2 + 12 * len(tags) + 4
    ifd = struct.pack(e + "H", len(tags))
    for tag, kind, values in tags:
        packed = struct.pack(e + {3: "H", 4: "I", 7: "B"}[kind] * len(values), *values)
        if len(packed) > 4:
            packed, extra = struct.pack(e + "I", extra_at + len(extra)), extra + packed
        ifd += struct.pack(e + "HHI", tag, kind, len(values)) + packed.ljust(4, b"\0")
    ifd += struct.pack(e + "I", 0)
    head = b"MM\0*" if big_endian else b"II*\0"
    path.write_bytes(head + struct.pack(e + "I", ifd_at) + data + ifd + extra)


def gray_alpha_tiff(path: Path, la: np.ndarray, planar: bool = False) -> None:
    """A gray + alpha TIFF of `la`'s bits (8 or 16): little-endian, uncompressed, unassociated
    alpha, the samples interleaved in one strip or (`planar`) the gray plane's strip, then
    the alpha's; written by hand for the same reason."""
    h, w, _ = la.shape
    bits = la.dtype.itemsize * 8
    le = la.astype(f"<u{la.dtype.itemsize}")
    strips = [le[..., 0].tobytes(), le[..., 1].tobytes()] if planar else [le.tobytes()]
    tags = [  # (tag, type: 3 SHORT / 4 LONG, values)
        (256, 4, [w]), (257, 4, [h]), (258, 3, [bits, bits]), (259, 3, [1]), (262, 3, [1]),
        (273, 4, None), (277, 3, [2]), (278, 4, [h]), (279, 4, [len(x) for x in strips]),
        (284, 3, [2 if planar else 1]), (338, 3, [2]),
    ]
    tiff_by_hand(path, tags, strips)


def palette_tiff(path: Path, index: np.ndarray, bits: int, colour_map: np.ndarray) -> None:
    """A big-endian palette TIFF (PhotometricInterpretation 3) of `bits`-bit indices, packed
    most significant first, each row starting on a byte; `colour_map`: 3 x 2^bits values,
    red, green, blue. PIL writes 8-bit maps only, as v * 256."""
    h, w = index.shape
    rows = []
    for row in index:
        packed = np.zeros((w * bits + 7) // 8, np.uint8)
        for x, i in enumerate(row):
            bit = x * bits
            packed[bit // 8] |= int(i) << (8 - bits - bit % 8)
        rows.append(packed.tobytes())
    strip = b"".join(rows)
    tags = [
        (256, 4, [w]), (257, 4, [h]), (258, 3, [bits]), (259, 3, [1]), (262, 3, [3]),
        (273, 4, None), (277, 3, [1]), (278, 4, [h]), (279, 4, [len(strip)]),
        (320, 3, [int(v) for v in colour_map.reshape(-1)]),
    ]
    tiff_by_hand(path, tags, [strip], big_endian=True)


def jpeg_tiff(path: Path, img: Image.Image, chunk: tuple, tiled: bool) -> None:
    """A JPEG-compressed (7) YCbCr TIFF, 4:2:0, of strips `chunk[1]` rows high or tiles of
    `chunk` (the edge tiles padded by repeating the last row and column): each strip or tile
    a whole JPEG of its own by PIL (with its tables and a JFIF marker), as some writers make
    them; libtiff writes the tables once in JPEGTables (PIL's and cv2's files)."""
    w, h = img.size
    cw, ch = (chunk[0], chunk[1]) if tiled else (w, chunk[1])
    arr = np.asarray(img)
    parts = []
    for y in range(0, h, ch):
        for x in range(0, w, cw):
            part = arr[y : y + ch, x : x + cw]
            if tiled:
                part = np.pad(part, ((0, ch - part.shape[0]), (0, cw - part.shape[1]), (0, 0)), mode="edge")
            out = __import__("io").BytesIO()
            Image.fromarray(part).save(out, "JPEG", quality=85, subsampling="4:2:0")
            parts.append(out.getvalue())
    where = [(322, 4, [cw]), (323, 4, [ch]), (324, 4, None), (325, 4, [len(x) for x in parts])] if tiled else [
        (273, 4, None), (278, 4, [ch]), (279, 4, [len(x) for x in parts])]
    tags = [
        (256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (259, 3, [7]), (262, 3, [6]),
        (277, 3, [3]), (284, 3, [1]), (530, 3, [2, 2]),
    ] + where
    tiff_by_hand(path, tags, parts)


def jpeg_tiffs() -> None:
    """JPEG-compressed TIFFs: gradcam decodes their strips with libjpeg, as libtiff does."""
    # libtiff's (through PIL): RGB and gray, tables in JPEGTables; RGB in strips of 16 rows.
    picture(53, 37, 13).save(OUT / "rgb_jpeg_tiff.tif", compression="jpeg", quality=80)
    picture(41, 30, 14).convert("L").save(OUT / "gray_jpeg_tiff.tif", compression="jpeg", quality=85)
    picture(45, 70, 15).save(OUT / "rgb_strips_jpeg_tiff.tif", compression="jpeg", quality=90, strip_size=45 * 3 * 16)
    # YCbCr 4:2:0: strips of 16 rows (the last of 5), and tiles of 16 x 16 (the last column
    # and row padded). (cv2 5.0 reads no TIFF with an orientation tag other than 1.)
    jpeg_tiff(OUT / "ycbcr_strips_jpeg_tiff.tif", picture(45, 37, 16), (45, 16), tiled=False)
    jpeg_tiff(OUT / "ycbcr_tiles_jpeg_tiff.tif", picture(40, 30, 17), (16, 16), tiled=True)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    base = picture(45, 31, 1)
    cases = {
        # (what, PIL save options): odd sizes so the last MCU is partial.
        "s420": (base, dict(quality=90, subsampling="4:2:0")),
        "s422_progressive": (base, dict(quality=85, subsampling="4:2:2", progressive=True)),
        "s444": (picture(33, 40, 2), dict(quality=95, subsampling="4:4:4")),
        "s420_restarts": (picture(50, 37, 3), dict(quality=80, subsampling="4:2:0", restart_marker_blocks=2)),
        "gray": (picture(29, 23, 4).convert("L"), dict(quality=90)),
        # Print workflows' CMYK (PIL writes Adobe's inverted samples, as Photoshop does).
        "cmyk": (picture(31, 27, 6).convert("CMYK"), dict(quality=90)),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90° clockwise to view, as phones write portrait photos
    cases["s420_exif6"] = (picture(38, 26, 5), dict(quality=90, subsampling="4:2:0", exif=exif))
    for name, (img, opts) in cases.items():
        img.save(OUT / f"{name}.jpg", **opts)
    # 16-bit PNGs (scientific and medical sets): cv2 keeps the high byte of each sample.
    deep = np.random.RandomState(7).randint(0, 65536, (19, 23, 4)).astype(np.uint16)
    cv2.imwrite(str(OUT / "rgb16.png"), deep[..., :3])
    cv2.imwrite(str(OUT / "gray16.png"), deep[..., 0])
    cv2.imwrite(str(OUT / "rgba16.png"), deep)
    # 16-bit TIFFs: cv2 keeps a grayscale one's high byte but rounds a colour one's.
    cv2.imwrite(str(OUT / "gray16_tiff.tif"), deep[..., 1])
    cv2.imwrite(str(OUT / "rgb16_tiff.tif"), deep[..., 1:])
    # 16-bit gray + alpha: cv2 drops the alpha and keeps the gray's high byte, in both.
    gray_alpha16_png(OUT / "graya16.png", deep[..., 2:])
    gray_alpha_tiff(OUT / "graya16_tiff.tif", deep[..., 1:3])
    gray_alpha_tiff(OUT / "graya8_tiff.tif", (deep[..., 1:3] >> 8).astype(np.uint8))
    # The same samples planar (the gray plane, then the alpha): cv2 5.0 reads such a file as
    # garbage, so it has no cv2 pixels; src/image.rs checks it decodes as the interleaved one.
    (OUT / "planar").mkdir(exist_ok=True)
    gray_alpha_tiff(OUT / "planar" / "graya16_tiff.tif", deep[..., 1:3], planar=True)
    picture(27, 21, 8).save(OUT / "lossy.webp", quality=80)
    # 8-bit RGBA TIFF with unassociated alpha (ExtraSamples 2, as PIL writes it): cv2 reads it
    # through libtiff's RGBA interface, which multiplies the colour by the alpha.
    rgba = picture(25, 17, 9)
    rgba.putalpha(Image.fromarray(np.random.RandomState(10).randint(0, 256, (17, 25)).astype(np.uint8)))
    rgba.save(OUT / "rgba8_unassoc_tiff.tif")
    # Palette TIFFs (the `image` crate reads none): PIL's (8-bit, LZW; its map is v * 256);
    # 4-bit indices into a map of any 16-bit values, of which cv2 (libtiff) keeps the high
    # byte; 1-bit indices into a map of values below 256, which libtiff takes as 8-bit ones.
    picture(26, 19, 11).quantize(colors=97).save(OUT / "palette8_lzw_tiff.tif", compression="tiff_lzw")
    rng = np.random.RandomState(12)
    palette_tiff(OUT / "palette4_tiff.tif", rng.randint(0, 16, (15, 21)), 4, rng.randint(0, 65536, (3, 16)))
    palette_tiff(OUT / "palette1_map8_tiff.tif", rng.randint(0, 2, (9, 19)), 1, rng.randint(0, 256, (3, 2)))
    jpeg_tiffs()
    jpegtran = shutil.which("jpegtran")
    if jpegtran:
        subprocess.run(
            [jpegtran, "-arithmetic", "-outfile", str(OUT / "s420_arithmetic.jpg"), str(OUT / "s420.jpg")],
            check=True,
        )
    else:
        print("no jpegtran: s420_arithmetic.jpg left as it is", file=sys.stderr)
    for path in sorted(p for p in OUT.iterdir() if p.is_file() and not p.name.endswith(".npy")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        # PIL (libjpeg-turbo too) gives the same JPEG bits before the EXIF turn. (Its CMYK →
        # RGB differs, and it clips 16-bit samples.)
        if path.suffix == ".jpg" and "exif" not in path.stem and "cmyk" not in path.stem:
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), rgb), path
        np.save(OUT / f"{path.stem}.rgb.npy", rgb.astype(np.float32))  # (the tests read f32 .npy)
        print(f"{path.name}: {rgb.shape[1]}x{rgb.shape[0]}, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
