"""Model families, recognised from a pipeline's class and component configs (never from its name)."""

from __future__ import annotations

from typing import Any

from conceptedit.errors import UnsupportedModelError

SD1 = "sd1"
SD2 = "sd2"
SDXL = "sdxl"
SD3 = "sd3"
FLUX = "flux"
UNKNOWN = "unknown"

ALL_FAMILIES = (SD1, SD2, SDXL, SD3, FLUX)
SD_FAMILIES = (SD1, SD2)

_BY_PIPELINE_CLASS = {
    "StableDiffusionXLPipeline": SDXL,
    "StableDiffusionXLImg2ImgPipeline": SDXL,
    "StableDiffusion3Pipeline": SD3,
    "FluxPipeline": FLUX,
}


def family_from_class_and_unet(class_name: str, unet_config: dict[str, Any] | None) -> str:
    if class_name in _BY_PIPELINE_CLASS:
        return _BY_PIPELINE_CLASS[class_name]
    if class_name.startswith("StableDiffusion") and unet_config is not None:
        # SD 2.x UNets use linear projections in their transformer blocks and 1024-d text features.
        if unet_config.get("use_linear_projection") or unet_config.get("cross_attention_dim") == 1024:
            return SD2
        return SD1
    return UNKNOWN


def detect_family(pipe: Any) -> str:
    """The family of a loaded pipeline, from its class and UNet config."""
    unet = getattr(pipe, "unet", None)
    unet_config = dict(unet.config) if unet is not None else None
    return family_from_class_and_unet(type(pipe).__name__, unet_config)


def require_family(pipe: Any, supported: tuple[str, ...], what: str) -> str:
    """Raise before any work when ``what`` (a plugin) does not support the pipeline's family."""
    family = detect_family(pipe)
    if family not in supported:
        raise UnsupportedModelError(
            f"{what} supports model families {', '.join(supported)}, but this pipeline "
            f"({type(pipe).__name__}) is {family!r}"
        )
    return family
