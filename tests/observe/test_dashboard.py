"""The Grafana dashboard kept in the repo (docs/grafana/retrysafe-dashboard.json) is well formed and
queries only metrics, labels and label values that `PrometheusObserver` really registers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from retrysafe.observe import DECISIONS, FACES, RESULTS, Attempt, Operation, StoreCall
from retrysafe.observe.prometheus import PrometheusObserver

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "retrysafe-dashboard.json"
PANEL_TYPES = {"row", "stat", "timeseries"}
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

SELECTOR = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
RANGE = re.compile(r"\[[^\]]*\]")
NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b(?!\s*\()")  # not followed by "(": not a function
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,\s*([A-Za-z_]\w*)\s*\)")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
KNOWN_VALUES = {"decision": set(DECISIONS), "result": set(RESULTS), "face": set(FACES)}


def registered() -> dict[str, set[str]]:
    """Every sample name a `PrometheusObserver` exposes once each hook ran, with its labels."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    operation = Operation("asgi", namespace="n", key="k", decision="execute", result="stored")
    observer.decided(operation)
    observer.finished(operation)
    observer.store_call(operation, StoreCall("claim", 0, 0.001))
    observer.store_call(None, StoreCall("complete", 0, 0.5, RuntimeError("down")))
    observer.waited(operation, StoreCall("wait", 0, 0.2))
    observer.attempted(Attempt("POST", "k", 1, None, "ReadTimeout", 0.1, 0.05))
    observer.attempted(Attempt("POST", "k", 2, 201, None, 0.1, None))
    names: dict[str, set[str]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard as Grafana would import it."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def metrics() -> dict[str, set[str]]:
    """What the observer registers: sample names and their label names."""
    return registered()


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (not the rows)."""
    yield from (panel for panel in dashboard["panels"] if panel["type"] != "row")


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every PromQL expression of every panel, with its target."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield target["expr"], target


class Query:
    """What one PromQL expression refers to: metric names, their matchers, grouping labels."""

    def __init__(self, expr: str) -> None:
        self.selectors: list[tuple[str, list[tuple[str, str, str]]]] = []

        def take(match: re.Match[str]) -> str:
            unread = MATCHER.sub("", match[2]).replace(",", "").strip()
            assert not unread, f"cannot read the matchers of {match[0]!r}"
            self.selectors.append((match[1], MATCHER.findall(match[2])))
            return match[1]

        rest = SELECTOR.sub(take, expr)
        self.grouping = {
            label.strip() for group in GROUPING.findall(rest) for label in group.split(",")
        }
        rest = RANGE.sub(" ", GROUPING.sub(" ", rest))
        self.names = [name for name in NAME.findall(rest) if name not in KEYWORDS]


def test_the_dashboard_is_grafana_shaped(dashboard: dict[str, Any]) -> None:
    """Title, uid, schema version, time range, and panels with unique ids on a 24-column grid
    that do not overlap."""
    assert isinstance(dashboard["title"], str)
    assert dashboard["title"]
    assert isinstance(dashboard["uid"], str)
    assert 0 < len(dashboard["uid"]) <= 40
    assert isinstance(dashboard["schemaVersion"], int)
    assert set(dashboard["time"]) == {"from", "to"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))
    boxes = []
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES
        assert panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h"))
        assert grid["x"] >= 0
        assert grid["w"] >= 1
        assert grid["h"] >= 1
        assert grid["x"] + grid["w"] <= GRID_WIDTH
        box = (grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"])
        for other in boxes:
            apart = box[2] <= other[0] or other[2] <= box[0] or box[3] <= other[1]
            assert apart or other[3] <= box[1], f"{panel['title']} overlaps another panel"
        boxes.append(box)


def test_every_panel_queries_the_chosen_prometheus(dashboard: dict[str, Any]) -> None:
    """Each panel and target uses the `datasource` variable, with unique refIds and an expr."""
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            assert target["expr"].strip()


def test_every_variable_used_is_defined(dashboard: dict[str, Any]) -> None:
    """`$face`, `${datasource}` and the like are dashboard variables (or Grafana built-ins)."""
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = set(VARIABLE.findall(json.dumps(dashboard["panels"])))
    undefined = {name for name in used if not name.startswith("__")} - defined
    assert not undefined, f"undefined variables: {sorted(undefined)}"
    assert "datasource" in defined


def test_every_metric_queried_is_registered(
    dashboard: dict[str, Any], metrics: dict[str, set[str]]
) -> None:
    """Each metric name in a panel's PromQL or a variable's query is a sample the observer
    exposes, and each label it filters or groups by is one of that sample's labels."""
    queried = set()
    for expr, _ in expressions(dashboard):
        query = Query(expr)
        assert query.names, f"no metric in {expr!r}"
        labels: set[str] = set()
        for name in query.names:
            assert name in metrics, f"{name} (in {expr!r}) is not registered"
            labels |= metrics[name]
            queried.add(name)
        for name, matchers in query.selectors:
            for label, _, _ in matchers:
                assert label in metrics[name], f"{name} has no label {label} (in {expr!r})"
        assert query.grouping <= labels, f"grouping by a label no metric has in {expr!r}"
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition")
        if definition:
            ((name, label),) = LABEL_VALUES.findall(definition)
            assert name in metrics, f"{name} (variable {variable['name']}) is not registered"
            assert label in metrics[name]
    assert {"retrysafe_requests_total", "retrysafe_outcome_total"} <= queried
    assert "retrysafe_store_operation_seconds_bucket" in queried
    assert "retrysafe_wait_seconds_bucket" in queried
    assert "retrysafe_client_attempts_total" in queried


def test_every_label_value_queried_exists(dashboard: dict[str, Any]) -> None:
    """Decisions, results and faces named in matchers are ones the code reports."""
    for expr, _ in expressions(dashboard):
        for _, matchers in Query(expr).selectors:
            for label, operator, value in matchers:
                if label not in KNOWN_VALUES or value.startswith("$"):
                    continue
                values = value.split("|") if operator in {"=~", "!~"} else [value]
                assert set(values) <= KNOWN_VALUES[label], f"{label}={value!r} in {expr!r}"


def test_legends_name_grouped_labels(dashboard: dict[str, Any]) -> None:
    """A `{{label}}` in a legend is a label the expression keeps."""
    for expr, target in expressions(dashboard):
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend_labels <= Query(expr).grouping, f"{target['legendFormat']} for {expr!r}"


def test_the_refusals_panel_covers_every_refusal(dashboard: dict[str, Any]) -> None:
    """Every decision that refuses a request for itself (not the store's 503) is on the
    refusals panel, so a new refusal cannot be left off."""
    (panel,) = [p for p in panels(dashboard) if p["title"] == "Refusals by reason"]
    shown: set[str] = set()
    for target in panel["targets"]:
        for _, matchers in Query(target["expr"]).selectors:
            shown.update(*(value.split("|") for label, _, value in matchers if label == "decision"))
    assert shown == set(DECISIONS) - {"execute", "replay", "unavailable"}
