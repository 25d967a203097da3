"""Five hand-built people for the attribute-binding tests (probes and evaluation)."""

from __future__ import annotations

NO_EXTRAS = {"bag": None, "bag_colour": None, "hat_colour": None}


def hand_built() -> list[dict | None]:
    """Five people: which probes each one enters is written next to it."""
    return [
        # every probe
        {"upper_type": "jacket", "upper_colour": "red", "lower_type": "trousers", "lower_colour": "black",
         "shoes_colour": "white", "bag": "backpack", "bag_colour": "blue", "hat_colour": "green"},
        # same upper and lower colour: only upper vs shoes
        {"upper_type": "t-shirt", "upper_colour": "blue", "lower_type": "skirt", "lower_colour": "blue",
         "shoes_colour": "black", **NO_EXTRAS},
        # shoes match the upper: garments only
        {"upper_type": "coat", "upper_colour": "grey", "lower_type": "trousers", "lower_colour": "yellow",
         "shoes_colour": "grey", **NO_EXTRAS},
        None,  # no attributes: no probe
        # bag and hat share a colour: garments and shoes only
        {"upper_type": "tank top", "upper_colour": "pink", "lower_type": "shorts", "lower_colour": "green",
         "shoes_colour": "red", "bag": "handbag", "bag_colour": "red", "hat_colour": "red"},
    ]
