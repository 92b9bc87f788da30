"""Small random-weight open_clip ViTs for the relevancy tests (same architecture as ViT-B-32, fewer
layers and channels). `register_tiny` makes them loadable by name, like any open_clip model."""

import json

import open_clip

TINY = "semabs-tiny-vit"  # 64 px input, 16 px patches: a 4x4 grid
TINY_224 = "semabs-tiny-vit-224"  # 224 px input, 32 px patches: the 7x7 grid of ViT-B-32
TINY_512 = "semabs-tiny-vit-512"  # TINY_224 with ViT-B-32's 512-d features (semantic-aware nets)

CONFIGS = {  # name: (vision config, feature width)
    TINY: ({"image_size": 64, "patch_size": 16}, 32),
    TINY_224: ({"image_size": 224, "patch_size": 32}, 32),
    TINY_512: ({"image_size": 224, "patch_size": 32}, 512),
}


def register_tiny(folder) -> None:
    for name, (vision, embed_dim) in CONFIGS.items():
        config = {
            "embed_dim": embed_dim,
            "vision_cfg": {**vision, "layers": 2, "width": 64, "head_width": 32},
            "text_cfg": {
                "context_length": 77,
                "vocab_size": 49408,
                "width": 32,
                "heads": 2,
                "layers": 1,
            },
        }
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
