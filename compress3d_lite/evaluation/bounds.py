"""How far a generator conditioned on two global embeddings can go on our data: three bounds,
measured on the val split beside the diagnosis rows (``evaluate diagnose --bounds``).

    retrieval (prior e_s)   the training object whose shape embedding is nearest the prior's sample,
                            its VAE latent decoded: what memorising the training set would give
    retrieval (true e_s)    the same from the true object's shape embedding (a perfect prior)
    regression              a small deterministic MLP (e_i, e_s) -> normalised latent, trained with
                            MSE for a fixed short budget on the training objects (the pipeline's
                            StartEstimate, ``stages/start.fit_start``): a generator without noise
                            (with the prior's sample, and with the true e_s)
    regression, refined     the regression's latent (prior e_s) noised to t/T = s and denoised by the
                            UNet (the pipeline's SDEdit start): whether the deterministic estimate's
                            colours and the UNet's detail combine
    loss per noise band     the shipped UNet's loss (its own parametrisation, MSE) in bands of the
                            timestep, on training latents and on held-out latents: where in the
                            noise range the model is still wrong, and whether it memorised

The training objects are the UNet's own training recipe (toy seed 0, the number it records),
regenerated into ``cache`` once with one rendered view each (its image embedding is what the
regression reads). Every row is scored by ``generate.measure_case``, as the diagnosis rows are.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..config import SampleSpec
from ..data.io import read_index
from ..data.toyshapes import write_toyshapes
from ..diffusion import is_flow, make_scheduler, noisy, target_for
from ..inference.embed import embed_folder
from ..inference.vae import encode_latents
from ..stages.start import fit_start
from .generate import VIEW_RES, Bench, _view, measure_latents, summary_line, true_latents

log = logging.getLogger(__name__)

N_BANDS = 10  # timestep bands of the per-band loss, each 1/N_BANDS of the schedule


def training_gallery(bench: Bench, cache, n: int | None = None, progress: bool = True) -> dict:
    """{"z": (N, 3, c', r', r') normalised latents, "e_s": (N, D), "e_i": (N, D)} of the UNet's
    training objects (the first ``n``; default the number its config records), made once in
    ``cache`` (toy objects of seed 0 with one view) and read from ``cache/gallery.pt`` after."""
    pipe = bench.pipe
    n = n or int(pipe.unet_cfg.get("data", {}).get("n_objects", 512))
    cache = Path(cache)
    saved = cache / f"gallery_{n}.pt"
    if saved.exists():
        return torch.load(saved)
    folder = cache / f"toy_seed0_{n}"
    spec = SampleSpec(n_points=4096, n_uniform=256, n_near=256, views=1, resolution=pipe.tower.cfg.image_size)
    if not (folder / "index.json").exists() or read_index(folder, allow_unfinished=True).get("complete") is False:
        write_toyshapes(n, folder, spec, seed=0, workers=2, progress=progress)
    vae_points = int(pipe.vae_cfg.get("train", {}).get("n_points", 2048))
    mu = encode_latents(pipe.vae, folder, vae_points, pipe.device, progress=progress)
    emb = embed_folder(pipe.tower, pipe.shape_tower, folder, n_points=pipe.shape_points, progress=progress)
    gallery = {"z": ((mu.to(pipe.device) - pipe.latent_mean) / pipe.latent_std).cpu(),
               "e_s": emb["e_s"], "e_i": emb["e_i"][:, 0]}
    torch.save(gallery, saved)
    return gallery


def case_embeddings(bench: Bench, seed: int = 0) -> dict:
    """{"e_i", "e_s prior", "e_s true"}: (n, D) each, for the held-out cases (prior noise as in
    ``generate_case_latents``: one generator of ``seed`` per case)."""
    pipe = bench.pipe
    idx = list(range(len(bench.cases)))
    e_i = pipe.embed_images([_view(bench, k, VIEW_RES) for k in idx])
    gens = [torch.Generator().manual_seed(seed) for _ in idx]
    return {"e_i": e_i, "e_s prior": pipe.sample_shape_embeds(e_i, gens), "e_s true": bench.gallery.to(pipe.device)}


def retrieve(gallery: dict, e_s: torch.Tensor) -> torch.Tensor:
    """The normalised training latents whose shape embeddings are nearest (cosine) to ``e_s``."""
    best = (e_s.cpu() @ gallery["e_s"].T).argmax(dim=1)
    return gallery["z"][best]


@torch.no_grad()
def refine(bench: Bench, e_i: torch.Tensor, e_s: torch.Tensor, z_start: torch.Tensor, strength: float,
           seed: int = 0, batch: int = 8) -> torch.Tensor:
    """Normalised latents: ``z_start`` noised to t/T = ``strength`` and denoised by the UNet at the
    checkpoint's defaults (one generator of ``seed`` per case, as the diagnosis rows)."""
    pipe, out = bench.pipe, []
    for k in range(0, len(z_start), batch):
        part = slice(k, k + batch)
        gens = [torch.Generator().manual_seed(seed) for _ in range(len(z_start[part]))]
        out.append(pipe.sample_latents(e_i[part], e_s[part], generators=gens, progress=False,
                                       x_start=z_start[part].to(pipe.device), strength=strength))
    return torch.cat(out)


@torch.no_grad()
def band_losses(bench: Bench, z: torch.Tensor, e_i: torch.Tensor, e_s: torch.Tensor, seed: int = 0,
                draws: int = 4) -> list:
    """The UNet's MSE to its training target per timestep band (N_BANDS of the schedule), with
    every condition given (the training loss without condition dropout), averaged over ``draws``
    noise draws per latent and band."""
    unet, device = bench.pipe.unet, bench.pipe.device
    scheduler = make_scheduler(unet.diffusion_cfg, "ddpm")
    T = unet.diffusion_cfg.train_timesteps
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(N_BANDS):
        lo, hi = b * T // N_BANDS, (b + 1) * T // N_BANDS
        total = 0.0
        for _ in range(draws):
            if is_flow(scheduler):  # the flow's timesteps are continuous, as in its training draws
                t = lo + (hi - lo) * torch.rand(len(z), generator=g)
            else:
                t = torch.randint(lo, hi, (len(z),), generator=g)
            noise = torch.randn(z.shape, generator=g)
            x_t = noisy(scheduler, z, noise, t)
            pred = unet(x_t.to(device), t.to(device), e_i.to(device), e_s.to(device)).cpu()
            total += float(torch.nn.functional.mse_loss(pred, target_for(scheduler, z, noise, t)))
        out.append({"band": [lo / T, hi / T], "loss": total / draws})
    return out


def bounds(bench: Bench, cache, seed: int = 0, res: int = 64, n_train: int | None = None,
           regression_steps: int = 1500, progress: bool = True, refine_strengths: tuple = (0.3, 0.5, 0.6, 0.8)) -> dict:
    """The bound rows (module docstring) as {"rows": [{name, note, summary}], "bands": {...}}."""
    t0 = time.perf_counter()
    gallery = training_gallery(bench, cache, n_train, progress)
    emb = case_embeddings(bench, seed)
    model, final = fit_start(gallery["z"], gallery["e_i"], gallery["e_s"], regression_steps, seed=seed)
    with torch.no_grad():
        z_reg = model(emb["e_i"].cpu(), emb["e_s prior"].cpu())  # the regression from the prior's sample
    rows = []
    for name, note, z in [
        ("retrieval (prior e_s)", "nearest training object to the prior's sample, decoded", retrieve(gallery, emb["e_s prior"])),
        ("retrieval (true e_s)", "nearest training object to the true shape embedding", retrieve(gallery, emb["e_s true"])),
        ("regression (prior e_s)", f"MLP (e_i, e_s) -> latent, {regression_steps} MSE steps (final {final:.3f})",
         z_reg),
        ("regression (true e_s)", "the same MLP with the true shape embedding", model(emb["e_i"].cpu(), emb["e_s true"].cpu())),
    ] + [(f"regression -> UNet from t={s:g}", f"the regression's latent (prior e_s) noised to t/T = {s:g}, "
          "denoised by the UNet", refine(bench, emb["e_i"], emb["e_s prior"], z_reg, s, seed))
         for s in refine_strengths]:
        rows.append({"name": name, "note": note, "summary": measure_latents(bench, z.to(bench.pipe.device), res)[0]})
        if progress:
            log.info(summary_line("bounds", name, rows[-1]["summary"]))
    held_out = true_latents(bench, list(range(len(bench.cases)))).cpu()
    k = min(len(gallery["z"]), 4 * len(held_out))
    bands = {"train": band_losses(bench, gallery["z"][:k], gallery["e_i"][:k], gallery["e_s"][:k], seed),
             "held_out": band_losses(bench, held_out, emb["e_i"].cpu(), emb["e_s true"].cpu(), seed)}
    return {"rows": rows, "bands": bands, "n_train": len(gallery["z"]), "regression_final_loss": final,
            "seconds": time.perf_counter() - t0}


def format_bands(bands: dict) -> str:
    lines = ["UNet loss per noise band (t / T): train | held-out"]
    for a, b in zip(bands["train"], bands["held_out"]):
        lines.append(f"  {a['band'][0]:.1f}-{a['band'][1]:.1f}   {a['loss']:.4f} | {b['loss']:.4f}")
    return "\n".join(lines)
