"""Paper 3's augmentation: the training set enlarged by the RENS-GAN."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...io import read_image
from ...models.rens_gan import augment_with_gan
from ..configs import BloodCancerConfig


# ============================================================================ RENS-GAN
def coco_images(coco: dict) -> list[np.ndarray]:
    """The RGB uint8 images of a COCO dict, in order."""
    return [read_image(im["path"]) for im in coco["images"]]


def gan_augmented_coco(coco: dict, gan: Any, out_dir: Any, settings: BloodCancerConfig,
                       seed: int = 0) -> dict:
    """``coco`` plus a RENS-GAN copy of every image (written as PNG under ``out_dir``,
    same annotations — the generators keep the geometry)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = copy.deepcopy(coco)
    next_img = max(im["id"] for im in coco["images"]) + 1
    next_ann = max((a["id"] for a in coco["annotations"]), default=0) + 1
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    fakes = augment_with_gan(gan, coco_images(coco), float(settings.gan.noise_std), seed)
    for k, (entry, fake) in enumerate(zip(coco["images"], fakes)):
        path = out / f"rens_{Path(entry['file_name']).stem}.png"
        Image.fromarray(fake).save(path)
        merged["images"].append({**entry, "id": next_img + k, "file_name": path.name,
                                 "path": str(path.resolve()), "rens_gan_of": entry["id"]})
        for a in by_image.get(entry["id"], []):
            merged["annotations"].append({**a, "id": next_ann, "image_id": next_img + k})
            next_ann += 1
    return merged
