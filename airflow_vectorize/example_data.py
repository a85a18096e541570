"""A small, real product catalogue for the example DAGs, tests and benchmarks, and real long texts."""

from __future__ import annotations

import psycopg
from psycopg import sql

# (product_id, name, description, category, price)
PRODUCTS: list[tuple[int, str, str, str, float]] = [
    (1, "Pixel 9 smartphone", "Android phone with a 6.3 inch OLED screen, 5G and a 50 MP camera", "phones", 799.0),
    (2, "iPhone 16", "Apple smartphone with A18 chip, USB-C and an all-day battery", "phones", 829.0),
    (3, "Galaxy A55", "Affordable 5G mobile phone with a 120 Hz display and water resistance", "phones", 449.0),
    (4, "Galaxy Tab S9", "Android tablet with an 11 inch AMOLED screen and S Pen stylus", "tablets", 699.0),
    (5, "iPad Air", "Lightweight tablet with M2 chip for drawing, notes and streaming", "tablets", 599.0),
    (6, "ThinkPad X1 Carbon", "14 inch business laptop, 1.1 kg, Intel Core Ultra, 32 GB RAM", "laptops", 1899.0),
    (7, "MacBook Air 13", "Thin and light laptop with M3 chip and 18 hours of battery life", "laptops", 1099.0),
    (8, "Noise-cancelling headphones", "Over-ear wireless Bluetooth headphones with 30 hour battery", "audio", 349.0),
    (9, "Wireless earbuds", "In-ear Bluetooth earbuds with charging case and active noise cancelling", "audio", 179.0),
    (10, "Espresso machine", "15 bar pump espresso maker with milk frother for cappuccino and latte", "kitchen", 249.0),
    (11, "Chef's knife", "8 inch forged stainless steel kitchen knife for chopping vegetables", "kitchen", 89.0),
    (12, "Cast iron skillet", "Pre-seasoned 12 inch frying pan for searing steak on stove or oven", "kitchen", 45.0),
    (13, "Trail running shoes", "Lightweight shoes with grippy outsole for running on muddy trails", "sports", 139.0),
    (14, "Yoga mat", "Non-slip 6 mm exercise mat for yoga, pilates and stretching", "sports", 39.0),
    (15, "Mountain bike", "29 inch hardtail bicycle with hydraulic disc brakes and 12 gears", "sports", 1299.0),
    (16, "Camping tent", "Waterproof two-person dome tent for hiking and backpacking trips", "outdoors", 229.0),
    (17, "Sleeping bag", "Down sleeping bag rated to -5 C, packs small for mountain camping", "outdoors", 199.0),
    (18, "Cordless drill", "18 V drill driver with two batteries for drilling wood and metal", "tools", 129.0),
    (19, "Office chair", "Ergonomic desk chair with lumbar support and adjustable armrests", "furniture", 329.0),
    (20, "Standing desk", "Electric height-adjustable desk with memory presets", "furniture", 549.0),
    (21, "Kids' picture book", "Illustrated bedtime story about a fox who learns to share", "books", 14.0),
    (22, "Python cookbook", "Recipes for data processing and automation in the Python language", "books", 49.0),
    (23, "Smartwatch", "Fitness watch with GPS, heart-rate monitor and phone notifications", "wearables", 299.0),
    (24, "Robot vacuum", "Self-emptying robot vacuum cleaner that maps your home", "home", 499.0),
]


def create_products_table(cur: psycopg.Cursor, table: str, *, updated_at: bool = False) -> None:
    """Create ``table`` with the sample catalogue's columns (and an ``updated_at`` stamp) if it is missing."""
    stamp = sql.SQL(", updated_at timestamptz NOT NULL DEFAULT now()") if updated_at else sql.SQL("")
    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (product_id integer PRIMARY KEY, name text NOT NULL,"
                        " description text, category text, price numeric(10, 2){})").format(sql.Identifier(table),
                                                                                           stamp))


def insert_products(cur: psycopg.Cursor, table: str) -> int:
    """Insert the sample products that ``table`` does not hold yet; returns how many the sample has."""
    cur.executemany(sql.SQL("INSERT INTO {} (product_id, name, description, category, price)"
                            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (product_id) DO NOTHING")
                    .format(sql.Identifier(table)), PRODUCTS)
    return len(PRODUCTS)


def package_descriptions(count: int, sizes: tuple[int, int] = (3_000, 20_000)) -> list[tuple[str, str]]:
    """``(package, description)`` of ``count`` installed distributions whose description (a README, real
    text nobody here wrote) has ``sizes`` characters, spread over all of them by name."""
    import importlib.metadata

    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        metadata = dist.metadata  # the description: the body, or (importlib_metadata, as Airflow loads it) a field
        name, body = metadata["Name"], metadata.get_payload() or metadata.get("Description") or ""
        if name and isinstance(body, str) and sizes[0] <= len(body.strip()) <= sizes[1]:
            found.setdefault(name.lower(), body.strip())
    fitting = sorted(found.items())
    return fitting[:: max(1, len(fitting) // count)][:count]
