"""The official classes' checkpoint layouts, for `native/tests/data/official_layouts.json`.

For each config.yaml under `--configs` (as `orfeas synthesize` writes them: `<variant>/<scale>/
config.yaml`), build the official modules named by its targets on PyTorch's meta device (no
memory, whatever the size) and record every `state_dict()` tensor name and shape under the
bundle's prefixes (`model.`, `vae.`, `conditioner.`): the count and the sha256 of the sorted
`name:d0,d1,…` lines, and for the reduced sizes the whole list. 2.1 configs use `hy3dshape` (the
Hunyuan3D-2.1 repository), the 2.0 family `hy3dgen.shapegen` (the Hunyuan3D-2 repository),
as their targets say. The test `synthetic_layouts_are_the_official_ones` compares our
generator's layouts with these.

The checkouts are the fixtures' snapshots (Hunyuan3D-2.1 5e3ec6d, Hunyuan3D-2 2ee4770: a later
Hunyuan3D-2 adds the point-cloud encoder to its `ShapeVAE`), each package's top `__init__.py`
emptied (it imports the whole pipeline); besides torch the imports want scikit-image,
omegaconf, timm and diffusers 0.30. The 2mv family's layouts are 2.0's: its multi-view encoder's
view table is built at construction, not stored.

    python scripts/official_layouts.py --hy3dshape <Hunyuan3D-2.1>/hy3dshape \
        --hy3dgen <Hunyuan3D-2> --configs <dir> -o native/tests/data/official_layouts.json
"""

import argparse
import hashlib
import importlib
import json
import pathlib
import sys

import torch
import yaml


def build(section):
    module, cls = section["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**section.get("params", {}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hy3dshape", required=True)
    parser.add_argument("--hy3dgen", required=True)
    parser.add_argument("--configs", required=True)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    sys.path[:0] = [args.hy3dshape, args.hy3dgen]
    out = {}
    for path in sorted(pathlib.Path(args.configs).glob("*/*/config.yaml")):
        variant, scale = path.parent.parent.name, path.parent.name
        config = yaml.safe_load(path.read_text())
        layout = {}
        with torch.device("meta"):
            for part in ("model", "vae", "conditioner"):
                for name, tensor in build(config[part]).state_dict().items():
                    layout[f"{part}.{name}"] = list(tensor.shape)
        lines = "".join(f"{name}:{','.join(map(str, shape))}\n" for name, shape in sorted(layout.items()))
        entry = {"tensors": len(layout), "sha256": hashlib.sha256(lines.encode()).hexdigest()}
        if scale == "reduced":
            # Small enough to keep whole, for a readable difference.
            entry["layout"] = layout
        out.setdefault(variant, {})[scale] = entry
        print(f"{variant}/{scale}: {len(layout)} tensors")
    with open(args.output, "w") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main()
