"""Torch-free names and registries that several modules share, each declared once here.

Synonyms and held-out classes: docs/data.md#synonyms-and-novel-classes; approaches:
docs/method.md#the-baselines-of-the-paper; spatial relations: docs/method.md#vool-semabsvool.

SYNONYMS: class name -> synonym used by the `unseen_instances_synonyms` split (Novel Vocab), 17 entries in
the original spelling ("refridgerator", "eletric plug" are what the stored labels use).
TEST_CLASSES: the six held-out classes of test_semantic_classes.txt (Novel Class).
"""

SYNONYMS = {
    "television": "tv",
    "sofa": "couch",
    "house plant": "plant in a pot",
    "bookcase": "bookshelf",
    "baseball bat": "rawlings big stick maple bat",
    "pillow": "cushion",
    "arm chair": "recliner",
    "bread": "loaf of sourdough",
    "cell phone": "mobile phone",
    "desktop": "computer",
    "dresser": "wardrobe",
    "dumbbell": "gym weights",
    "fridge": "refridgerator",
    "garbage can": "trash can",
    "laptop": "computer",
    "outlet": "eletric plug",
    "stairs": "staircase",
}
TEST_CLASSES = ("pot", "mug", "safe", "teddy bear", "basket ball", "wine bottle")

# --approach of each task; net.NETWORKS maps each to its network class
APPROACHES = {
    "ovssc": ("semantic_abstraction", "semantic_aware"),
    "vool": ("semantic_abstraction", "semantic_aware", "clip_spatial"),
}
NETWORK_INPUTS = ("patch_masks", "saliency", "rgb", "tsdf")  # --network_inputs choices
# The stored relevancy configs of the original's dataset: --saliency_config choices
SALIENCY_CONFIGS = ("ours", "chefer_et_al")
# The six VOOL spatial relations; padded descriptions use PAD as their relation
RELATIONS = ("in", "behind", "in front of", "on the left of", "on the right of", "on")
PAD = "[pad]"  # name and relation of a padded VOOL description
# --pointing_method (docs/method.md#pointing)
POINTING_METHODS = ("cosine_sim", "dot_product", "additive")
# The attrs entry of an eval stats frame that says what produced it (evaluation.Provenance: task,
# scored, ..., scenes of each split); summarize.py reads it without importing evaluation.py
PROVENANCE_KEY = "semabs_eval"
