"""`SampleVideos`: teacher and student generate the same clips; see and measure how they differ.

At validation both models denoise the same noise from fixed prompts and seeds with diffusers'
flow-matching Euler scheduler; the VAE decodes both; teacher | student clips are written side by
side as mp4 under the run directory and logged to TensorBoard when that is the logger, and PSNR
and SSIM of the student against the teacher are logged. The level map of one layer and head of
the student's last denoising step is saved beside the clips as a PNG.

Every rank generates (under ZeRO-3 every rank must take part in each forward); rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ._layers import psa_layers, set_budget
from .level_map import save_level_map

DEFAULT_PROMPTS = ("a red square moves right on a plain background", "a blue star spins on a gradient background")


class SampleVideos(pl.Callback):
    """Generate clips with teacher and student at validation and compare them.

    Args:
        prompts / seeds: every prompt is generated once per seed.
        encoders: model id or path of the VAE and text encoder ("tiny" for the demo ones);
            None takes the LightningModule's `hparams.model` when that is a string.
        num_frames, height, width: clip size in pixels (latent size follows the VAE's factors).
        num_inference_steps, shift, guidance_scale: the sampler (guidance > 1 adds an
            unconditional pass with an empty prompt).
        text_max_length: tokens per prompt.
        budget: PSA budget while sampling; None keeps the current one.
        every_n_validations: sample at every n-th validation run.
        level_map_layer, level_map_head: which student level map to draw.
        fps: frame rate of the written mp4 files.
    """

    def __init__(
        self,
        prompts: list[str] = list(DEFAULT_PROMPTS),
        seeds: list[int] = [0],
        encoders: str | None = None,
        num_frames: int = 17,
        height: int = 64,
        width: int = 64,
        num_inference_steps: int = 8,
        shift: float = 3.0,
        guidance_scale: float = 1.0,
        text_max_length: int = 32,
        budget: float | None = None,
        every_n_validations: int = 1,
        level_map_layer: int = 0,
        level_map_head: int = 0,
        fps: int = 8,
    ) -> None:
        if not prompts or not seeds:
            raise ValueError("SampleVideos needs at least one prompt and one seed")
        if (num_frames - 1) % 4 or height % 16 or width % 16:
            raise ValueError(
                f"num_frames must be 4k+1 and height/width multiples of 16, got {num_frames}, {height}x{width}"
            )
        if every_n_validations < 1 or num_inference_steps < 1:
            raise ValueError("every_n_validations and num_inference_steps must be >= 1")
        self.prompts = list(prompts)
        self.seeds = list(seeds)
        self.encoders_id = encoders
        self.num_frames, self.height, self.width = num_frames, height, width
        self.num_inference_steps = num_inference_steps
        self.shift = shift
        self.guidance_scale = guidance_scale
        self.text_max_length = text_max_length
        self.budget = budget
        self.every_n_validations = every_n_validations
        self.level_map_layer = level_map_layer
        self.level_map_head = level_map_head
        self.fps = fps
        self._encoders = None
        self._validations = 0
        self.last_written: list[Path] = []

    # ----------------------------------------------------------------------------------
    def _load_encoders(self, pl_module):
        if self._encoders is None:
            from psa_train.models.text_video_encoders import load_encoders

            model_id = self.encoders_id or getattr(pl_module.hparams, "model", None)
            if not isinstance(model_id, str):
                raise ValueError("SampleVideos needs `encoders` (a model id or path) when the model is not one")
            self._encoders = load_encoders(model_id, device=pl_module.device)
        return self._encoders

    def _latent_shape(self, vae) -> tuple[int, ...]:
        """Wan's VAE halves space at every stage and time at the stages flagged in its config."""
        stages = list(vae.config.temperal_downsample)
        temporal, spatial = 2 ** sum(stages), 2 ** len(stages)
        return (vae.config.z_dim, 1 + (self.num_frames - 1) // temporal, self.height // spatial, self.width // spatial)

    def _denoise(self, velocity_fn, noise, text, negative):
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler(shift=self.shift)
        scheduler.set_timesteps(self.num_inference_steps, device=noise.device)
        latents = noise
        for t in scheduler.timesteps:
            timestep = t.expand(latents.shape[0])
            velocity = velocity_fn(latents, timestep, text)
            if self.guidance_scale > 1.0:
                unconditional = velocity_fn(latents, timestep, negative)
                velocity = unconditional + self.guidance_scale * (velocity - unconditional)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    @torch.compiler.set_stance("force_eager")  # sampling shapes and CFG batches are not the training graphs'
    def generate(self, pl_module) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Names, teacher clips and student clips [N, 3, T, H, W] in [-1, 1]."""
        from psa_train.models.text_video_encoders import denormalize_latents, encode_text

        encoders = self._load_encoders(pl_module)
        device = pl_module.device
        shape = self._latent_shape(encoders.vae)
        names, teacher_clips, student_clips = [], [], []
        layers = psa_layers(pl_module)
        map_layer = layers[self.level_map_layer] if layers and self.level_map_layer < len(layers) else None
        for p_index, prompt in enumerate(self.prompts):
            text, _ = encode_text(encoders.tokenizer, encoders.text_encoder, [prompt], self.text_max_length)
            negative, _ = encode_text(encoders.tokenizer, encoders.text_encoder, [""], self.text_max_length)
            for seed in self.seeds:
                gen = torch.Generator(device="cpu").manual_seed(seed)
                noise = torch.randn((1, *shape), generator=gen).to(device)
                teacher_latents = self._denoise(pl_module.teacher_forward, noise, text, negative)
                if map_layer is not None:
                    map_layer.keep_levels = True
                try:
                    student_latents = self._denoise(pl_module.student_forward, noise, text, negative)
                finally:
                    if map_layer is not None:
                        map_layer.keep_levels = False
                for latents, store in ((teacher_latents, teacher_clips), (student_latents, student_clips)):
                    vae_dtype = next(encoders.vae.parameters()).dtype
                    video = encoders.vae.decode(denormalize_latents(encoders.vae, latents.to(vae_dtype))).sample
                    store.append(video.float().clamp(-1, 1).cpu())
                names.append(f"prompt{p_index}_seed{seed}")
        return names, torch.cat(teacher_clips), torch.cat(student_clips)

    # ----------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        layers = psa_layers(pl_module)
        saved_budget = layers[0].budget if layers else None
        if self.budget is not None and layers:
            set_budget(layers, self.budget)
        try:
            names, teacher, student = self.generate(pl_module)
        finally:
            if saved_budget is not None and self.budget is not None:
                set_budget(layers, saved_budget)

        pair = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  [N*T, 3, H, W] in [0, 1] below
        student_frames, teacher_frames = pair((student + 1) / 2), pair((teacher + 1) / 2)
        psnr = peak_signal_noise_ratio(student_frames, teacher_frames, data_range=1.0)
        ssim = structural_similarity_index_measure(student_frames, teacher_frames, data_range=1.0)
        pl_module.log_dict({"samples/psnr": psnr, "samples/ssim": ssim}, on_epoch=True, rank_zero_only=True)

        if trainer.is_global_zero:
            self._write(trainer, pl_module, names, teacher, student, layers)

    def _output_dir(self, trainer) -> Path:
        root = Path(trainer.log_dir or trainer.default_root_dir)
        return root / "samples" / f"step_{trainer.global_step:07d}"

    def _write(self, trainer, pl_module, names, teacher, student, layers) -> None:
        from psa_train.data.demo import encode_mp4

        folder = self._output_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        side_by_side = torch.cat([teacher, student], dim=-1)  # teacher | student along the width
        frames = ((side_by_side + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        frames = frames.permute(0, 2, 3, 4, 1).numpy()  # [N, T, H, W, 3]
        self.last_written = []
        for name, clip in zip(names, frames):
            path = folder / f"{name}_teacher_vs_student.mp4"
            path.write_bytes(encode_mp4(np.ascontiguousarray(clip), fps=self.fps))
            self.last_written.append(path)
            self._log_to_tensorboard(trainer, name, clip)
        if layers and self.level_map_layer < len(layers) and layers[self.level_map_layer].last_levels is not None:
            levels = layers[self.level_map_layer].last_levels[0, self.level_map_head]
            name = f"level_map_layer{self.level_map_layer:02d}_head{self.level_map_head:02d}.png"
            self.last_written.append(save_level_map(levels, folder / name))

    def _log_to_tensorboard(self, trainer, name: str, clip: np.ndarray) -> None:
        """An animated GIF image summary: TensorBoard plays it, and it needs no moviepy."""
        from lightning.pytorch.loggers import TensorBoardLogger
        from tensorboard.compat.proto.summary_pb2 import Summary

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                image = Summary.Image(height=clip.shape[1], width=clip.shape[2], colorspace=3,
                                      encoded_image_string=_gif_bytes(clip, self.fps))
                summary = Summary(value=[Summary.Value(tag=f"samples/{name}", image=image)])
                logger.experiment._get_file_writer().add_summary(summary, trainer.global_step)


def _gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    """uint8 frames [T, H, W, 3] -> an endlessly looping GIF."""
    import io

    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    return buffer.getvalue()
