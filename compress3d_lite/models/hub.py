"""Save, load and publish a model the Hugging Face way -- ``save_pretrained``, ``from_pretrained``
and ``push_to_hub`` from ``huggingface_hub.PyTorchModelHubMixin`` -- in our checkpoint format
(docs/design.md §6): ``model.safetensors`` + ``config.json`` (and ``ema.safetensors`` when a run
kept one), so a folder written by training, by ``save_pretrained`` or downloaded from the Hub is
the same thing.

    vae = TriplaneVAE.from_pretrained("my-course/compress3d-vae")   # a Hub repo id, or a folder
    vae.save_pretrained("out/vae")                                  # model.safetensors + config.json
    vae.push_to_hub("my-course/compress3d-vae")                     # needs `hf auth login`

A model class sets ``kind`` (the checkpoint kind it reads and writes) and
``from_checkpoint_config`` (how to build itself from a config.json). What a checkpoint records
beyond the weights (preset, training run, the image tower it belongs to, latent statistics, ...)
travels with the loaded model as ``checkpoint_info`` and is written back by ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from huggingface_hub import PyTorchModelHubMixin

from ..checkpoint import CheckpointError, load_module, read_config, resolve_folder, write_files


class HubMixin(PyTorchModelHubMixin, library_name="compress3d_lite", license="mit",
               tags=["compress3d", "3d-generation", "triplane"],
               repo_url="https://github.com/compress3d-lite/compress3d_lite"):
    kind: ClassVar[str] = ""  # the checkpoint kind, e.g. "triplane_vae"
    what: ClassVar[str] = ""  # its name in messages, e.g. "triplane VAE"
    checkpoint_info: dict | None = None

    @classmethod
    def from_checkpoint_config(cls, cfg: dict):
        """The model, built (random init) from a checkpoint's config.json."""
        raise NotImplementedError

    def checkpoint_config(self) -> dict:
        """What ``save_pretrained`` writes to config.json: the recorded info, this kind and config."""
        return {**(self.checkpoint_info or {}), "kind": self.kind, "model": self.cfg.to_dict()}

    def _save_pretrained(self, save_directory: Path) -> None:
        write_files(save_directory, self.state_dict(), self.checkpoint_config())

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", use_ema: bool = True, **model_kwargs):
        folder = resolve_folder(model_id, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                token=token, force_download=force_download)
        return cls.load(folder, device=map_location, use_ema=use_ema)

    @classmethod
    def load(cls, path, device="cpu", use_ema: bool = True):
        """The model of the checkpoint folder ``path`` in eval mode, with the EMA weights when the
        folder has them and ``use_ema``; ``model.checkpoint_info`` is its config.json."""
        cfg = read_config(path)
        if cfg.get("kind") != cls.kind:
            raise CheckpointError(f"{path}: a {cfg.get('kind')!r} checkpoint, not a {cls.what}")
        ema = use_ema and (Path(path) / "ema.safetensors").exists()
        model = load_module(path, cfg, cls.from_checkpoint_config, cls.__name__,
                            weights="ema.safetensors" if ema else "model.safetensors")
        model.checkpoint_info = {k: v for k, v in cfg.items() if k != "format"}
        model.weights_used = "ema" if ema else "model"
        return model.to(device).eval()
