"""Reading a Prometheus `/metrics` page back, for tests: `scrape(url)` and `parse_metrics(text)` give
`Samples`, looked up by sample name and labels."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

LabelKey = tuple[tuple[str, str], ...]


class Samples(dict[tuple[str, LabelKey], float]):
    """A /metrics page as {(sample name, sorted label pairs): value}; `value()` looks one up."""

    def value(self, name: str, **labels: str) -> float | None:
        return self.get((name, tuple(sorted(labels.items()))))

    def names(self) -> set[str]:
        return {name for name, _ in self}

    def matching(self, name: str, **labels: str) -> dict[LabelKey, float]:
        """Every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {key: v for (n, key), v in self.items() if n == name and want <= set(key)}


def parse_metrics(text: str) -> Samples:
    """Parse Prometheus text exposition into `Samples` (histograms as their _bucket/_sum/_count)."""
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


def scrape(url: str, *, timeout: float = 5.0) -> Samples:
    """GET `<url>/metrics` (url: the server's base URL) and parse it."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as response:
        return parse_metrics(response.read().decode())
