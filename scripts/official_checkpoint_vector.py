"""A tiny checkpoint written by `torch.save` from the official classes, as the real
`model.fp16.ckpt` is: `native/tests/data/official_tiny/{model.fp16.ckpt, config.yaml}`.

The official Hunyuan3D-2.1 bundle is `torch.save({"model": dit.state_dict(), "vae":
vae.state_dict(), "conditioner": conditioner.state_dict()})` in fp16 (OrderedDicts with their
`_metadata`, HalfStorage, the VAE's point-cloud encoder included). This builds the same classes
(`hy3dshape`) at a tiny size with the 2.1 config's fields, casts them to fp16, saves them that
way, and writes the matching config.yaml; plus `reference.safetensors`: the official DiT's
output for a fixed input, so the test can check the weights survive the conversion.

    python scripts/official_checkpoint_vector.py --hy3dshape <Hunyuan3D-2.1>/hy3dshape \
        -o native/tests/data/official_tiny
"""

import argparse
import importlib
import pathlib
import sys

import torch
import yaml
from safetensors.torch import save_file

CONFIG = """model:
  target: hy3dshape.models.denoisers.hunyuandit.HunYuanDiTPlain
  params:
    input_size: &num_latents 16
    in_channels: 8
    hidden_size: 32
    context_dim: 32
    depth: 3
    num_heads: 2
    qk_norm: true
    text_len: 17
    with_decoupled_ca: false
    use_attention_pooling: false
    qk_norm_type: 'rms'
    qkv_bias: false
    use_pos_emb: false
    num_moe_layers: 1
    num_experts: 2
    moe_top_k: 2
vae:
  target: hy3dshape.models.autoencoders.ShapeVAE
  params:
    num_latents: *num_latents
    embed_dim: 8
    num_freqs: 8
    include_pi: false
    heads: 2
    width: 32
    num_encoder_layers: 1
    num_decoder_layers: 1
    qkv_bias: false
    qk_norm: true
    scale_factor: 1.0039506158752403
    geo_decoder_mlp_expand_ratio: 4
    geo_decoder_downsample_ratio: 1
    geo_decoder_ln_post: true
    point_feats: 4
    pc_size: 64
    pc_sharpedge_size: 0
conditioner:
  target: hy3dshape.models.conditioner.SingleImageEncoder
  params:
    main_image_encoder:
        type: DinoImageEncoder
        kwargs:
            config:
              attention_probs_dropout_prob: 0.0
              drop_path_rate: 0.0
              hidden_act: gelu
              hidden_dropout_prob: 0.0
              hidden_size: 32
              image_size: 56
              initializer_range: 0.02
              layer_norm_eps: 1.e-6
              layerscale_value: 1.0
              mlp_ratio: 4
              model_type: dinov2
              num_attention_heads: 2
              num_channels: 3
              num_hidden_layers: 1
              patch_size: 14
              qkv_bias: true
              torch_dtype: float32
              use_swiglu_ffn: false
            image_size: 56
            use_cls_token: true
scheduler:
  target: hy3dshape.schedulers.FlowMatchEulerDiscreteScheduler
  params:
    num_train_timesteps: 1000
image_processor:
  target: hy3dshape.preprocessors.ImageProcessorV2
  params:
    size: 512
    border_ratio: 0.15
pipeline:
  target: hy3dshape.pipelines.Hunyuan3DDiTFlowMatchingPipeline
"""


def build(section):
    module, cls = section["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(**section.get("params", {}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hy3dshape", required=True)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.hy3dshape)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(20261129)
    config = yaml.safe_load(CONFIG)
    parts = {part: build(config[part]).eval() for part in ("model", "vae", "conditioner")}
    with torch.no_grad():
        for module in parts.values():
            for p in module.parameters():
                p.copy_(torch.randn_like(p) * (0.5 / max(1, p.shape[-1]) ** 0.5 if p.dim() > 1 else 0.1) + (1.0 if p.dim() == 1 and p.numel() > 8 else 0.0))
            module.half()
        (out / "config.yaml").write_text(CONFIG)
        torch.save({part: module.state_dict() for part, module in parts.items()}, out / "model.fp16.ckpt")
        dit = parts["model"].float()
        x = torch.randn(1, 16, 8)
        context = torch.randn(1, 17, 32)
        t = torch.tensor([0.25])
        save_file({"x": x, "t": t, "context": context, "out": dit(x, t, {"main": context}).contiguous()}, out / "reference.safetensors")


if __name__ == "__main__":
    main()
