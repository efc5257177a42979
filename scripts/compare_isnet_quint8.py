"""ISNet q8 (ours) against imgly's quint8 ISNet, side by side, on the fixture photos.

Each cut-out's alpha is compared with the reference matte (imgly's f16 `medium` model under
onnxruntime, `isnet.io.safetensors` → `img{i}.alpha_u8_src`): IoU of the masks (alpha >= 128),
mean alpha error, share of pixels more than 2 levels off. Ours come from `orfeas remove-bg`
(the f16 set and the q8 set, CPU backend); imgly's quint8 model (`/models/small` of
@imgly/background-removal-data, reassembled from its sha256-named chunks) runs under
onnxruntime on the same input planes, with the reference's post-processing (checked here by
applying it to the reference's own probabilities).

Usage (scripts/compare-isnet-quint8.sh sets up the venv): python compare_isnet_quint8.py
    DIST FIXTURES ORFEAS ISNET_F16 ISNET_Q8
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from PIL import Image
from safetensors.numpy import load_file


def reassemble(dist, resource):
    entry = json.load(open(os.path.join(dist, "resources.json")))[resource]
    model = b""
    for chunk in entry["chunks"]:
        data = open(os.path.join(dist, chunk["hash"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == chunk["hash"], chunk["hash"]
        model += data
    return model


def matte(probabilities, width, height):
    """The reference's post-processing: the 1024² probabilities stretched back to the photo."""
    image = Image.fromarray(probabilities.astype(np.float32), mode="F")
    resized = np.asarray(image.resize((width, height), Image.BILINEAR))
    return np.clip(np.round(resized * 255.0), 0, 255).astype(np.uint8)


def scores(alpha, reference):
    a, b = alpha >= 128, reference >= 128
    iou = (a & b).sum() / max((a | b).sum(), 1)
    diff = np.abs(alpha.astype(np.int32) - reference.astype(np.int32))
    return iou, diff.mean() / 255.0, (diff > 2).mean()


def main(dist, fixtures, orfeas, isnet_f16, isnet_q8):
    io = load_file(os.path.join(fixtures, "isnet.io.safetensors"))
    small = reassemble(dist, "/models/small")
    session = ort.InferenceSession(small, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    print(f"imgly quint8 model: {len(small)} bytes; ours: f16 and q8 sets")
    print("| photo | cut-out | IoU vs reference | mean alpha error | pixels > 2 levels off |")
    print("|---|---|---|---|---|")
    probability_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            photo = os.path.join(fixtures, f"isnet_input_{i}.png")
            width, height = Image.open(photo).size
            reference = io[f"img{i}.alpha_u8_src"].reshape(height, width)
            planes = io[f"img{i}.input_u8"].astype(np.float32)
            x = ((planes - 128.0) / 256.0).reshape(1, 3, 1024, 1024)
            rows = []
            own = matte(io[f"img{i}.output"].astype(np.float32).reshape(1024, 1024), width, height)
            rows.append(("reference probabilities, this post-processing", own))
            out = session.run(None, {name: x})[0].reshape(1024, 1024)
            rows.append(("imgly quint8 (onnxruntime)", matte(out, width, height)))
            # The same at the probabilities (1024², no post-processing): what
            # engine/tests/parity_isnet.rs measures for ours.
            ref = io[f"img{i}.output"].astype(np.float32).reshape(1024, 1024)
            a, b = out > 0.5, ref > 0.5
            probability_rows.append(
                f"| {i} | imgly quint8 | {(a & b).sum() / max((a | b).sum(), 1):.5f} | "
                f"{np.abs(out - ref).mean():.2e} | {np.abs(out - ref).max():.2e} |"
            )
            for label, weights in (("ours f16 set", isnet_f16), ("ours q8 set", isnet_q8)):
                png = os.path.join(tmp, f"{i}.png")
                subprocess.run(
                    [orfeas, "remove-bg", photo, "-o", png, "--isnet", weights, "--force"],
                    check=True,
                    capture_output=True,
                )
                rows.append((label, np.asarray(Image.open(png).convert("RGBA"))[..., 3]))
            for label, alpha in rows:
                iou, error, off = scores(alpha, reference)
                print(f"| {i} | {label} | {iou:.5f} | {error:.2e} | {off * 100:.3f} % |")
    print()
    print("| photo | model | IoU of the 0.5 masks vs reference | mean abs | max abs |")
    print("|---|---|---|---|---|")
    for row in probability_rows:
        print(row)


if __name__ == "__main__":
    main(*sys.argv[1:6])
