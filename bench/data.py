"""Synthetic but realistic benchmark data: a product catalogue and clustered pre-computed embeddings.

Uniform random vectors are the worst case for HNSW (no neighbourhood structure: recall near zero at any
usable ``ef_search``) and unlike any real embedding. Sentence embeddings have a low intrinsic dimension and
form topical clusters, so the vectors here are a mixture of Gaussians in a low-dimensional latent space,
projected into ``dims`` dimensions with a little isotropic noise and normalised to unit length (as
all-MiniLM-L6-v2's are). Queries come from the same distribution and are not rows of the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

DIMENSIONS = 384
LATENT_DIMENSIONS = 24
CLUSTERS = 64
CLUSTER_SPREAD = 0.35  # latent noise around a cluster centre (centres are N(0, 1) in latent space)
AMBIENT_NOISE = 0.02  # per-dimension noise after the projection

CATEGORIES: dict[str, tuple[str, ...]] = {
    "phones": ("smartphone", "mobile phone", "5G phone", "flip phone", "rugged phone"),
    "laptops": ("laptop", "ultrabook", "gaming notebook", "2-in-1 convertible", "workstation laptop"),
    "audio": ("headphones", "earbuds", "soundbar", "bluetooth speaker", "turntable"),
    "kitchen": ("espresso machine", "chef's knife", "cast iron skillet", "blender", "air fryer"),
    "sports": ("running shoes", "yoga mat", "mountain bike", "tennis racket", "dumbbell set"),
    "outdoors": ("camping tent", "sleeping bag", "hiking backpack", "headlamp", "trekking poles"),
    "tools": ("cordless drill", "circular saw", "socket set", "laser level", "workbench"),
    "furniture": ("office chair", "standing desk", "bookshelf", "sofa bed", "bar stool"),
    "books": ("cookbook", "picture book", "crime novel", "travel guide", "programming handbook"),
    "home": ("robot vacuum", "air purifier", "smart thermostat", "table lamp", "duvet"),
}
BRANDS = ("Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli",
          "Vandelay", "Tyrell", "Soylent", "Cyberdyne", "Aperture", "Wonka", "Gringotts")
ADJECTIVES = ("lightweight", "compact", "waterproof", "premium", "affordable", "durable", "wireless",
              "ergonomic", "foldable", "professional", "quiet", "energy-efficient", "stainless steel",
              "rechargeable", "heavy-duty", "eco-friendly")
FEATURES = ("a long-lasting battery", "USB-C charging", "a two-year warranty", "a non-slip grip",
            "an aluminium frame", "active noise cancelling", "a touch display", "quick-release clips",
            "a washable cover", "app control", "a carrying case", "adjustable height", "a 120 Hz screen",
            "hydraulic brakes", "a ceramic coating", "memory presets")
USES = ("everyday use", "travel", "the home office", "weekend trips", "beginners", "professionals",
        "small apartments", "families", "outdoor adventures", "gifts")


@dataclass(frozen=True)
class Dataset:
    """``n`` products with their embeddings (row i belongs to product_id i + 1) and query vectors."""

    product_ids: np.ndarray  # int32, 1..n
    names: list[str]
    descriptions: list[str]
    categories: list[str]
    prices: np.ndarray
    embeddings: np.ndarray  # float32 (n, dims), unit length

    @property
    def rows(self) -> int:
        return len(self.product_ids)

    def texts(self) -> list[str]:
        """What a project over (name, description) embeds: the columns joined with ', '."""
        return [f"{n}, {d}" for n, d in zip(self.names, self.descriptions)]


class VectorSpace:
    """A fixed mixture of clusters; ``sample`` draws vectors from it, reproducibly per seed."""

    def __init__(self, dims: int = DIMENSIONS, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.dims = dims
        self.centres = rng.normal(size=(CLUSTERS, LATENT_DIMENSIONS))
        self.projection = rng.normal(size=(LATENT_DIMENSIONS, dims)) / np.sqrt(LATENT_DIMENSIONS)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, CLUSTERS, size=n)
        latent = self.centres[labels] + rng.normal(scale=CLUSTER_SPREAD, size=(n, LATENT_DIMENSIONS))
        vectors = latent @ self.projection + rng.normal(scale=AMBIENT_NOISE, size=(n, self.dims))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors.astype(np.float32)


def make_dataset(n: int, space: VectorSpace, seed: int = 11) -> Dataset:
    rng = np.random.default_rng(seed)
    category_names = list(CATEGORIES)
    names, descriptions, categories = [], [], []
    for i in range(n):
        category = category_names[rng.integers(len(category_names))]
        noun = CATEGORIES[category][rng.integers(5)]
        brand = BRANDS[rng.integers(len(BRANDS))]
        adjective, other = rng.choice(len(ADJECTIVES), size=2, replace=False)
        first, second = rng.choice(len(FEATURES), size=2, replace=False)
        names.append(f"{brand} {ADJECTIVES[adjective]} {noun} {chr(65 + i % 26)}{100 + i % 900}")
        descriptions.append(
            f"{ADJECTIVES[other].capitalize()} {noun} with {FEATURES[first]} and {FEATURES[second]},"
            f" made for {USES[rng.integers(len(USES))]}"
        )
        categories.append(category)
    return Dataset(
        product_ids=np.arange(1, n + 1, dtype=np.int32),
        names=names,
        descriptions=descriptions,
        categories=categories,
        prices=np.round(rng.uniform(5, 2000, size=n), 2),
        embeddings=space.sample(n, seed=seed + 1),
    )


# -- loading -------------------------------------------------------------------------------------------
def create_products(conn: psycopg.Connection, data: Dataset, table: str = "products") -> None:
    """The catalogue as ``public.<table>`` (the layout of the example DAG), loaded with binary COPY."""
    target = sql.Identifier(table)
    conn.execute(sql.SQL(
        "CREATE TABLE {} (product_id integer PRIMARY KEY, name text NOT NULL, description text,"
        " category varchar(40), price numeric(10, 2), updated_at timestamptz NOT NULL DEFAULT now())"
    ).format(target))
    with conn.cursor() as cur, cur.copy(sql.SQL(
            "COPY {} (product_id, name, description, category, price) FROM STDIN").format(target)) as copy:
        for row in zip(data.product_ids.tolist(), data.names, data.descriptions, data.categories,
                       data.prices.tolist()):
            copy.write_row(row)
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(target))


def create_embeddings_table(
    conn: psycopg.Connection, table: str, product_ids: np.ndarray, vectors: np.ndarray
) -> None:
    """Pre-computed embeddings as an upstream system keeps them: ``(product_id integer primary key,
    embedding vector(dims) not null)``, loaded with binary COPY."""
    register_vector(conn)
    target = sql.Identifier(table)
    conn.execute(sql.SQL(
        "CREATE TABLE {} (product_id integer PRIMARY KEY, embedding vector({}) NOT NULL)"
    ).format(target, sql.Literal(vectors.shape[1])))
    with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY {} (product_id, embedding) FROM STDIN (FORMAT BINARY)").format(target)) as copy:
        copy.set_types(["int4", "vector"])
        for key, vector in zip(product_ids.tolist(), vectors):
            copy.write_row((key, vector))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(target))
