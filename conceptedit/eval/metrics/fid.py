"""``fid``: FID and KID with torchmetrics' Inception features (optional extra ``eval``)."""

from __future__ import annotations

import numpy as np
import torch

from conceptedit.eval.metrics.base import BASE, Group, Metric, MetricResult, register_metric


@register_metric
class FrechetDistance(Metric):
    """FID and KID (torchmetrics, Inception-v3 features) of edited images against the base model's
    images of the same prompts and seeds. Inception weights must be cached (offline: unavailable)."""

    name = "fid"
    description = "FID/KID of edited vs base generations (torchmetrics; needs Inception weights)"

    def unavailable_reason(self) -> str | None:
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance

            FrechetInceptionDistance(feature=2048)
        except Exception as exc:
            return f"torchmetrics FID unavailable: {type(exc).__name__}: {str(exc)[:160]}"
        return None

    def compute(self, group: Group) -> dict[str, MetricResult]:
        if group.edit == BASE:
            return {}
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        pairs = group.paired()
        if len(pairs) < 2:
            return {}
        subset = min(len(pairs), int(self.options.get("kid_subset_size", 50)))
        fid = FrechetInceptionDistance(feature=2048, normalize=False).to(self.device)
        kid = KernelInceptionDistance(subset_size=subset, normalize=False).to(self.device)

        def tensor(path: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(group.load_image(path))).permute(2, 0, 1)[None].to(self.device)

        for row, base in pairs:
            for metric in (fid, kid):
                metric.update(tensor(base.image_path), real=True)
                metric.update(tensor(row.image_path), real=False)
        kid_mean, kid_std = kid.compute()
        return {
            "fid": MetricResult(float(fid.compute()), {"n": len(pairs), "reference": "base generations"}, False),
            "kid": MetricResult(float(kid_mean), {"std": float(kid_std), "n": len(pairs)}, False),
        }
