"""Test vectors for the multi-view (2mv) conditioner, from the official classes.

Hunyuan3D-2mv conditions on up to four views of one object. The official
`MVImageProcessorV2` pre-processes each view as `ImageProcessorV2` does and sorts the views
by its `view2idx` (front 0, left 1, back 2, right 3); `DinoImageEncoderMV` runs DINOv2 on each
view, adds a fixed 1-D sin-cos embedding of the view's index to every one of its tokens, and
concatenates the views along the tokens. This writes `engine/tests/data/mv_conditioner.safetensors`:

* `view_embed` [4, D]: the encoder's view table (`view_embed[0, :, 0, :]`);
* `views` (I64) [3]: the view indices after sorting, for a dict given as {back, right, front};
* `images` [3, 3, S, S]: the processor's output for those views (S = `--size`), in [-1, 1];
* `tokens` [1, 3 * T, D]: the encoder's output for them (T = 1 + (56 / 14)^2 = 17);
* `uncond` shape only, as `uncond_tokens` = its token count (I64 scalar in a [1] tensor).

The views: front = the fixtures' `preprocess_input_0.png`, back = `preprocess_input_1.png`,
right = `preprocess_input_0.png` mirrored left to right. The encoder is the fixtures' tiny
DINOv2 (`dinov2.weights.safetensors`, config from `fixtures.json`), `use_cls_token` true.

The two official files are loaded by path (their package `__init__` would import the whole
pipeline); they are the same at the fixtures' snapshot of Hunyuan3D-2 (2ee4770) and at 9bcf302
(2025-06-23), where this was run (torch 2.15.0, transformers 4.46.0):

    pip install torch torchvision transformers==4.46.0 opencv-python-headless einops safetensors pillow
    python scripts/mv_conditioner_vectors.py --hy3dgen <Hunyuan3D-2> \
        --fixtures ../shared/fixtures/public -o engine/tests/data/mv_conditioner.safetensors
"""

import argparse
import importlib.util
import json
import pathlib

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

PREFIX = "conditioner.main_image_encoder."


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hy3dgen", required=True, help="a checkout of Tencent-Hunyuan/Hunyuan3D-2")
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--size", type=int, default=64, help="the processor's side")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = pathlib.Path(args.hy3dgen) / "hy3dgen" / "shapegen"
    conditioner = load(root / "models" / "conditioner.py", "official_conditioner")
    preprocessors = load(root / "preprocessors.py", "official_preprocessors")
    fixtures = pathlib.Path(args.fixtures)
    dino = json.loads((fixtures / "fixtures.json").read_text())["dinov2"]["config"]

    encoder = conditioner.DinoImageEncoderMV(
        config=dino["config"], view_num=4, **dino["encoder_kwargs"]
    )
    weights = {
        k[len(PREFIX):]: v.float()
        for k, v in load_file(fixtures / "dinov2.weights.safetensors").items()
        if k.startswith(PREFIX)
    }
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    # The view table is built at construction, not stored in the checkpoint.
    assert not unexpected and not missing, (missing, unexpected)
    encoder.eval()

    front = Image.open(fixtures / "preprocess_input_0.png")
    back = Image.open(fixtures / "preprocess_input_1.png")
    right = front.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    processor = preprocessors.MVImageProcessorV2(size=args.size)
    processed = processor({"back": back, "right": right, "front": front})
    views = list(processed["view_idxs"])
    with torch.no_grad():
        tokens = encoder(processed["image"], view_idxs=[views])
        uncond = encoder.unconditional_embedding(1, view_idxs=[views])
    tensors = {
        "view_embed": encoder.view_embed[0, :, 0, :].contiguous().float(),
        "views": torch.tensor(views, dtype=torch.int64),
        "images": processed["image"][0].contiguous().float(),
        "tokens": tokens.contiguous().float(),
        "uncond_tokens": torch.tensor([uncond.shape[1]], dtype=torch.int64),
    }
    assert torch.count_nonzero(uncond) == 0
    save_file(tensors, args.output)
    for name, t in tensors.items():
        print(name, tuple(t.shape), t.dtype)


if __name__ == "__main__":
    main()
