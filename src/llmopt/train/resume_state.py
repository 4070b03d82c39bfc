"""The trainer's resumable state: what a checkpoint holds, writing it, and restoring it.

A mixin of `Trainer` (it reads and sets the trainer's attributes): kept apart so
the loop reads in one sitting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmopt.errors import BadInput
from llmopt.train import checkpoint as ckpt
from llmopt.train import distributed as dist_util


class ResumableState:
    """Checkpoint writing and restoring for `Trainer`."""

    def _check_resumable(self, meta: dict[str, Any], path: Path) -> None:
        problems = []
        if meta["fingerprint"] != self.fingerprint:
            problems.append(
                f"model: {meta['fingerprint']['model_type']} "
                f"({meta['fingerprint']['parameters']}) in the checkpoint, "
                f"{self.fingerprint['model_type']} ({self.fingerprint['parameters']}) now"
            )
        if meta["world_size"] != self.world.world_size:
            problems.append(
                f"processes: {meta['world_size']} in the checkpoint, {self.world.world_size} now"
            )
        problems += self.config.resume_mismatches(meta["config"])
        if problems:
            raise BadInput(f"--resume {path}: incompatible ({'; '.join(problems)})")

    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.raw_model, self.optimizer, options=options)

    def _restore(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        meta = ckpt.read_meta(path)
        options = StateDictOptions(full_state_dict=True, strict=True)
        set_state_dict(
            self.raw_model,
            self.optimizer,
            model_state_dict=ckpt.read_tensors(path, "model"),
            optim_state_dict=ckpt.read_tensors(path, "optimizer"),
            options=options,
        )
        self.scheduler.load_state_dict(meta["scheduler"])
        self.precision.load_state_dict(ckpt.read_tensors(path, "scaler"))
        ckpt.set_rng_state(ckpt.read_tensors(path, "rng")[self.world.rank])
        self.data.load_state_dict(meta["data"])
        self.step = meta["step"]
        self.history = meta["history"]
        self.skipped_steps = meta["skipped_steps"]
        self.consecutive_skips = meta["consecutive_skips"]
        self.tokens_seen = meta["tokens_seen"]

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of the current step (all processes must call)."""
        if self.run_dir is None:
            return None
        self._flush()
        model_sd, optim_sd = self._full_state()
        rngs = dist_util.gather_objects(ckpt.rng_state())
        path = None
        if self.world.is_main:
            meta = {
                "step": self.step,
                "config": self.config.model_dump(mode="json"),
                "fingerprint": self.fingerprint,
                "source": self.source,
                "world_size": self.world.world_size,
                "data": self.data.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
                "skipped_steps": self.skipped_steps,
                "consecutive_skips": self.consecutive_skips,
                "tokens_seen": self.tokens_seen,
            }
            tensors = {
                "model": model_sd,
                "optimizer": optim_sd,
                "scaler": self.precision.state_dict(),
                "rng": rngs,
            }
            path = ckpt.write_checkpoint(
                self.run_dir / "checkpoints", self.step, tensors, meta, self.config.keep_last
            )
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        dist_util.barrier()
        return path
