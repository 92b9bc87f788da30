"""Torch-free names and registries that several modules share, each declared once here.

Spec: data.md Appendix A (synonyms), train-eval.md 1.1-1.2 and 2.5 (approaches, network inputs,
saliency configs, held-out classes), models.md 2.3 (spatial relations).

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

# --approach of each task (train-eval.md 1.2); net.NETWORKS maps each to its network class
APPROACHES = {
    "ovssc": ("semantic_abstraction", "semantic_aware"),
    "vool": ("semantic_abstraction", "semantic_aware", "clip_spatial"),
}
NETWORK_INPUTS = ("patch_masks", "saliency", "rgb", "tsdf")  # --network_inputs choices
# The stored relevancy configs of the original's dataset (relevancy.md 3.1): --saliency_config choices
SALIENCY_CONFIGS = ("ours", "chefer_et_al")
# The six VOOL spatial relations (models.md 2.3); padded descriptions use PAD as their relation
RELATIONS = ("in", "behind", "in front of", "on the left of", "on the right of", "on")
PAD = "[pad]"  # name and relation of a padded VOOL description (data.md 3.4 step 3)
POINTING_METHODS = ("cosine_sim", "dot_product", "additive")  # --pointing_method (models.md 2.3)
# The attrs entry of an eval stats frame that says what produced it (evaluation.Provenance: task,
# scored, ..., scenes of each split); summarize.py reads it without importing evaluation.py
PROVENANCE_KEY = "semabs_eval"
