"""How far the official code's own fp16 run lands from its fp32 run, per stage, on a fixture set.

The f16 parity tests (`engine/tests/parity_f16.rs`) bound our f16 error by a multiple of this
spread. Run it where the official Hunyuan3D-2.1 sources and PyTorch are available:

    python scripts/fp16_reference.py --hy3dshape <Hunyuan3D-2.1>/hy3dshape \
        --fixtures ../shared/fixtures/public -o engine/tests/data/fp16_reference.json

Every network is built by the official classes from the fixture configs and weights (F16 values
already, so fp16 loses nothing on the weights), then run twice on the fixture inputs: once in
fp32 and once with the module and its inputs cast to fp16 (`.half()`, as the official pipeline's
`.to(dtype=torch.float16)` does), the scheduler's Euler step in fp32 cast back to fp16 as the
official scheduler does. Recorded per quantity: max |fp16 - fp32|, max |fp32|, and their ratio
(the tests scale the ratio by another set's own max |reference|). PyTorch on the CPU (fp16 GEMMs
accumulate in fp32, like cuBLAS's default).
"""

import argparse
import json
import sys

import numpy as np
import torch
from safetensors.numpy import load_file


def stripped(weights, prefix):
    return {k[len(prefix):]: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items() if k.startswith(prefix)}


def spread(fp16, fp32):
    a = fp16.detach().float().numpy().astype(np.float64)
    b = fp32.detach().float().numpy().astype(np.float64)
    diff = float(np.abs(a - b).max())
    ref = float(np.abs(b).max())
    return {"max_abs": diff, "max_ref": ref, "max_abs_over_max_ref": diff / ref if ref else 0.0}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hy3dshape", required=True, help="the official hy3dshape folder (holds the hy3dshape package)")
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.hy3dshape)
    from transformers import Dinov2Config, Dinov2Model
    from hy3dshape.models.denoisers.hunyuandit import HunYuanDiTPlain
    from hy3dshape.models.denoisers.hunyuan3ddit import Hunyuan3DDiT
    from hy3dshape.models.autoencoders import ShapeVAE
    from hy3dshape.models.autoencoders.volume_decoders import VanillaVolumeDecoder
    from hy3dshape.models.conditioner import DinoImageEncoder
    from skimage import measure

    torch.set_num_threads(2)
    fx = args.fixtures
    spec = json.load(open(f"{fx}/fixtures.json"))
    out = {"torch": torch.__version__, "device": "cpu", "stages": {}}
    io = lambda name: {k: torch.from_numpy(v.astype(np.float32) if v.dtype != np.uint8 else v) for k, v in load_file(f"{fx}/{name}").items()}

    def both(module, run):
        module.float().eval()
        with torch.no_grad():
            full = run(module, torch.float32)
            module.half()
            half = run(module, torch.float16)
            module.float()
        return half, full

    # DINOv2 on the stored pixel values.
    dino_cfg = spec["dinov2"]["config"]
    encoder = DinoImageEncoder(config=dino_cfg["config"], **dino_cfg["encoder_kwargs"])
    encoder.model.load_state_dict(stripped(load_file(f"{fx}/dinov2.weights.safetensors"), "conditioner.main_image_encoder.model."))
    d = io("dinov2.io.safetensors")
    half, full = both(encoder.model, lambda m, dt: m(d["pixel_values"].to(dt)).last_hidden_state)
    out["stages"]["dinov2"] = {"last_hidden_state": spread(half, full)}

    # The 2.1 DiT on both cases.
    dit21 = HunYuanDiTPlain(**spec["dit21"]["config"]["params"])
    dit21.load_state_dict(stripped(load_file(f"{fx}/dit21.weights.safetensors"), "model."))
    d = io("dit21.io.safetensors")
    stage = {}
    for case in ["cfg", "gen"]:
        run = lambda m, dt: m(d[f"{case}.x"].to(dt), d[f"{case}.t"].to(dt), {"main": d[f"{case}.context"].to(dt)})
        half, full = both(dit21, run)
        stage[case] = spread(half, full)
    out["stages"]["dit21"] = stage

    # The 2.0 DiT on both cases (guidance from the io file where the set has one).
    params = spec["dit20"]["config"]["params"]
    dit20 = Hunyuan3DDiT(**params)
    dit20.load_state_dict(stripped(load_file(f"{fx}/dit20.weights.safetensors"), "model."))
    d = io("dit20.io.safetensors")
    stage = {}
    for case in ["pipe", "gen"]:
        def run(m, dt, case=case):
            kwargs = {}
            if f"{case}.guidance" in d:
                kwargs["guidance"] = d[f"{case}.guidance"].to(dt)
            return m(d[f"{case}.x"].to(dt), d[f"{case}.t"].to(dt), {"main": d[f"{case}.context"].to(dt)}, **kwargs)
        half, full = both(dit20, run)
        stage[case] = spread(half, full)
    out["stages"]["dit20"] = stage

    # The sampler: DINOv2 on the image, the pipeline's CFG loop with the 2.1 DiT from the stored noise.
    s = io("sampler.io.safetensors")
    steps = spec["sampler"]["config"]["num_inference_steps"]
    scale = spec["sampler"]["config"]["guidance_scale"]
    sigmas = np.linspace(0, 1, steps)
    sigmas_next = np.append(sigmas[1:], 1.0)

    def sample(dt):
        encoder.to(dt)
        dit21.to(dt)
        with torch.no_grad():
            cond = encoder(s["image_in"].to(dt))
            cond = torch.cat([cond, torch.zeros_like(cond)], 0)
            x = s["initial_noise"].to(dt)
            for sigma, sigma_next in zip(sigmas, sigmas_next):
                t = torch.tensor([sigma * 1000.0] * 2, dtype=torch.float32).to(dt) / 1000
                v = dit21(torch.cat([x, x]), t, {"main": cond})
                v_cond, v_uncond = v.chunk(2)
                v = v_uncond + scale * (v_cond - v_uncond)
                x = (x.float() + float(np.float32(sigma_next) - np.float32(sigma)) * v).to(v.dtype)
        encoder.float()
        dit21.float()
        return x

    latents16, latents32 = sample(torch.float16), sample(torch.float32)
    out["stages"]["sampler"] = {"final_latents": spread(latents16, latents32)}

    # The VAE: decoded latents and the field on the stored latents; then the whole chain's field
    # and mesh from each precision's own latents.
    vae_cfg = spec["vae"]["config"]
    vae = ShapeVAE(**vae_cfg["params"])
    missing, unexpected = vae.load_state_dict(stripped(load_file(f"{fx}/vae.weights.safetensors"), "vae."), strict=False)
    assert not unexpected and all(k.startswith("encoder.") or k.startswith("pre_kl.") for k in missing), missing
    v = io("vae.io.safetensors")
    resolution = vae_cfg["octree_resolution"]
    decoder = VanillaVolumeDecoder()

    def field(m, dt, latents):
        decoded = m(latents.to(dt) / m.scale_factor)
        grid = decoder(decoded, m.geo_decoder, bounds=1.01, num_chunks=1000, octree_resolution=resolution, enable_pbar=False)
        return decoded, grid

    (dec16, field16), (dec32, field32) = both(vae, lambda m, dt: field(m, dt, v["latents_in"]))
    stage = {"decoded_latents": spread(dec16, dec32), "field_same_latents": spread(field16, field32)}
    with torch.no_grad():
        vae.half()
        _, chain16 = field(vae, torch.float16, latents16)
        vae.float()
        _, chain32 = field(vae, torch.float32, latents32)
    stage["field_chain"] = spread(chain16, chain32)
    faces = {}
    for name, grid in [("fp16", chain16), ("fp32", chain32)]:
        _, f, _, _ = measure.marching_cubes(grid[0].float().numpy(), 0.0, method="lewiner")
        faces[name] = int(len(f))
    stage["mesh_faces"] = faces
    out["stages"]["vae"] = stage

    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
