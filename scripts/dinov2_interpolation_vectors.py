"""Test vectors for DINOv2 position-embedding interpolation, from Hugging Face's own code.

Hunyuan3D's conditioner runs `transformers.Dinov2Model` (4.46.0, the version the fixtures were
made with); when the image is not the size the position table was trained for, HF's
`Dinov2Embeddings.interpolate_pos_encoding` resamples the table (bicubic, align_corners=False,
computed in float32). This writes `engine/tests/data/dinov2_interpolation.safetensors`:

* `table.in` [1, 1 + 37*37, 8] and `table.out` [1, 1 + 73*73, 8]: a random table resampled from
  37x37 to 73x73 (2mini-turbo's 1022 px over DINOv2's 518 px table), through HF's method;
* `model.*`: a tiny random Dinov2Model (hidden 32, 2 layers, 4 heads, patch 14, table for 56 px)
  under the official checkpoint names (`conditioner.main_image_encoder.model.`), values rounded
  to fp16 like the fixtures;
* `pixels.{n}` [1, 3, n, n] and `hidden.{n}` [1, 1 + (n/14)^2, 32] for n = 98 (upsampled table)
  and n = 42 (downsampled table): the model's last hidden state.

    pip install torch transformers==4.46.0 safetensors
    python scripts/dinov2_interpolation_vectors.py -o engine/tests/data/dinov2_interpolation.safetensors
"""

import argparse

import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(20261129)
    tensors = {}

    # The table alone, at the real sizes.
    config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, patch_size=14, image_size=518)
    model = Dinov2Model(config).eval()
    table = torch.randn(1, 1 + 37 * 37, 8, generator=g).half().float()
    with torch.no_grad():
        model.embeddings.position_embeddings.copy_(table)
        dummy = torch.zeros(1, 1 + 73 * 73, 8)
        resampled = model.embeddings.interpolate_pos_encoding(dummy, 1022, 1022)
    tensors["table.in"] = table
    tensors["table.out"] = resampled.contiguous()

    # A tiny model run at other sizes than its table's.
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=56,
        mlp_ratio=4, layer_norm_eps=1e-6, qkv_bias=True, use_swiglu_ffn=False, layerscale_value=1.0,
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                value = 0.05 * torch.randn(p.shape, generator=g)
            elif "norm" in name and name.endswith("weight"):
                value = 1 + 0.1 * torch.randn(p.shape, generator=g)
            elif "lambda1" in name:
                value = 0.5 + 0.2 * torch.randn(p.shape, generator=g)
            elif name.split(".")[-1] in ("cls_token", "mask_token", "position_embeddings"):
                value = 0.5 * torch.randn(p.shape, generator=g)
            else:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=g) / fan_in**0.5
            p.copy_(value.half().float())
            tensors[f"model.conditioner.main_image_encoder.model.{name}"] = p.detach().clone().half()
        for n in [98, 42]:
            pixels = torch.randn(1, 3, n, n, generator=g)
            tensors[f"pixels.{n}"] = pixels
            tensors[f"hidden.{n}"] = model(pixels).last_hidden_state.contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.output)


if __name__ == "__main__":
    main()
