"""The streaming product the world simulates, as every layer knows it: the devices its apps run
on, the regions it sells in, its plans and their billing cycle, its app releases and the daily
shape of its traffic. The simulation draws its customers and their days from these; the
pipeline, the faults and the decoys read them too, so they live below all of them. The help
center's articles are in `corpus`."""

from __future__ import annotations

import numpy as np

REGIONS = ["na", "eu", "latam", "apac"]
DEVICES = ["ios", "android", "web", "smart_tv"]
PLANS = {"basic": 7.99, "standard": 12.99, "premium": 17.99}  # list price, USD a month
BILLING_CYCLE_DAYS = 30  # a subscription renews (and is billed) every this many days
HOURLY_TRAFFIC = np.array(
    [
        3,
        2,
        1.5,
        1.2,
        1.2,
        1.6,
        2.5,
        3.5,
        4,
        4,
        4.2,
        4.5,
        5,
        5,
        4.8,
        4.8,
        5.2,
        6,
        7.5,
        9,
        9.5,
        8.5,
        6.5,
        4.5,
    ]
)
APP_RELEASES = [("5.0.0", -10_000), ("5.1.0", -45), ("5.2.0", 9), ("5.3.0", 33)]


def hours_of_day(g: np.random.Generator, n: int) -> np.ndarray:
    """Event times (fractional hours) that follow the daily traffic curve."""
    p = HOURLY_TRAFFIC / HOURLY_TRAFFIC.sum()
    return g.choice(24, n, p=p) + g.random(n)
