"""The SmolLM2 sentiment example's prompts: requests for a short review of a product, a place or a work.

Every item is made up (a brand and a product type, a named place in a city, a titled book, film,
album, game, podcast or series), so the model knows nothing about it and its review shows its
own leaning, which the example then steers towards positive (configs/examples/smollm2_sentiment.yaml,
rewarded by ``reward_models.sentiment.afinn_positivity``). Each item is asked about in a few of
several phrasings; some ask plainly, some invite an honest or mixed account (a problem, a
complaint, a comparison), so that the starting model's reviews are not all glowing already.

Items are split before any prompt is written: a held-out item's name (brand, place or title) never
appears in a training prompt, so the held-out prompts measure what the policy learnt about
reviews, not about particular names.

Files (``write_review_data``), one JSON object per line, in TRL's conversational prompt-only format::

    train_prompts.jsonl, heldout_prompts.jsonl
        {"prompt": [{"role": "user", "content": "Write a short review of the Corvell X3 headphones."}],
         "category": "product", "name": "Corvell"}

    python -m rlft.tasks.reviews --out configs/data/reviews --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from rlft.tasks import write_jsonl_files

# name parts: invented names are a syllable pair, so no name is a real brand or a common word
_ONSETS = [
    "Cor",
    "Bel",
    "Tam",
    "Vir",
    "Lun",
    "Mar",
    "Dex",
    "Ost",
    "Pal",
    "Ren",
    "Sol",
    "Kai",
    "Fen",
    "Nor",
    "Ula",
]
_CODAS = ["vell", "ora", "ix", "ano", "eth", "ia", "ton", "ori", "ume", "ado", "ivo", "enna", "usk", "ard"]

PRODUCTS = [
    "wireless headphones",
    "coffee maker",
    "hiking backpack",
    "running shoes",
    "laptop",
    "electric toothbrush",
    "desk lamp",
    "blender",
    "smartwatch",
    "office chair",
    "rice cooker",
    "phone case",
    "air purifier",
    "water bottle",
    "bluetooth speaker",
    "winter jacket",
]
PLACES = [
    "restaurant",
    "hotel",
    "cafe",
    "museum",
    "bakery",
    "gym",
    "bookshop",
    "campsite",
    "pizzeria",
    "spa",
    "cinema",
    "noodle bar",
]
CITIES = ["Lisbon", "Osaka", "Denver", "Leeds", "Porto", "Austin", "Lyon", "Kraków", "Perth", "Quebec City"]
MEDIA = ["novel", "film", "album", "video game", "podcast", "TV series", "board game", "documentary"]
_TITLE_WORDS = (
    [
        "Silver",
        "Quiet",
        "Last",
        "Paper",
        "Burning",
        "Hollow",
        "Northern",
        "Glass",
        "Velvet",
        "Iron",
        "Distant",
    ],
    [
        "Harbor",
        "Orchard",
        "Signal",
        "Garden",
        "Winter",
        "Lantern",
        "River",
        "Engine",
        "Tide",
        "Meadow",
        "Crown",
    ],
)

# {item} is "the Corvell X3 headphones", "Casa Renora, a bakery in Porto", "the novel The Glass Orchard"
PHRASINGS = [
    "Write a short review of {item}.",
    "In two or three sentences, review {item}.",
    "What did you think of {item}? Answer as a short online review.",
    "Give a brief review of {item} for other {audience}.",
    "Describe your experience with {item} in a few sentences.",
    "Write an honest short review of {item}, good or bad.",
    "Review {item} briefly, mentioning one thing that could be better.",
    "Write a quick review of {item} as if you were posting it online.",
    "How was {item}? Write a short, honest review.",
    "Write a two-sentence review of {item}, including any problems you had.",
]
AUDIENCE = {"product": "shoppers", "place": "visitors", "media": "fans"}


def _names(rng: random.Random) -> list[str]:
    names = [a + b for a in _ONSETS for b in _CODAS]
    rng.shuffle(names)
    return names


def _titles(rng: random.Random) -> list[str]:
    titles = [f"The {a} {b}" for a in _TITLE_WORDS[0] for b in _TITLE_WORDS[1]]
    rng.shuffle(titles)
    return titles


def make_items(rng: random.Random, *, n_products: int, n_places: int, n_media: int) -> list[dict[str, str]]:
    """Items with distinct names: {"category", "name", "item"} (item: how a prompt names it)."""
    names, titles = _names(rng), _titles(rng)
    if n_products + n_places > len(names) or n_media > len(titles):
        raise ValueError(f"at most {len(names)} products and places together, {len(titles)} media items")
    items = []
    for i in range(n_products):
        name = names.pop()
        model = f"{rng.choice('ACEKMQSTXZ')}{rng.randint(1, 9)}"
        items.append(
            {"category": "product", "name": name, "item": f"the {name} {model} {PRODUCTS[i % len(PRODUCTS)]}"}
        )
    for i in range(n_places):
        name = names.pop()
        kind = PLACES[i % len(PLACES)]
        items.append({"category": "place", "name": name, "item": f"{name}, a {kind} in {rng.choice(CITIES)}"})
    for i in range(n_media):
        title = titles.pop()
        items.append({"category": "media", "name": title, "item": f"the {MEDIA[i % len(MEDIA)]} {title}"})
    return items


def prompt_rows(rng: random.Random, items: list[dict[str, str]], *, per_item: int) -> list[dict]:
    """`per_item` prompts per item, each in a different phrasing, shuffled."""
    rows = []
    for item in items:
        for phrasing in rng.sample(PHRASINGS, per_item):
            text = phrasing.format(item=item["item"], audience=AUDIENCE[item["category"]])
            text = text[0].upper() + text[1:]
            rows.append(
                {
                    "prompt": [{"role": "user", "content": text}],
                    "category": item["category"],
                    "name": item["name"],
                }
            )
    rng.shuffle(rows)
    return rows


def review_data(
    *,
    seed: int = 0,
    n_products: int = 60,
    n_places: int = 60,
    n_media: int = 60,
    heldout_share: float = 0.25,
    per_item: int = 4,
) -> dict[str, list[dict]]:
    """Both splits, by file name: items split first (by name), then `per_item` prompts per item.
    Defaults: 180 items, 135 for training (540 prompts), 45 held out (180 prompts)."""
    rng = random.Random(f"reviews/{seed}")
    items = make_items(rng, n_products=n_products, n_places=n_places, n_media=n_media)
    held, train = [], []
    for category in ("product", "place", "media"):  # the same share of each category held out
        group = [i for i in items if i["category"] == category]
        cut = round(len(group) * heldout_share)
        held += group[:cut]
        train += group[cut:]
    return {
        "train_prompts.jsonl": prompt_rows(rng, train, per_item=per_item),
        "heldout_prompts.jsonl": prompt_rows(rng, held, per_item=per_item),
    }


def write_review_data(out_dir: str | os.PathLike, *, seed: int = 0, **sizes) -> dict[str, Path]:
    """Write the JSONL files into ``out_dir``; keyword arguments as ``review_data``."""
    return write_jsonl_files(out_dir, review_data(seed=seed, **sizes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.tasks.reviews", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the JSONL files into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_review_data(args.out, seed=args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
