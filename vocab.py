"""Torch-free vocabulary shared by the datasets and summarize.py (spec: data.md Appendix A, train-eval.md 2.5).

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
