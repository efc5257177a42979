"""Test vectors for the turbo (FlashVDM) shape decoder, from the official classes.

`enable_flashvdm()` swaps in the turbo VAE (`hunyuan3d-vae-v2-0-turbo`, `-v2-mini-turbo`):
the same `ShapeVAE` code with a lighter geometry decoder (`geo_decoder_downsample_ratio` r: a
`latents_proj` Linear(width -> width / r) ahead of a decoder of width / r and heads / r;
`geo_decoder_ln_post: false`, which also turns the decoder's qk-norm off), decoded by
`FlashVDMVolumeDecoding`: coarse-to-fine levels with adaptive key/value selection (each
mini-grid of the first level, and each spatial bucket of the later ones, attends only to the
latents its sampled queries score highest). This writes `engine/tests/data/turbo_vae.safetensors`
with the weights under their official names (`vae.…`, F16) and, in F32:

* `latents_in` [1, M, E]: the sampler's latents (scaled, as the pipeline hands them over);
* `decoded_latents` [1, M, W]: after `post_kl` and the transformer;
* `query_points` [1, P, 3] and `field` [1, P]: the geometry decoder with its default (full)
  cross-attention;
* `flashvdm` [R' + 1]^3: `FlashVDMVolumeDecoding`'s grid at `octree_resolution` R with
  `min_resolution` given (NaN where it asked nothing), `topk_mode='mean'`;
* `flashvdm_resolutions` (I64): its levels' resolutions.

The config is in the io file's metadata (`config`, JSON) with the decoding settings. Weights are
drawn as the fixtures' `vae` stage draws them (fixtures.json `init_rules`), rounded to F16 before
the run, and the output projection is made steeper (x6, so most of the grid is beyond
±0.95 as a trained field is) and its bias set so about 30 % of the grid is inside.

The official files are those of the fixtures' snapshot of Hunyuan3D-2 (2ee4770; its
`volume_decoders.py` and `attention_processors.py` are unchanged at 9bcf302), with the package's
top `__init__.py` emptied; run with torch 2.15:

    python scripts/turbo_vae_vectors.py --hy3dgen <Hunyuan3D-2> -o engine/tests/data/turbo_vae
"""

import argparse
import json
import sys

import torch
from safetensors.torch import save_file

CONFIG = {
    "num_latents": 48,
    "embed_dim": 8,
    "width": 64,
    "heads": 4,
    "num_decoder_layers": 1,
    # Two frequencies: a smooth field, so the finer level is a real selection (with eight the
    # random field crosses zero in nearly every coarse cell).
    "num_freqs": 2,
    "include_pi": False,
    "qkv_bias": False,
    "qk_norm": True,
    "scale_factor": 1.0039506158752403,
    "geo_decoder_downsample_ratio": 2,
    "geo_decoder_mlp_expand_ratio": 2,
    "geo_decoder_ln_post": False,
}
# Small enough to commit: two levels, [15, 30] after FlashVDM's snapping.
OCTREE_RESOLUTION = 32
MIN_RESOLUTION = 15
NUM_CHUNKS = 4000


def init(vae, generator):
    """The fixtures' rules: norms 1 + 0.1 N / 0.1 N, weights N(0, 1 / fan_in), biases 0.05 N."""
    for name, p in vae.named_parameters():
        with torch.no_grad():
            if "norm" in name or ".ln_" in name or name.startswith("ln_"):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=generator))
            elif name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[1] ** 0.5)
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
            # As stored: F16.
            p.copy_(p.half().float())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hy3dgen", required=True, help="a checkout of Tencent-Hunyuan/Hunyuan3D-2")
    parser.add_argument("-o", "--output", required=True, help="the files' prefix")
    args = parser.parse_args()
    torch.set_num_threads(2)
    sys.path.insert(0, args.hy3dgen)
    from hy3dgen.shapegen.models.autoencoders import ShapeVAE, FlashVDMVolumeDecoding
    from hy3dgen.shapegen.models.autoencoders.volume_decoders import generate_dense_grid_points

    generator = torch.Generator().manual_seed(31)
    vae = ShapeVAE(**CONFIG).eval()
    init(vae, generator)
    # A field that saturates away from the surface, as a trained one does (|field| < 0.95 is
    # refined by FlashVDM wherever it is): steeper than the draw.
    with torch.no_grad():
        weight = vae.geo_decoder.output_proj.weight
        weight.copy_((weight * 6).half().float())
    latents = torch.randn((1, CONFIG["num_latents"], CONFIG["embed_dim"]), generator=generator)
    with torch.no_grad():
        decoded = vae(latents / CONFIG["scale_factor"])
        # The output bias that puts ~30 % of the dense grid inside (positive).
        xyz, _, _ = generate_dense_grid_points(
            torch.tensor([-1.01] * 3).numpy(), torch.tensor([1.01] * 3).numpy(), OCTREE_RESOLUTION
        )
        dense = vae.geo_decoder(
            queries=torch.from_numpy(xyz).reshape(1, -1, 3), latents=decoded
        ).flatten()
        bias = vae.geo_decoder.output_proj.bias
        shift = -torch.quantile(dense, 0.7)
        bias.copy_((bias + shift).half().float())

        points = (torch.rand((1, 1000, 3), generator=generator) * 2 - 1) * 1.01
        field = vae.geo_decoder(queries=points, latents=decoded)[..., 0]

        # The official code sorts the later levels' points into buckets with torch's unstable
        # sort, so which points of a bucket are sampled (every 50th) depends on the sort's
        # implementation (it differs between CPU and CUDA, and from a stable sort here). The
        # vectors keep the points' order within a bucket (a stable sort), as the engine does.
        unstable_sort = torch.Tensor.sort
        torch.Tensor.sort = lambda self, *a, **k: unstable_sort(self, *a, stable=True, **k)
        grid = FlashVDMVolumeDecoding()(
            decoded,
            vae.geo_decoder,
            bounds=1.01,
            num_chunks=NUM_CHUNKS,
            octree_resolution=OCTREE_RESOLUTION,
            min_resolution=MIN_RESOLUTION,
            mc_level=0.0,
            enable_pbar=False,
        )[0]
        torch.Tensor.sort = unstable_sort
    side = grid.shape[0]
    resolutions = [side - 1 >> 1, side - 1]
    finite = torch.isfinite(grid)
    print(
        f"grid {tuple(grid.shape)}: {int(finite.sum())} points asked, "
        f"{int((grid[finite] > 0).sum())} inside; field range "
        f"[{float(field.min()):.3f}, {float(field.max()):.3f}], inside {float((field > 0).float().mean()):.2f}"
    )
    weights = {f"vae.{k}": v.half().contiguous() for k, v in vae.state_dict().items()}
    tensors = {
        "latents_in": latents.contiguous(),
        "decoded_latents": decoded.contiguous(),
        "query_points": points.contiguous(),
        "field": field.contiguous(),
        "flashvdm": grid.float().contiguous(),
        "flashvdm_resolutions": torch.tensor(resolutions, dtype=torch.int64),
    }
    metadata = {
        "config": json.dumps(CONFIG),
        "octree_resolution": str(OCTREE_RESOLUTION),
        "min_resolution": str(MIN_RESOLUTION),
        "num_chunks": str(NUM_CHUNKS),
        "torch": torch.__version__,
    }
    save_file(weights, f"{args.output}.weights.safetensors")
    save_file(tensors, f"{args.output}.io.safetensors", metadata=metadata)


if __name__ == "__main__":
    main()
